# Release: each experiment's best model becomes a new version in the MLflow model registry, tagged
# with its evaluation scores; `cesynth predict --model models:/<name>/<version>` then uses it.


rule register_model:
    """One experiment's best model as a new registered model version, with its scores."""
    input:
        unpack(get_release_inputs),
    output:
        release=f"{RESULTS}/release/{{experiment}}.json",
    log:
        f"{LOGS}/register_model/{{experiment}}.log",
    benchmark:
        f"{BENCH}/register_model/{{experiment}}.tsv"
    params:
        name=get_registered_name,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/register_model.py"
