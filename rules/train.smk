# Training: model-grid volumes cached for fast patch sampling, then one training run per experiment.


rule cache_training_subject:
    """One subject's normalised model-grid volumes as memory-mappable slice-major arrays."""
    input:
        unpack(get_model_grid_images),
        mask=rules.resample_mask_to_model_grid.output.mask,
        sidecar=rules.resample_mask_to_model_grid.output.sidecar,
    output:
        cache=directory(f"{RESULTS}/train/cache/sub-{{subject}}"),
    log:
        f"{LOGS}/cache_training_subject/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/cache_training_subject/sub-{{subject}}.tsv"
    params:
        modalities=config["train"]["modalities"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/cache_training_subject.py"


rule train_model:
    """The generator of one experiment, trained on Set A (validated on the held-out Set A)."""
    input:
        train=get_training_caches("train"),
        validation=get_training_caches("validation"),
    output:
        best=f"{RESULTS}/train/{{experiment}}/checkpoint_best.pt",
        curve=f"{RESULTS}/train/{{experiment}}/training_curve.png",
    log:
        f"{LOGS}/train_model/{{experiment}}.log",
    benchmark:
        f"{BENCH}/train_model/{{experiment}}.tsv"
    params:
        settings=get_train_settings,
        preprocessing={
            "model_grid": config["model_grid"]["shape"],
            "normalise": config["normalise"]["method"],
            "brainmask": config["brainmask"]["method"],
        },
    threads: 2
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=config["train"]["gpus"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_model.py"
