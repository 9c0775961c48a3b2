"""Rule tabulate_paper: glue only, the work is cesynth.paper.write_paper_outputs."""
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

import pandas as pd

from cesynth import paper
from cesynth.io import read_tsv
from cesynth.jobs import JobOutcome, run_job


def work():
    written = paper.write_paper_outputs(read_tsv(snakemake.input.metrics),
                                        pd.DataFrame(snakemake.params.catalog),
                                        Path(snakemake.output.tables).parent)
    return JobOutcome(metrics={"outputs": len(written)}, artifacts=list(written.values()))


run_job(snakemake, work)
