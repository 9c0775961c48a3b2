# Evaluation: every model synthesizes the reported subjects (Set A test, Set B), scored in the
# brain and, for Set B, in the tumor. Input conditions (zeroed or cascade-filled inputs) and floors
# (no deep model) are scored alike. The Set A validation subjects are synthesized too, but only to
# choose each model's threshold on the synthetic enhancement; they are never scored or reported.


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
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/resample_tumor_mask_to_model_grid.py"


rule resample_enhancing_truth_to_model_grid:
    """A subject's enhancement truth on the model grid: where the agent is (class map) and its
    lesions one by one (instances), from the phantom's lesion labels and agent map or a real
    scan's expert lesion labels."""
    input:
        unpack(get_lesion_truth_inputs),
    output:
        classes=preproc("anat", "dseg", space="model", desc="lesion"),
        instances=preproc("anat", "dseg", space="model", desc="lesions"),
        sidecar=preproc("anat", "dseg", space="model", desc="lesions", ext=".json"),
    log:
        f"{LOGS}/resample_enhancing_truth_to_model_grid/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/resample_enhancing_truth_to_model_grid/sub-{{subject}}.tsv"
    params:
        shape=config["model_grid"]["shape"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/resample_enhancing_truth_to_model_grid.py"


rule synthesize_evaluation_subject:
    """The synthetic image of one reported subject from one model's evaluated checkpoint."""
    input:
        unpack(get_synthesis_inputs),
        checkpoint=get_evaluated_checkpoint,
        mask=rules.resample_mask_to_model_grid.output.mask,
        mask_sidecar=rules.resample_mask_to_model_grid.output.sidecar,
    output:
        image=get_synthetic_path("{model}", "{subject}", "{target}"),
        sidecar=get_synthetic_path("{model}", "{subject}", "{target}").replace(".nii.gz", ".json"),
    log:
        f"{LOGS}/synthesize_evaluation_subject/{{model}}_sub-{{subject}}_{{target}}.log",
    benchmark:
        f"{BENCH}/synthesize_evaluation_subject/{{model}}_sub-{{subject}}_{{target}}.tsv"
    wildcard_constraints:
        model=get_full_input_models(),
        target="ceT1w|T2w|adc",
    params:
        zeroed=[],
    threads: 2
    resources:
        mem_mb=grows_with_attempt(8000),
        runtime=grows_with_attempt(30),
        gpu=get_synthesis_gpus(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/synthesize_evaluation_subject.py"


rule synthesize_input_condition:
    """The reference model with inputs zeroed or replaced by the cascade's (paper Fig. 10)."""
    input:
        unpack(get_condition_inputs),
        checkpoint=get_evaluated_checkpoint,
        mask=rules.resample_mask_to_model_grid.output.mask,
        mask_sidecar=rules.resample_mask_to_model_grid.output.sidecar,
    output:
        image=get_synthetic_path("{experiment}--{condition}", "{subject}"),
        sidecar=get_synthetic_path("{experiment}--{condition}", "{subject}").replace(
            ".nii.gz", ".json"
        ),
    log:
        f"{LOGS}/synthesize_input_condition/{{experiment}}--{{condition}}_sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/synthesize_input_condition/{{experiment}}--{{condition}}_sub-{{subject}}.tsv"
    wildcard_constraints:
        experiment=_constraint(get_reference_runs()),  # every seed of the reference
        condition=get_conditions(),
    params:
        zeroed=get_zeroed_inputs,
    threads: 2
    resources:
        mem_mb=grows_with_attempt(8000),
        runtime=grows_with_attempt(30),
        gpu=get_synthesis_gpus(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/synthesize_evaluation_subject.py"


rule fit_voxel_regression:
    """The regression floor: CE-T1 from polynomial features of T1, T2, ADC, on Set A training."""
    input:
        images=get_regression_training_images,
    output:
        model=f"{EVAL}/floor-regression/voxel_regression.json",
    log:
        f"{LOGS}/fit_voxel_regression/fit_voxel_regression.log",
    benchmark:
        f"{BENCH}/fit_voxel_regression/fit_voxel_regression.tsv"
    params:
        subjects=get_regression_subjects,
    threads: 1
    resources:
        mem_mb=grows_with_attempt(8000),
        runtime=grows_with_attempt(30),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/fit_voxel_regression.py"


rule synthesize_floor:
    """A floor's prediction: the normalised T1 itself, or the voxel-wise regression."""
    input:
        unpack(get_floor_inputs),
        mask=rules.resample_mask_to_model_grid.output.mask,
    output:
        image=get_synthetic_path("floor-{floor}", "{subject}"),
        sidecar=get_synthetic_path("floor-{floor}", "{subject}").replace(".nii.gz", ".json"),
    log:
        f"{LOGS}/synthesize_floor/{{floor}}_sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/synthesize_floor/{{floor}}_sub-{{subject}}.tsv"
    wildcard_constraints:
        floor="t1|regression",
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/synthesize_floor.py"


rule choose_enhancement_threshold:
    """A model's threshold on its synthetic enhancement (Youden's J), on validation subjects only."""
    input:
        unpack(get_threshold_inputs),
    output:
        threshold=f"{EVAL}/{{model}}/enhancement_threshold.json",
    log:
        f"{LOGS}/choose_enhancement_threshold/{{model}}.log",
    benchmark:
        f"{BENCH}/choose_enhancement_threshold/{{model}}.tsv"
    wildcard_constraints:
        model=_constraint(EVALUATED),
    params:
        delta=config["train"]["delta"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/choose_enhancement_threshold.py"


rule score_evaluation_subject:
    """MAE, PSNR and SSIM of one synthetic image in the brain (and the tumor for Set B), and
    for a CE-T1 model the enhancement, lesion and BraSyn endpoints."""
    input:
        unpack(get_scored_image),
        unpack(get_evaluation_tumor_mask),
        unpack(get_enhancement_inputs),
        mask=rules.resample_mask_to_model_grid.output.mask,
    output:
        metrics=f"{EVAL}/{{model}}/sub-{{subject}}/sub-{{subject}}_metrics.json",
    log:
        f"{LOGS}/score_evaluation_subject/{{model}}_sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/score_evaluation_subject/{{model}}_sub-{{subject}}.tsv"
    params:
        set_name=get_scan_set,
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/score_evaluation_subject.py"


rule tabulate_evaluation:
    """Per-subject metrics of every model, their means, paired t-tests and the paper's tables."""
    input:
        metrics=get_evaluation_metrics,
    output:
        metrics=f"{EVAL}/metrics.tsv",
        summary=report(f"{EVAL}/summary.tsv", category="Evaluation", labels={"table": "means"}),
        configurations=report(
            f"{EVAL}/configurations.tsv",
            category="Evaluation",
            labels={"table": "means over seeds"},
        ),
        ttests=report(
            f"{EVAL}/ttests.tsv", category="Evaluation", labels={"table": "paired t-tests"}
        ),
        tables=report(f"{EVAL}/tables.md", category="Evaluation", labels={"table": "Tables"}),
        lesions=f"{EVAL}/lesions.tsv",
        lesion_sensitivity=report(
            f"{EVAL}/lesion_sensitivity.tsv",
            category="Evaluation",
            labels={"table": "lesion sensitivity by size"},
        ),
    log:
        f"{LOGS}/tabulate_evaluation/tabulate_evaluation.log",
    benchmark:
        f"{BENCH}/tabulate_evaluation/tabulate_evaluation.tsv"
    params:
        configurations=get_configurations(),  # seeds of one configuration are averaged
    threads: 1
    resources:
        mem_mb=grows_with_attempt(1000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/tabulate_evaluation.py"


rule tabulate_paper:
    """The paper's Tables I-III and V and Figs. 7, 9, 10 from the sweeps, beside its values."""
    input:
        metrics=rules.tabulate_evaluation.output.metrics,
    output:
        tables=report(
            f"{EVAL}/paper/paper_tables.md",
            category="Evaluation",
            labels={"table": "the paper's tables"},
        ),
    log:
        f"{LOGS}/tabulate_paper/tabulate_paper.log",
    benchmark:
        f"{BENCH}/tabulate_paper/tabulate_paper.tsv"
    params:
        catalog=get_catalog(),
        sweeps=experiments.sweep_members(EXPERIMENTS),
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/tabulate_paper.py"


rule plot_synthesis_panel:
    """A Fig. 4-like panel: inputs, truth, each model's synthesis and its error, through the tumor."""
    input:
        images=get_panel_images,
    output:
        panel=report(
            f"{EVAL}/paper/fig4_synthesis.png",
            category="Evaluation",
            labels={"table": "Fig. 4 panel"},
        ),
    log:
        f"{LOGS}/plot_synthesis_panel/plot_synthesis_panel.log",
    benchmark:
        f"{BENCH}/plot_synthesis_panel/plot_synthesis_panel.tsv"
    params:
        panels=get_panel_layout(),
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/plot_synthesis_panel.py"


rule plot_lesion_panels:
    """Every lesion type zoomed: inputs, real CE-T1 and each model's synthesis around a lesion."""
    input:
        images=get_lesion_panel_images,
    output:
        panel=report(
            f"{EVAL}/paper/lesion_panels.png",
            category="Evaluation",
            labels={"table": "zoomed lesion panels"},
        ),
    log:
        f"{LOGS}/plot_lesion_panels/plot_lesion_panels.log",
    benchmark:
        f"{BENCH}/plot_lesion_panels/plot_lesion_panels.tsv"
    params:
        panels=get_lesion_panel_layout(),
        models=[m for m, (e, v) in EVALUATED.items() if v == "full"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/plot_lesion_panels.py"


rule plot_lesion_sensitivity:
    """Lesion sensitivity against lesion size, one line per model, a panel per set."""
    input:
        by_size=rules.tabulate_evaluation.output.lesion_sensitivity,
    output:
        figure=report(
            f"{EVAL}/lesion_sensitivity.png",
            category="Evaluation",
            labels={"table": "lesion sensitivity figure"},
        ),
    log:
        f"{LOGS}/plot_lesion_sensitivity/plot_lesion_sensitivity.log",
    benchmark:
        f"{BENCH}/plot_lesion_sensitivity/plot_lesion_sensitivity.tsv"
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/plot_lesion_sensitivity.py"


rule score_validation_subject:
    """The threshold-free scores of one validation subject's synthesis: they choose between
    recipes (a study's curves), never report."""
    input:
        unpack(get_scored_image),
        unpack(get_enhancement_inputs),
        mask=rules.resample_mask_to_model_grid.output.mask,
    output:
        metrics=f"{EVAL}/validation/{{model}}/sub-{{subject}}_metrics.json",
    log:
        f"{LOGS}/score_validation_subject/{{model}}_sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/score_validation_subject/{{model}}_sub-{{subject}}.tsv"
    wildcard_constraints:
        model=_constraint(EVALUATED),
    params:
        set_name="validation",  # cesynth.validation_scores.VALIDATION_SET
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/score_evaluation_subject.py"


rule tabulate_validation:
    """Every model's threshold-free scores on the validation subjects, per subject and mean."""
    input:
        metrics=get_validation_metrics,
    output:
        metrics=f"{EVAL}/validation/metrics.tsv",
        summary=report(
            f"{EVAL}/validation/summary.tsv",
            category="Evaluation",
            labels={"table": "validation (selection only)"},
        ),
    log:
        f"{LOGS}/tabulate_validation/tabulate_validation.log",
    benchmark:
        f"{BENCH}/tabulate_validation/tabulate_validation.tsv"
    threads: 1
    resources:
        mem_mb=grows_with_attempt(1000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/tabulate_validation.py"
