# Release: each declared experiment's evaluated model (evaluation.checkpoint: final or best) becomes
# a new version in the MLflow model registry, tagged with its scores on the reported sets;
# `cesynth predict --model models:/<name>/<version>` then uses it.


rule release_model:
    """One experiment's evaluated model as a new registered model version, with its scores."""
    input:
        unpack(get_release_inputs),
    output:
        release=f"{RESULTS}/release/{{experiment}}.json",
    log:
        f"{LOGS}/release_model/{{experiment}}.log",
    benchmark:
        f"{BENCH}/release_model/{{experiment}}.tsv"
    params:
        name=get_registered_name,
        checkpoint=config["evaluation"]["checkpoint"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/release_model.py"
