"""A job's thread limit reaches every library that starts threads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS")


def _threads_after_limit(threads: object, import_torch_first: bool) -> dict:
    """Environment and torch's thread count in a fresh interpreter after ``limit_threads``."""
    code = "\n".join([
        "import json, os, sys",
        "import torch" if import_torch_first else "",
        "from cesynth.jobs import limit_threads",
        f"limit_threads({threads!r})",
        "import torch",
        f"print(json.dumps({{v: os.environ[v] for v in {THREAD_VARIABLES!r}}}"
        " | {'torch': torch.get_num_threads()}))",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    return json.loads(result.stdout)


def test_limit_threads_sets_itk_openmp_and_blas_and_torch():
    seen = _threads_after_limit(1, import_torch_first=True)
    assert {seen[v] for v in THREAD_VARIABLES} == {"1"}
    assert seen["torch"] == 1


@pytest.mark.parametrize("threads, expected", [(0, "1"), ("3", "3")])
def test_limit_threads_takes_at_least_one_thread(threads, expected):
    seen = _threads_after_limit(threads, import_torch_first=False)
    assert {seen[v] for v in THREAD_VARIABLES} == {expected}
