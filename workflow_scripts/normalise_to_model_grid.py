"""Rule normalise_to_model_grid: glue only, the work is cesynth.normalise.prepare_image."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import normalise, qc  # noqa: E402
from cesynth.jobs import run_job  # noqa: E402

params, modality = snakemake.params, snakemake.wildcards.modality


def work():
    stats = normalise.prepare_image(
        snakemake.input.image, snakemake.input.mask, snakemake.output.image,
        params.shape, params.method,
    )
    flags = qc.plausibility_flags(adc_median_mm2_s=stats["median"]) if modality == "adc" else {}
    metrics = {"modality": modality, **{f"brain_{key}": value for key, value in stats.items()}}
    qc.write_row(qc.qc_row("normalise", snakemake.wildcards.subject, metrics, flags),
                 snakemake.output.qc)
    return {**stats, **flags}


run_job(snakemake, work, params={"shape": params.shape, "method": params.method})
