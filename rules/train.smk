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
        modalities=INPUT_MODALITIES,
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/cache_training_subject.py"


rule train_trunk:
    """Every stage but the last, once for all the experiments that share them."""
    input:
        train=get_training_caches("train"),
        validation=get_training_caches("validation"),
        masks=get_training_mask_sidecars,
        adc_qc=get_training_adc_qc,
    output:
        checkpoint=f"{RESULTS}/train/trunks/{{trunk}}/checkpoint_final.pt",
    log:
        f"{LOGS}/train_trunk/{{trunk}}.log",
    benchmark:
        f"{BENCH}/train_trunk/{{trunk}}.tsv"
    params:
        settings=get_trunk_settings,
        preprocessing=get_preprocessing_record(),
    threads: 2
    resources:
        mem_mb=grows_with_attempt(16000),
        runtime=grows_with_attempt(24 * 60),
        gpu=get_training_gpus(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_model.py"


rule train_model:
    """One experiment's last stage (from its shared trunk) on Set A training, selected on validation."""
    input:
        unpack(get_trunk_checkpoint),
        train=get_training_caches("train"),
        validation=get_training_caches("validation"),
        masks=get_training_mask_sidecars,
        adc_qc=get_training_adc_qc,
    output:
        final=f"{RESULTS}/train/{{experiment}}/checkpoint_final.pt",
        best=f"{RESULTS}/train/{{experiment}}/checkpoint_best.pt",
        curve=report(
            f"{RESULTS}/train/{{experiment}}/training_curve.png",
            category="Training",
            labels={"experiment": "{experiment}"},
        ),
    log:
        f"{LOGS}/train_model/{{experiment}}.log",
    benchmark:
        f"{BENCH}/train_model/{{experiment}}.tsv"
    params:
        settings=get_train_settings,
        preprocessing=get_preprocessing_record(),
        sweeps=get_sweep_tags,
    threads: 2
    resources:
        mem_mb=grows_with_attempt(16000),
        runtime=grows_with_attempt(24 * 60),
        gpu=get_training_gpus(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_model.py"
