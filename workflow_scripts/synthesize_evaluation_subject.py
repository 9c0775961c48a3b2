"""Rule synthesize_evaluation_subject: glue only, the work is cesynth.inference."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import inference
from cesynth.jobs import run_job

MODALITIES = ("T1w", "T2w", "adc")


def work():
    generator = inference.load_generator(snakemake.input.checkpoint, snakemake.params.device)
    images = {m: snakemake.input.get(m) for m in MODALITIES}
    summary = inference.synthesize_subject(
        generator, images, snakemake.input.mask, snakemake.input.mask_sidecar,
        snakemake.output.image, snakemake.output.sidecar)
    return {key: value for key, value in summary.items() if isinstance(value, int | float)}


run_job(snakemake, work)
