# Import: a published cohort's folder layout (UCSF-PDGM, BraTS) written into bids_dir in the BIDS
# layout, when import_dir is set. The per-subject rules read the imported files once it has run.


checkpoint import_dataset:
    """Every case of the published cohort at import_dir converted into the BIDS layout at
    bids_dir (a bad case is reported and left out; its subject then fails at validation)."""
    input:
        source=get_import_source,
    output:
        report=f"{RESULTS}/ingest/import.json",
    log:
        f"{LOGS}/import_dataset.log",
    benchmark:
        f"{BENCH}/import_dataset.tsv"
    params:
        bids_dir=BIDS,
        settings=config["import"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(120),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/import_dataset.py"
