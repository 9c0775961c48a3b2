"""Rule import_dataset: glue only, the work is cesynth.importing.import_layout."""
import logging
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import importing  # noqa: E402
from cesynth.io import write_json  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

log = logging.getLogger("import_dataset")
settings = snakemake.params.settings


def work():
    result = importing.import_layout(
        snakemake.input.source, snakemake.params.bids_dir, settings["layout"],
        patterns=settings["patterns"], tumor_labels=settings["tumor_labels"],
        set_mode=settings["set"], keep_going=True,
        on_error=lambda err: log.error("error: %s: %s", err.who, err.problem))
    report = importing.import_report(result)
    write_json(report, snakemake.output.report)
    return {"imported": report["imported"], "skipped": len(report["skipped"])}


run_job(Job.of(snakemake), work, params={"layout": settings["layout"]})
