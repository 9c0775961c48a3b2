"""Rule release_model: glue only, the work is cesynth.release.register_release."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import evaluate, release
from cesynth.io import write_json
from cesynth.jobs import JobOutcome, run_job

experiment = snakemake.wildcards.experiment


def work():
    summary = snakemake.input.get("summary")
    scores = evaluate.experiment_scores(summary, experiment) if summary else {}
    cascade = {target: path for target in release.CASCADE_TARGETS
               if (path := snakemake.input.get(f"cascade_{target}"))}
    record = release.register_release(snakemake.input.checkpoint, snakemake.params.name,
                                      scores=scores,
                                      tags={"experiment": experiment,
                                            "checkpoint": snakemake.params.checkpoint},
                                      cascade=cascade)
    write_json(record | {"scores": scores}, snakemake.output.release)
    return JobOutcome(metrics={"registered_version": record["version"]})


run_job(snakemake, work)
