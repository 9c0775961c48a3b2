"""Rules synthesize_evaluation_subject, synthesize_input_condition: glue only, the work is
cesynth.inference."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import inference
from cesynth.jobs import Job, run_job

MODALITIES = ("T1w", "T2w", "adc", "FLAIR")
device = snakemake.config["train"]["device"]  # how the job runs, not what it computes


def work():
    generator = inference.load_generator(snakemake.input.checkpoint, device)
    images = {m: snakemake.input.get(m) for m in MODALITIES}
    summary = inference.synthesize_subject(
        generator, images, snakemake.input.mask, snakemake.input.mask_sidecar,
        snakemake.output.image, snakemake.output.sidecar, zeroed=snakemake.params.zeroed)
    return {key: value for key, value in summary.items() if isinstance(value, int | float)}


run_job(Job.of(snakemake), work)
