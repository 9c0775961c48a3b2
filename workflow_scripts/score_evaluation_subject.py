"""Rule score_evaluation_subject: glue only, the work is cesynth.evaluate.evaluate_subject."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import enhancement, evaluate
from cesynth.jobs import Job, run_job


def work():
    record = evaluate.evaluate_subject(
        snakemake.input.image, snakemake.input.target, snakemake.input.mask,
        snakemake.output.metrics, subject=snakemake.wildcards.subject,
        set_name=snakemake.params.set_name, model=snakemake.wildcards.model,
        tumor_mask_path=snakemake.input.get("tumor_mask"), t1_path=snakemake.input.get("t1"),
        threshold_path=snakemake.input.get("threshold"),
        classes_path=snakemake.input.get("truth_classes"),
        instances_path=snakemake.input.get("truth_instances"),
        lesion_sidecar_path=snakemake.input.get("truth_sidecar"))
    flat = evaluate.flatten_metrics(record) | enhancement.flatten_endpoints(record)
    return {key: value for key, value in flat.items() if value == value}  # NaN: region absent


run_job(Job.of(snakemake), work)
