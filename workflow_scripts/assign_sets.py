"""Rule assign_sets: glue only, the work is cesynth.ingest_report.write_sets_table."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import ingest_report, splits  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

sets = snakemake.params.sets
fractions = splits.SplitFractions.from_config(sets)


def work():
    table = ingest_report.write_sets_table(
        snakemake.input.reports, snakemake.output.sets, fractions
    )
    counts = table.groupby("split").size().to_dict()
    return {f"n_{split}": int(n) for split, n in counts.items()}


run_job(Job.of(snakemake), work, params=sets)
