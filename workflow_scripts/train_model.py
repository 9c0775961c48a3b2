"""Rules train_trunk, train_model: glue only, the work is cesynth.train.train_from_files."""
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import preprocessing, train
from cesynth.jobs import Job, JobOutcome, run_job
from cesynth.settings import EXECUTION_SETTINGS, TrainSettings

# Execution settings (device, workers, compile, checkpoint cadence) come from the config at run
# time, not from params, so changing them never reruns a finished training.
execution = {k: v for k, v in snakemake.config["train"].items() if k in EXECUTION_SETTINGS}
settings = {**snakemake.params.settings, **execution}
out_dir = Path(snakemake.output[0]).parent


def caches(folders):
    return [Path(folder) / f"{Path(folder).name}_cache.json" for folder in folders]


def work():
    train.check_training_subjects(snakemake.input.train)
    model = TrainSettings.from_dict(settings)
    record = preprocessing.preprocessing_record(
        snakemake.params.preprocessing, modalities=model.modalities, target=model.target,
        mask_sidecars=snakemake.input.masks, adc_qc_rows=snakemake.input.adc_qc)
    summary = train.train_from_files(caches(snakemake.input.train),
                                     caches(snakemake.input.validation), out_dir, settings,
                                     preprocessing=record,
                                     start_from=snakemake.input.get("trunk"))
    metrics = {key: value for key, value in summary.items() if isinstance(value, int | float)}
    return JobOutcome(metrics=metrics)


run_job(Job.of(snakemake), work, params=settings, sweeps=snakemake.params.get("sweeps") or [],
        live=True)  # logs every step and the model to its run
