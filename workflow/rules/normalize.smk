rule flatfield:
    input:
        manifests=lambda w: expand(
            f"{MANIFEST_DIR}/shards/{{shard}}.parquet", shard=shards_of_plate(w.plate)
        ),
    output:
        f"{RESULTS}/flatfield/{{plate}}.npy",
    log:
        f"{RESULTS}/logs/flatfield/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/flatfield/{{plate}}.tsv"
    conda:
        "../../envs/normalize.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=params_json("normalize"),
    shell:
        "locatlas flatfield --shard-manifests {input.manifests} --out {output}"
        " --params {params.cfg:q} > {log} 2>&1"


rule normalize:
    input:
        manifest=shard_manifest,
        flatfield=lambda w: f"{RESULTS}/flatfield/{plate_of(w)}.npy",
    output:
        receipt=f"{RESULTS}/receipts/normalize/{{shard}}.parquet",
        quarantine=f"{RESULTS}/quarantine/normalize/{{shard}}.parquet",
    log:
        f"{RESULTS}/logs/normalize/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/normalize/{{shard}}.tsv"
    conda:
        "../../envs/normalize.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb_for(per_mpx_mb=40, base_mb=1500),
        runtime=runtime_for(seconds_per_mpx=0.05),
    params:
        cfg=params_json("normalize"),
        zarr_root=ZARR_ROOT,
    shell:
        "locatlas normalize --shard-manifest {input.manifest} --zarr-root {params.zarr_root}"
        " --flatfield {input.flatfield} --receipt {output.receipt}"
        " --quarantine {output.quarantine} --params {params.cfg:q} --threads {threads}"
        " > {log} 2>&1"


rule plate_metadata:
    input:
        manifests=lambda w: expand(
            f"{MANIFEST_DIR}/shards/{{shard}}.parquet", shard=shards_of_plate(w.plate)
        ),
        receipts=lambda w: expand(
            f"{RESULTS}/receipts/normalize/{{shard}}.parquet",
            shard=shards_of_plate(w.plate),
        ),
    output:
        f"{RESULTS}/receipts/plates/{{plate}}.tsv",
    log:
        f"{RESULTS}/logs/plate_metadata/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plate_metadata/{{plate}}.tsv"
    conda:
        "../../envs/normalize.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        zarr_root=ZARR_ROOT,
    shell:
        "locatlas plate-metadata --zarr-root {params.zarr_root} --plate {wildcards.plate}"
        " --shard-manifests {input.manifests} --receipts {input.receipts} --out {output}"
        " > {log} 2>&1"


rule ome_zarr:
    """Conversion only: every plate as a validated NGFF HCS plate (no analysis)."""
    input:
        lambda w: expand(f"{RESULTS}/receipts/plates/{{plate}}.tsv", plate=plates()),
