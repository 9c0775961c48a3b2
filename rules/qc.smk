# Quality control: a montage per subject and one table per stage.


rule plot_qc_montage:
    """Each registered modality with the brain-mask outline over the CE-T1, for one subject."""
    input:
        unpack(get_registered_images),
        mask=rules.mask_brain.output.mask,
    output:
        png=report(
            f"{QC}/sub-{{subject}}/sub-{{subject}}_desc-montage.png",
            category="Quality control",
            subcategory="Montages",
            labels={"subject": "{subject}"},
        ),
    log:
        f"{LOGS}/plot_qc_montage/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/plot_qc_montage/sub-{{subject}}.tsv"
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/plot_qc_montage.py"


rule check_image_quality:
    """What real scans bring, per image: stored type and range, saturation, slice thickness and
    resampling stripes, background and brain coverage (flagged when the table is gathered)."""
    input:
        stored=get_stored_image,
        image=get_image_to_normalise,
        mask=rules.mask_brain.output.mask,
    output:
        qc=f"{QC}/images/sub-{{subject}}_{{modality}}.tsv",
    log:
        f"{LOGS}/check_image_quality/sub-{{subject}}_{{modality}}.log",
    benchmark:
        f"{BENCH}/check_image_quality/sub-{{subject}}_{{modality}}.tsv"
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/check_image_quality.py"


rule tabulate_qc:
    """One table per stage (adc, registration, brainmask, normalise, images) with a row per job;
    the images table is flagged here, with the qc thresholds."""
    input:
        rows=get_qc_rows,
    output:
        table=report(
            f"{QC}/{{stage}}.tsv",
            category="Quality control",
            subcategory="Tables",
            labels={"stage": "{stage}"},
        ),
    log:
        f"{LOGS}/tabulate_qc/{{stage}}.log",
    benchmark:
        f"{BENCH}/tabulate_qc/{{stage}}.tsv"
    wildcard_constraints:
        stage="|".join(QC_STAGES),
    params:
        flagging=get_qc_flagging,
    threads: 1
    resources:
        mem_mb=grows_with_attempt(1000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/tabulate_qc.py"
