# ADC fitting from DWI at b = 0, 500, 1000 (log-linear least squares on the DWI grid; a DWI with
# b = 0 and other shells is fitted from the shells it has: ingest.required_b_values), or a
# given ADC (or MD) map brought to mm2/s for scans that have no raw DWI.


rule fit_adc:
    """ADC map in mm2/s from the direction-averaged shells of one subject's DWI."""
    input:
        unpack(get_dwi_inputs),
        unpack(get_adc_truth),
        report=rules.validate_subject.output.report,
    output:
        adc=preproc("dwi", "adc"),
        qc=f"{QC}/adc/sub-{{subject}}.tsv",
    log:
        f"{LOGS}/fit_adc/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/fit_adc/sub-{{subject}}.tsv"
    wildcard_constraints:
        subject=get_adc_subject_regex("dwi"),
    params:
        b_values=config["ingest"]["b_values"],
        b_tolerance=config["ingest"]["b_tolerance"],
        required_b_values=config["ingest"]["required_b_values"],
        min_adc=config["adc"]["min_adc"],
        max_adc=config["adc"]["max_adc"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(10),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/fit_adc.py"


rule convert_adc_map:
    """A given ADC (or MD) map in mm2/s, float32, on its own grid: the unit detected from its
    median (mm2/s, 1e-3 or 1e-6 mm2/s, m2/s), clipped as the fit clips."""
    input:
        unpack(get_adc_map_inputs),
        report=rules.validate_subject.output.report,
    output:
        adc=rules.fit_adc.output.adc,
        qc=rules.fit_adc.output.qc,
    log:
        f"{LOGS}/convert_adc_map/sub-{{subject}}.log",
    benchmark:
        f"{BENCH}/convert_adc_map/sub-{{subject}}.tsv"
    wildcard_constraints:
        subject=get_adc_subject_regex("map"),
    params:
        min_adc=config["adc"]["min_adc"],
        max_adc=config["adc"]["max_adc"],
    threads: 1
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(5),
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/convert_adc_map.py"
