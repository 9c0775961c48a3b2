# ANTs co-registration of T1w, T2w and DWI (applied to the ADC) to the native CE-T1 grid.


rule register_anat_to_cet1w:
    """T1w or T2w to the CE-T1: rigid then affine, mutual information, resampled linearly."""
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
        modality="T1w|T2w",
    params:
        seed=config["registration"]["seed"],
    threads: config["registration"]["threads"]
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../envs/ants.yaml"
    script:
        "../workflow_scripts/register_anat_to_cet1w.py"


rule register_dwi_to_cet1w:
    """The DWI b0 to the CE-T1; the same transform carries the ADC map onto the CE-T1 grid."""
    input:
        unpack(get_registration_truth),
        fixed=get_cet1w,
        dwi=get_dwi,
        bval=get_bval,
        adc=rules.fit_adc.output.adc,
    output:
        image=preproc("anat", "adc", space="ceT1w"),
        xfm=preproc("anat", "xfm", ext=".mat", from_="dwi", to="ceT1w"),
        qc=f"{QC}/registration/sub-{{subject}}_dwi.tsv",
    log:
        f"{LOGS}/register_dwi_to_cet1w/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/register_dwi_to_cet1w/sub-{{subject}}.tsv"
    params:
        seed=config["registration"]["seed"],
    threads: config["registration"]["threads"]
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../envs/ants.yaml"
    script:
        "../workflow_scripts/register_dwi_to_cet1w.py"
