"""Rule tabulate_qc: glue only, the work is cesynth.qc.gather_tables."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import qc  # noqa: E402
from cesynth.jobs import Job, JobOutcome, run_job  # noqa: E402


def work():
    table = qc.gather_tables(snakemake.input.rows, snakemake.output.table)
    return JobOutcome(metrics={"rows": len(table), "flagged": qc.count_flagged(table)},
                      artifacts=[snakemake.output.table])


run_job(Job.of(snakemake), work)
