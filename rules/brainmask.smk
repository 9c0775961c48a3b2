# Brain mask on the CE-T1 (FSL BET as in the paper; deepbet or Python BET without FSL).


rule mask_brain:
    """Brain mask of the CE-T1 on its native grid: one component, holes filled."""
    input:
        unpack(get_mask_truth),
        image=get_cet1w,
        report=get_validated_report,
    output:
        mask=preproc("anat", "mask", desc="brain"),
        qc=f"{QC}/brainmask/sub-{{subject}}.tsv",
    log:
        f"{LOGS}/mask_brain/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/mask_brain/sub-{{subject}}.tsv"
    params:
        method=config["brainmask"]["method"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=20,
    conda:
        "../envs/fsl.yaml"
    script:
        "../workflow_scripts/mask_brain.py"
