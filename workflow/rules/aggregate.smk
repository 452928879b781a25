rule evaluate:
    input:
        segment=per_shard(f"{RESULTS}/receipts/segment/{{shard}}.parquet"),
        clear_receipts=per_shard(f"{RESULTS}/receipts/clear/{{shard}}.parquet"),
        cells=per_shard(f"{RESULTS}/cells/shard-{{shard}}.parquet"),
        localization=per_shard(f"{RESULTS}/localization/shard-{{shard}}.parquet"),
        model=lambda w: model_input(),
        truth=lambda w: f"{truth_dir()}/proteins.csv",
    output:
        f"{RESULTS}/atlas/evaluation/evaluation.json",
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../../envs/aggregate.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=params_json("localize"),
        package=model_package(),
        truth=lambda w: truth_dir(),
        out_dir=lambda w, output: Path(output[0]).parent,
    shell:
        "locatlas evaluate --segment-receipts {input.segment} --clear-receipts {input.clear_receipts}"
        " --cells {input.cells} --localization {input.localization} --model {params.package}"
        " --truth {params.truth} --out-dir {params.out_dir} --params {params.cfg:q} > {log} 2>&1"


rule aggregate:
    input:
        unpack(optional_truth_inputs),
        unpack(optional_clearing_figure),
        cells=per_shard(f"{RESULTS}/cells/shard-{{shard}}.parquet"),
        localization=per_shard(f"{RESULTS}/localization/shard-{{shard}}.parquet"),
        embeddings=per_shard(f"{RESULTS}/localization/shard-{{shard}}.embeddings.npy"),
        crops=per_shard(f"{RESULTS}/crops/shard-{{shard}}.zarr"),
        normalize=per_shard(f"{RESULTS}/receipts/normalize/{{shard}}.parquet"),
        segment=per_shard(f"{RESULTS}/receipts/segment/{{shard}}.parquet"),
        quarantine=per_shard(f"{RESULTS}/quarantine/normalize/{{shard}}.parquet"),
        ingest_quarantine=f"{MANIFEST_DIR}/quarantine.parquet",
        plates=lambda w: expand(
            f"{RESULTS}/receipts/plates/{{plate}}.tsv", plate=plates()
        ),
        model=lambda w: model_input(),
    output:
        h5ad=f"{RESULTS}/atlas/cells.h5ad",
        proteins=report(
            f"{RESULTS}/atlas/proteins.parquet",
            caption="../report/proteins.rst",
            category="Atlas",
        ),
        report=report(
            f"{RESULTS}/atlas/report.html",
            caption="../report/atlas.rst",
            category="Atlas",
        ),
    log:
        f"{RESULTS}/logs/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate.tsv"
    conda:
        "../../envs/aggregate.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        cfg=params_json("aggregate"),
        package=model_package(),
        out_dir=lambda w, output: Path(output.h5ad).parent,
        truth=lambda w: f"--truth {truth_dir()}" if truth_dir() else "",
        reference=lambda w: (
            f"--reference {config['input']['reference']}"
            if config["input"]["reference"]
            else ""
        ),
        evaluation=lambda w: (
            f"--evaluation {RESULTS}/atlas/evaluation" if truth_dir() else ""
        ),
        training=lambda w: (
            ""
            if config["localize"].get("model")
            else f"--training {RESULTS}/model/report"
        ),
        clearing=lambda w, input: (
            f"--clearing-figure {input.clearing_figure}"
            if "clearing_figure" in input.keys()
            else ""
        ),
        config_hash=lambda w: config_digest(),
    shell:
        "locatlas aggregate --cells {input.cells} --localization {input.localization}"
        " --embeddings {input.embeddings} --crops {input.crops} --model {params.package}"
        " --out-dir {params.out_dir}"
        " --quarantine {input.ingest_quarantine} {input.quarantine}"
        " --normalize-receipts {input.normalize} --segment-receipts {input.segment}"
        " {params.evaluation} {params.training} {params.clearing} {params.truth} {params.reference}"
        " --config-hash {params.config_hash} --params {params.cfg:q} > {log} 2>&1"
