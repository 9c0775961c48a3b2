# Resampling to the model grid (linear for images, nearest for masks) and in-brain normalisation.


rule resample_mask_to_model_grid:
    """The brain mask on the model grid, with the range of foreground slices used in training."""
    input:
        mask=rules.mask_brain.output.mask,
    output:
        mask=preproc("anat", "mask", space="model", desc="brain"),
        sidecar=preproc("anat", "mask", ext=".json", space="model", desc="brain"),
    log:
        f"{LOGS}/resample_mask_to_model_grid/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/resample_mask_to_model_grid/sub-{{subject}}.tsv"
    params:
        shape=config["model_grid"]["shape"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/resample_mask_to_model_grid.py"


rule normalise_to_model_grid:
    """One registered image on the model grid, equalised inside the brain and scaled to [0,1]."""
    input:
        image=get_image_to_normalise,
        mask=rules.mask_brain.output.mask,
    output:
        image=preproc("anat", "{modality}", space="model", desc="norm"),
        qc=f"{QC}/normalise/sub-{{subject}}_{{modality}}.tsv",
    log:
        f"{LOGS}/normalise_to_model_grid/sub-{{subject}}_{{modality}}.log",
    benchmark:
        f"{BENCH}/normalise_to_model_grid/sub-{{subject}}_{{modality}}.tsv"
    params:
        shape=config["model_grid"]["shape"],
        method=config["normalise"]["method"],
        options=get_normalise_options(),
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/normalise_to_model_grid.py"
