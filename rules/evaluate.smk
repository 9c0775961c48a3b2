# Evaluation: each experiment's best model synthesizes the CE-T1 of the held-out subjects (Set A
# validation, Set B), which are scored in the brain (and the expert tumor masks for Set B).


rule resample_tumor_mask_to_model_grid:
    """A Set B expert tumor mask moved from the CE-T1 grid to the model grid."""
    input:
        mask=get_tumor_mask,
    output:
        mask=preproc("anat", "mask", space="model", desc="tumor"),
    log:
        f"{LOGS}/resample_tumor_mask_to_model_grid/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/resample_tumor_mask_to_model_grid/sub-{{subject}}.tsv"
    params:
        shape=config["model_grid"]["shape"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/resample_tumor_mask_to_model_grid.py"


rule synthesize_evaluation_subject:
    """The synthetic CE-T1 of one held-out subject from one experiment's best checkpoint."""
    input:
        unpack(get_synthesis_inputs),
        checkpoint=rules.train_model.output.best,
        mask=rules.resample_mask_to_model_grid.output.mask,
        mask_sidecar=rules.resample_mask_to_model_grid.output.sidecar,
    output:
        image=f"{EVAL}/{{experiment}}/sub-{{subject}}/sub-{{subject}}_space-model_desc-synthetic_ceT1w.nii.gz",
        sidecar=f"{EVAL}/{{experiment}}/sub-{{subject}}/sub-{{subject}}_space-model_desc-synthetic_ceT1w.json",
    log:
        f"{LOGS}/synthesize_evaluation_subject/{{experiment}}_sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/synthesize_evaluation_subject/{{experiment}}_sub-{{subject}}.tsv"
    params:
        device=config["train"]["device"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/synthesize_evaluation_subject.py"


rule score_evaluation_subject:
    """MAE, PSNR and SSIM of one synthetic CE-T1 in the brain (and the tumor for Set B)."""
    input:
        unpack(get_evaluation_tumor_mask),
        image=rules.synthesize_evaluation_subject.output.image,
        target=preproc("anat", "ceT1w", space="model", desc="norm"),
        mask=rules.resample_mask_to_model_grid.output.mask,
    output:
        metrics=f"{EVAL}/{{experiment}}/sub-{{subject}}/sub-{{subject}}_metrics.json",
    log:
        f"{LOGS}/score_evaluation_subject/{{experiment}}_sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/score_evaluation_subject/{{experiment}}_sub-{{subject}}.tsv"
    params:
        set_name=get_scan_set,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/score_evaluation_subject.py"


rule tabulate_evaluation:
    """Per-subject metrics of every experiment, their means, paired t-tests and the paper's tables."""
    input:
        metrics=get_evaluation_metrics,
    output:
        metrics=f"{EVAL}/metrics.tsv",
        summary=f"{EVAL}/summary.tsv",
        ttests=f"{EVAL}/ttests.tsv",
        tables=f"{EVAL}/tables.md",
    log:
        f"{LOGS}/tabulate_evaluation/tabulate_evaluation.log",
    benchmark:
        f"{BENCH}/tabulate_evaluation/tabulate_evaluation.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/tabulate_evaluation.py"
