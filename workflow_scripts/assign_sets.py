"""Rule assign_sets: glue only, the work is cesynth.ingest.write_sets_table."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import ingest  # noqa: E402
from cesynth.jobs import run_job  # noqa: E402

fraction = snakemake.params.validation_fraction


def work():
    sets = ingest.write_sets_table(snakemake.input.reports, snakemake.output.sets, fraction)
    counts = sets.groupby("split").size().to_dict()
    return {f"n_{split}": int(n) for split, n in counts.items()}


run_job(snakemake, work, params={"validation_fraction": fraction})
