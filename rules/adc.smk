# ADC fitting from DWI at b = 0, 500, 1000 (log-linear least squares on the DWI grid).


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
    params:
        b_values=config["ingest"]["b_values"],
        b_tolerance=config["ingest"]["b_tolerance"],
        min_adc=config["adc"]["min_adc"],
        max_adc=config["adc"]["max_adc"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/cesynth.yaml"
    script:
        "../workflow_scripts/fit_adc.py"
