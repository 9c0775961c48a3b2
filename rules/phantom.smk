# The built-in demo cohort: synthetic brain-tumor patients written as a BIDS dataset at bids_dir.


rule make_demo_dataset_files:
    """Dataset description and participants table of the demo cohort."""
    output:
        description=f"{BIDS}/dataset_description.json",
        participants=f"{BIDS}/participants.tsv",
    log:
        f"{LOGS}/make_demo_dataset_files.log",
    benchmark:
        f"{BENCH}/make_demo_dataset_files.tsv"
    params:
        demo=get_demo_settings(),
        sets=config["sets"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(1000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/make_demo_dataset_files.py"


rule make_demo_subject:
    """One synthetic patient: T1w, CE-T1, T2w, DWI (and FLAIR when asked) with sidecars, plus the
    ground truth."""
    input:
        # ancient: a change of cohort size rewrites the description but must not remake subjects
        description=ancient(rules.make_demo_dataset_files.output.description),
    output:
        **get_demo_subject_outputs(),
    log:
        f"{LOGS}/make_demo_subject/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/make_demo_subject/sub-{{subject}}.tsv"
    wildcard_constraints:
        subject=get_demo_subject_regex("A"),
    params:
        plan=get_demo_plan_row,
        voxel_mm=config["demo"]["voxel_mm"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/make_demo_subject.py"


use rule make_demo_subject as make_demo_subject_set_b with:
    output:
        **get_demo_subject_outputs(),
        tumor_mask=get_demo_tumor_mask_output(),
    log:
        f"{LOGS}/make_demo_subject/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/make_demo_subject/sub-{{subject}}.tsv"
    wildcard_constraints:
        subject=get_demo_subject_regex("B"),
