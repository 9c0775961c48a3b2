# Release: each declared experiment's evaluated model (evaluation.checkpoint: final or best) becomes
# a new version in the MLflow model registry, tagged with its scores on the reported sets and the
# release gate's decision; the alias `champion` moves to it only when the gate passes
# (release.gates). `cesynth predict --model models:/<name>@champion` then uses the champion.


rule release_model:
    """One experiment's evaluated model as a new registered model version, with its scores,
    the release gate's decision and its model card."""
    input:
        unpack(get_release_inputs),
        sets=rules.assign_sets.output.sets,
    output:
        release=f"{RESULTS}/release/{{experiment}}.json",
        card=report(
            f"{RESULTS}/release/{{experiment}}_model_card.md",
            category="Release",
            labels={"experiment": "{experiment}"},
        ),
    log:
        f"{LOGS}/release_model/{{experiment}}.log",
    benchmark:
        f"{BENCH}/release_model/{{experiment}}.tsv"
    params:
        name=get_registered_name,
        checkpoint=config["evaluation"]["checkpoint"],
        gates=config["release"]["gates"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(15),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/release_model.py"
