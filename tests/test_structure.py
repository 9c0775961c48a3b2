"""The module layering: torch-free modules stay torch-free, inference never imports training."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cesynth

PACKAGE = Path(cesynth.__file__).parent


def _modules_after_import(*modules: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    return set(json.loads(result.stdout))


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names (at any depth)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "cesynth":
                names.update(f"cesynth.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("modules", [("cesynth.cache",), ("cesynth.settings",),
                                     ("cesynth.cache", "cesynth.jobs")])
def test_numpy_only_modules_do_not_import_torch(modules):
    loaded = _modules_after_import(*modules)
    assert set(modules) <= loaded
    assert "torch" not in loaded


@pytest.mark.parametrize("module", ["inference", "release"])
def test_inference_and_release_source_import_nothing_from_training(module):
    imported = _imported_modules(PACKAGE / f"{module}.py")
    assert "cesynth.train" not in imported
    assert not any(name.startswith("cesynth.train.") for name in imported)


def test_inference_and_release_load_without_the_trainer():
    loaded = _modules_after_import("cesynth.inference", "cesynth.release")
    assert {"cesynth.inference", "cesynth.release"} <= loaded
    assert "cesynth.train" not in loaded
