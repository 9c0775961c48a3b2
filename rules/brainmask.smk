# Brain mask on the native CE-T1 grid, from the CE-T1 (the paper's) or the T1 registered to it
# (brainmask.reference); FSL BET as in the paper, deepbet or the Python BET without FSL. A
# dataset declared skull-stripped (ingest.skull_stripped) takes its own masks or the nonzero
# region instead.


rule mask_brain:
    """Brain mask on the native CE-T1 grid: one component, holes filled; the sidecar records
    the method that ran and the image it ran on."""
    input:
        unpack(get_mask_truth),
        unpack(get_provided_brain_mask),
        image=get_brainmask_image,
        report=rules.validate_subject.output.report,
    output:
        mask=preproc("anat", "mask", desc="brain"),
        sidecar=preproc("anat", "mask", ext=".json", desc="brain"),
        qc=f"{QC}/brainmask/sub-{{subject}}.tsv",
    log:
        f"{LOGS}/mask_brain/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/mask_brain/sub-{{subject}}.tsv"
    params:
        method=get_brainmask_method,
        reference=config["brainmask"]["reference"],
    threads: 2
    resources:
        mem_mb=grows_with_attempt(6000),
        runtime=grows_with_attempt(20),
    conda:
        "../envs/fsl.yaml"
    script:
        "../workflow_scripts/mask_brain.py"
