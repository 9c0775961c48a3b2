"""Rule normalise_to_model_grid: glue only, the work is cesynth.normalise (prepare_image,
write_qc_row)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import normalise  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

params, modality = snakemake.params, snakemake.wildcards.modality


def work():
    stats = normalise.prepare_image(
        snakemake.input.image, snakemake.input.mask, snakemake.output.image,
        params.shape, params.method, modality=modality, **params.options,
    )
    return normalise.write_qc_row(stats, modality, snakemake.wildcards.subject,
                                  snakemake.output.qc)


run_job(Job.of(snakemake), work,
        params={"shape": params.shape, "method": params.method, **params.options})
