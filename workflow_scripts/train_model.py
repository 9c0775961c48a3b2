"""Rule train_model: glue only, the work is cesynth.train.train_from_files."""
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import train
from cesynth.jobs import JobOutcome, run_job

settings = snakemake.params.settings
out_dir = Path(snakemake.output.best).parent


def caches(folders):
    return [Path(folder) / f"{Path(folder).name}_cache.json" for folder in folders]


def work():
    summary = train.train_from_files(caches(snakemake.input.train),
                                     caches(snakemake.input.validation), out_dir, settings,
                                     preprocessing=snakemake.params.preprocessing)
    metrics = {key: value for key, value in summary.items() if isinstance(value, int | float)}
    return JobOutcome(metrics=metrics)


run_job(snakemake, work, params=settings)
