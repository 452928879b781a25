rule segment:
    input:
        receipt=f"{RESULTS}/receipts/clear/{{shard}}.parquet",
        manifest=shard_manifest,
    output:
        cells=f"{RESULTS}/cells/shard-{{shard}}.parquet",
        crops=directory(f"{RESULTS}/crops/shard-{{shard}}.zarr"),
        receipt=f"{RESULTS}/receipts/segment/{{shard}}.parquet",
    log:
        f"{RESULTS}/logs/segment/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{shard}}.tsv"
    conda:
        "../../envs/segment.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb_for(per_mpx_mb=60, base_mb=2000),
        runtime=runtime_for(seconds_per_mpx=0.15),
    params:
        cfg=params_json("segment"),
    shell:
        "locatlas segment --clear-receipt {input.receipt} --shard-manifest {input.manifest}"
        " --cells {output.cells} --crops {output.crops} --receipt {output.receipt}"
        " --params {params.cfg:q} --threads {threads} > {log} 2>&1"
