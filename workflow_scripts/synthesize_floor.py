"""Rule synthesize_floor: glue only, the work is cesynth.baselines.write_floor_prediction."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import baselines
from cesynth.jobs import Job, run_job

MODALITIES = ("T1w", "T2w", "adc")


def work():
    images = {m: snakemake.input.get(m) for m in MODALITIES}
    sidecar = baselines.write_floor_prediction(
        snakemake.wildcards.floor, images, snakemake.input.mask, snakemake.output.image,
        snakemake.output.sidecar, model_json=snakemake.input.get("model"))
    return {"missing_inputs": len(sidecar["MissingModalities"])}


run_job(Job.of(snakemake), work)
