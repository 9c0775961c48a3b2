"""Rule validate_subject: glue only, the work is cesynth.ingest_report.validate_and_report."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import ingest, ingest_report  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

params = snakemake.params


def work():
    scan = ingest.scan_from_rule_inputs(snakemake.wildcards.subject, snakemake.input, params.set)
    report = ingest_report.validate_and_report(
        scan, snakemake.output.report, b_values=params.b_values, b_tolerance=params.b_tolerance,
        required_b_values=params.required_b_values, require_flair=params.require_flair,
    )
    return {f"has_{name}": True for name in report["modalities"]}


run_job(Job.of(snakemake), work, params=dict(params.items()))
