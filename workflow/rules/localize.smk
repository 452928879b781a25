rule train:
    input:
        cells=lambda w: expand(
            f"{RESULTS}/cells/shard-{{shard}}.parquet", shard=training_shards()
        ),
        crops=lambda w: expand(
            f"{RESULTS}/crops/shard-{{shard}}.zarr", shard=training_shards()
        ),
    output:
        model=directory(f"{RESULTS}/model"),
    log:
        f"{RESULTS}/logs/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/train.tsv"
    conda:
        "../../envs/localize.yaml"
    threads: 2
    resources:
        mem_mb=lambda w: train_mem_mb(),
        runtime=120,
    params:
        cfg=params_json("localize", only=("classes", "device", "train")),
    shell:
        "locatlas train --cells {input.cells} --crops {input.crops} --out-dir {output.model}"
        " --params {params.cfg:q} --threads {threads} > {log} 2>&1"


rule localize:
    input:
        cells=f"{RESULTS}/cells/shard-{{shard}}.parquet",
        crops=f"{RESULTS}/crops/shard-{{shard}}.zarr",
        model=lambda w: model_input(),
    output:
        table=f"{RESULTS}/localization/shard-{{shard}}.parquet",
        embeddings=f"{RESULTS}/localization/shard-{{shard}}.embeddings.npy",
    log:
        f"{RESULTS}/logs/localize/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/localize/{{shard}}.tsv"
    conda:
        "../../envs/localize.yaml"
    threads: 2
    # crops are scored 1,024 cells at a time: memory does not grow with the shard.
    # Measured on CPU: 1.4 ms per cell, 0.019 s per megapixel of field (README).
    resources:
        mem_mb=4000,
        runtime=localize_runtime(seconds_per_cell=0.004, seconds_per_mpx=0.05),
    params:
        cfg=params_json("localize"),
        package=model_package(),
    shell:
        "locatlas localize --cells {input.cells} --crops {input.crops} --model {params.package}"
        " --out {output.table} --embeddings {output.embeddings} --params {params.cfg:q}"
        " --threads {threads} > {log} 2>&1"
