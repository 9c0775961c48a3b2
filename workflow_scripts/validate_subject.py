"""Rule validate_subject: glue only, the work is cesynth.ingest.validate_scan."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import ingest  # noqa: E402
from cesynth.jobs import run_job  # noqa: E402

params = snakemake.params


def work():
    report = ingest.validate_and_report(
        ingest.rescan_files(snakemake.wildcards.subject, snakemake.input),
        snakemake.output.report,
        b_values=params.b_values,
        b_tolerance=params.b_tolerance,
    )
    return {f"has_{name}": True for name in report["modalities"]}


run_job(snakemake, work, params={"b_values": params.b_values, "b_tolerance": params.b_tolerance})
