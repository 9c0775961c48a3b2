"""Rule plot_synthesis_panel: glue only, the work is cesynth.paper.synthesis_panel."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import paper
from cesynth.jobs import JobOutcome, run_job


def work():
    layout = snakemake.params.panels
    images = {f"sub-{s}": {k: v for k, v in panels.items() if k != "slice_mask"}
              for s, panels in layout.items()}
    slices = {f"sub-{s}": paper.largest_region_slice(panels["slice_mask"])
              for s, panels in layout.items()}
    paper.synthesis_panel(images, slices, snakemake.output.panel)
    return JobOutcome(artifacts=[snakemake.output.panel])


run_job(snakemake, work)
