# Brain mask on the native CE-T1 grid, from the CE-T1 (the paper's) or the T1 registered to it
# (brainmask.reference); FSL BET as in the paper, deepbet or the Python BET without FSL.


rule mask_brain:
    """Brain mask on the native CE-T1 grid: one component, holes filled; the sidecar records
    the method that ran and the image it ran on."""
    input:
        unpack(get_mask_truth),
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
        method=config["brainmask"]["method"],
        reference=config["brainmask"]["reference"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=20,
    conda:
        "../envs/fsl.yaml"
    script:
        "../workflow_scripts/mask_brain.py"
