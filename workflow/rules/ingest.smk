rule simulate:
    output:
        samplesheet=f"{SIM_DIR}/samplesheet.csv",
        truth=f"{SIM_DIR}/truth/proteins.csv",
    log:
        f"{RESULTS}/logs/simulate.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate.tsv"
    conda:
        "../../envs/ingest.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        preset=lambda w: config["input"]["simulate"]["preset"],
        seed=lambda w: config["input"]["simulate"]["seed"],
        overrides=lambda w: json.dumps(config["input"]["simulate"].get("params", {})),
        out=lambda w, output: Path(output.samplesheet).parent,
    shell:
        "locatlas simulate --preset {params.preset} --seed {params.seed} --out {params.out}"
        " --params {params.overrides:q} > {log} 2>&1"


checkpoint ingest:
    input:
        samples=samples_input,
    output:
        manifest=f"{MANIFEST_DIR}/manifest.parquet",
        shards=f"{MANIFEST_DIR}/shards.tsv",
        quarantine=f"{MANIFEST_DIR}/quarantine.parquet",
    log:
        f"{RESULTS}/logs/ingest.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest.tsv"
    conda:
        "../../envs/ingest.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=lambda w: json.dumps(
            {"channels": config["channels"], "ingest": config["ingest"]},
            sort_keys=True,
        ),
        pattern=lambda w: (
            f"--pattern {config['input']['pattern']!r}"
            if config["input"]["pattern"]
            else ""
        ),
        samples=samples_path(),
        listing=samples_listing,
        shard_size=config["shard_size"],
        out_dir=lambda w, output: Path(output.manifest).parent,
    shell:
        "locatlas ingest --samples {params.samples:q} {params.pattern} --out-dir {params.out_dir}"
        " --shard-size {params.shard_size} --params {params.cfg:q} > {log} 2>&1"
