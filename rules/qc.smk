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


rule tabulate_qc:
    """One table per stage (adc, registration, brainmask, normalise) with a row per job."""
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
    threads: 1
    resources:
        mem_mb=grows_with_attempt(1000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/tabulate_qc.py"
