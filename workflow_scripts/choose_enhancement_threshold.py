"""Rule choose_enhancement_threshold: glue only; the work is
cesynth.enhancement.choose_threshold."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import enhancement
from cesynth.jobs import Job, run_job


def work():
    keys = ("synthetic", "t1", "masks", "classes")
    columns = [list(snakemake.input.get(key, [])) for key in keys]
    subjects = [dict(zip(("synthetic", "t1", "mask", "classes"), files, strict=True))
                for files in zip(*columns, strict=True)]
    record = enhancement.choose_threshold(subjects, snakemake.params.delta,
                                          snakemake.output.threshold)
    return {key: value for key, value in record.items() if isinstance(value, int | float)}


run_job(Job.of(snakemake), work, params={"delta": snakemake.params.delta})
