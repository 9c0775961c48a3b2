"""Rule plot_synthesis_panel: glue only, the work is cesynth.paper_figures.synthesis_panel."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import paper_figures
from cesynth.jobs import Job, JobOutcome, run_job


def work():
    layout = snakemake.params.panels
    images = {f"sub-{s}": {k: v for k, v in panels.items() if k != "slice_mask"}
              for s, panels in layout.items()}
    slices = {f"sub-{s}": paper_figures.largest_region_slice(panels["slice_mask"])
              for s, panels in layout.items()}
    paper_figures.synthesis_panel(images, slices, snakemake.output.panel)
    return JobOutcome(artifacts=[snakemake.output.panel])


run_job(Job.of(snakemake), work)
