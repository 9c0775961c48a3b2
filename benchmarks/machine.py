"""What the benchmarks share: the machine line and reading Snakemake's job benchmark files."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_cpu() -> str:
    """CPU model and count, e.g. ``AMD EPYC 7B13, 2 CPUs``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def job_seconds_and_peak_mb(tsv: Path) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one job from its Snakemake ``benchmark:`` file."""
    header, values = tsv.read_text().splitlines()[:2]
    record = dict(zip(header.split("\t"), values.split("\t"), strict=True))
    return float(record["s"]), float(record["max_rss"])
