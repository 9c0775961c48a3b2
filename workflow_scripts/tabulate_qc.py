"""Rule tabulate_qc: glue only, the work is cesynth.qc.gather_tables (and, for the images
table, cesynth.image_qc.flagger)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import image_qc, qc  # noqa: E402
from cesynth.jobs import Job, JobOutcome, run_job  # noqa: E402

flagging = snakemake.params.flagging


def work():
    flag = (image_qc.flagger(flagging["thresholds"], flagging["skull_stripped"]) if flagging
            else None)
    table = qc.gather_tables(snakemake.input.rows, snakemake.output.table, flag=flag)
    return JobOutcome(metrics={"rows": len(table), "flagged": qc.count_flagged(table)},
                      artifacts=[snakemake.output.table])


run_job(Job.of(snakemake), work, params=flagging)
