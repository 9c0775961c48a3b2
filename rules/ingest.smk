# Ingest: DICOM conversion (when configured), validation of every input, and the Set A/B split.


checkpoint convert_dicom:
    """One subject's DICOM series given roles from their tags and acquisition order (recorded in
    the series table; an ambiguity stops the subject), converted with dcm2niix, anonymised."""
    input:
        dicom=get_dicom_subject_dir,
    output:
        report=f"{RESULTS}/ingest/dicom/sub-{{subject}}.json",
        series=f"{QC}/ingest/sub-{{subject}}_series.tsv",
    log:
        f"{LOGS}/convert_dicom/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/convert_dicom/sub-{{subject}}.tsv"
    wildcard_constraints:
        subject=get_dicom_subject_regex(),
    params:
        bids_dir=BIDS,
        patterns=config["ingest"]["dicom_series_patterns"],
        prefer=config["ingest"]["dicom_prefer"],
        overrides=config["ingest"]["dicom_series"],
        b_values=config["ingest"]["b_values"],
        b_tolerance=config["ingest"]["b_tolerance"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(15),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/convert_dicom.py"


rule validate_subject:
    """Every input file of one subject checked before any work; a bad one stops this subject."""
    input:
        unpack(get_raw_inputs),
    output:
        report=f"{QC}/ingest/sub-{{subject}}.json",
    log:
        f"{LOGS}/validate_subject/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/validate_subject/sub-{{subject}}.tsv"
    params:
        set=get_scan_set,
        b_values=config["ingest"]["b_values"],
        b_tolerance=config["ingest"]["b_tolerance"],
        required_b_values=config["ingest"]["required_b_values"],
        require_flair=is_flair_declared(),
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/validate_subject.py"


rule assign_sets:
    """Set A train/validation/test (by participant ID hash) and Set B, over the validated subjects."""
    input:
        reports=get_ingest_reports(),
    output:
        sets=f"{RESULTS}/ingest/sets.tsv",
    log:
        f"{LOGS}/assign_sets.log",
    benchmark:
        f"{BENCH}/assign_sets.tsv"
    params:
        sets=config["sets"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(1000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/assign_sets.py"
