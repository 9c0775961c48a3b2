"""Rule cache_training_subject: glue only, the work is cesynth.cache.cache_subject (no torch)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import cache
from cesynth.jobs import Job, run_job

inputs = snakemake.input
IMAGES = ("T1w", "T2w", "adc", "FLAIR", "ceT1w")


def work():
    images = {name: inputs[name] for name in IMAGES if name in inputs.keys()}
    cache.cache_subject(images, inputs.mask, inputs.sidecar, snakemake.output.cache,
                        modalities=snakemake.params.modalities)
    return {f"has_{name}": True for name in images}


run_job(Job.of(snakemake), work, params={"modalities": snakemake.params.modalities})
