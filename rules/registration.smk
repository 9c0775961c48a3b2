# ANTs co-registration of T1w, T2w, FLAIR (when a model takes it) and DWI (applied to the ADC) to
# the native CE-T1 grid; or, for a dataset declared co-registered (ingest.coregistered), a checked
# identity that makes the same files.


rule register_anat_to_cet1w:
    """T1w, T2w or FLAIR to the CE-T1: rigid then affine, mutual information, resampled linearly."""
    input:
        unpack(get_registration_truth),
        fixed=get_cet1w,
        moving=get_anat_image,
        report=rules.validate_subject.output.report,
    output:
        image=preproc("anat", "{modality}", space="ceT1w"),
        xfm=preproc("anat", "xfm", ext=".mat", from_="{modality}", to="ceT1w"),
        qc=f"{QC}/registration/sub-{{subject}}_{{modality}}.tsv",
    log:
        f"{LOGS}/register_anat_to_cet1w/sub-{{subject}}_{{modality}}.log",
    benchmark:
        f"{BENCH}/register_anat_to_cet1w/sub-{{subject}}_{{modality}}.tsv"
    wildcard_constraints:
        subject=get_registration_subject_regex(False),
        modality="T1w|T2w|FLAIR",
    params:
        seed=config["registration"]["seed"],
    threads: config["registration"]["threads"]
    resources:
        mem_mb=grows_with_attempt(6000),
        runtime=grows_with_attempt(30),
    conda:
        "../envs/ants.yaml"
    script:
        "../workflow_scripts/register_anat_to_cet1w.py"


rule register_dwi_to_cet1w:
    """The DWI b0 to the CE-T1; the same transform carries the ADC map onto the CE-T1 grid. A
    scan with a given ADC map and no DWI registers the map itself."""
    input:
        unpack(get_registration_truth),
        unpack(get_adc_registration_inputs),
        fixed=get_cet1w,
        adc=rules.fit_adc.output.adc,
    output:
        image=preproc("anat", "adc", space="ceT1w"),
        xfm=preproc("anat", "xfm", ext=".mat", from_="dwi", to="ceT1w"),
        qc=f"{QC}/registration/sub-{{subject}}_dwi.tsv",
    log:
        f"{LOGS}/register_dwi_to_cet1w/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/register_dwi_to_cet1w/sub-{{subject}}.tsv"
    wildcard_constraints:
        subject=get_registration_subject_regex(False),
    params:
        seed=config["registration"]["seed"],
    threads: config["registration"]["threads"]
    resources:
        mem_mb=grows_with_attempt(6000),
        runtime=grows_with_attempt(30),
    conda:
        "../envs/ants.yaml"
    script:
        "../workflow_scripts/register_dwi_to_cet1w.py"


rule coregistered_anat_to_cet1w:
    """T1w, T2w or FLAIR declared on the CE-T1 grid: the grid checked, the image copied, an
    identity transform written."""
    input:
        fixed=get_cet1w,
        moving=get_anat_image,
        report=rules.validate_subject.output.report,
    output:
        image=rules.register_anat_to_cet1w.output.image,
        xfm=rules.register_anat_to_cet1w.output.xfm,
        qc=rules.register_anat_to_cet1w.output.qc,
    log:
        f"{LOGS}/coregistered_anat_to_cet1w/sub-{{subject}}_{{modality}}.log",
    benchmark:
        f"{BENCH}/coregistered_anat_to_cet1w/sub-{{subject}}_{{modality}}.tsv"
    wildcard_constraints:
        subject=get_registration_subject_regex(True),
        modality="T1w|T2w|FLAIR",
    params:
        declared="coregistered",
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/ants.yaml"
    script:
        "../workflow_scripts/coregistered_to_cet1w.py"


rule coregistered_adc_to_cet1w:
    """The ADC map declared on the CE-T1 grid: checked, copied, an identity transform."""
    input:
        fixed=get_cet1w,
        moving=rules.fit_adc.output.adc,
    output:
        image=rules.register_dwi_to_cet1w.output.image,
        xfm=rules.register_dwi_to_cet1w.output.xfm,
        qc=rules.register_dwi_to_cet1w.output.qc,
    log:
        f"{LOGS}/coregistered_adc_to_cet1w/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/coregistered_adc_to_cet1w/sub-{{subject}}.tsv"
    wildcard_constraints:
        subject=get_registration_subject_regex(True),
    params:
        declared="coregistered",
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/ants.yaml"
    script:
        "../workflow_scripts/coregistered_to_cet1w.py"
