"""Rule tabulate_paper: glue only, the work is cesynth.paper_report.write_paper_outputs."""
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

import pandas as pd

from cesynth import paper_report
from cesynth.io import read_tsv
from cesynth import tracking
from cesynth.jobs import Job, JobOutcome, run_job, tracking_settings


def work():
    written = paper_report.write_paper_outputs(read_tsv(snakemake.input.metrics),
                                               pd.DataFrame(snakemake.params.catalog),
                                               Path(snakemake.output.tables).parent)
    tracking.log_to_sweeps(*tracking_settings(), list(snakemake.params.sweeps),
                           list(written.values()))
    return JobOutcome(metrics={"outputs": len(written)}, artifacts=list(written.values()))


run_job(Job.of(snakemake), work)
