rule clear:
    input:
        receipt=f"{RESULTS}/receipts/normalize/{{shard}}.parquet",
    output:
        receipt=f"{RESULTS}/receipts/clear/{{shard}}.parquet",
    log:
        f"{RESULTS}/logs/clear/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/clear/{{shard}}.tsv"
    conda:
        "../../envs/clear.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb_for(per_mpx_mb=60, base_mb=2000),
        runtime=runtime_for(seconds_per_mpx=0.1),
    params:
        cfg=params_json("clear"),
    shell:
        "locatlas clear --normalize-receipt {input.receipt} --receipt {output.receipt}"
        " --params {params.cfg:q} --threads {threads} > {log} 2>&1"


rule clear_example:
    input:
        unpack(lambda w: clear_example_inputs()),
    output:
        report(
            f"{RESULTS}/atlas/figures/clearing_example.png",
            caption="../report/clearing.rst",
            category="Clearing",
        ),
    log:
        f"{RESULTS}/logs/clear_example.log",
    benchmark:
        f"{RESULTS}/benchmarks/clear_example.tsv"
    conda:
        "../../envs/clear.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        cfg=params_json("clear"),
    shell:
        "locatlas clear-example --image {input.image} --psf {input.psf} --figure {output}"
        " --params {params.cfg:q} > {log} 2>&1"
