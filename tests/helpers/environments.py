"""The rules' conda environments (envs/*.yaml) against what `pip install -e .` resolves.

pyproject.toml pins the versions; every environment file repeats them: exactly for the packages
whose version must match to the release (EXACT), the same major.minor for the rest. `pin_problems`
compares the files with the versions installed in this interpreter (`importlib.metadata`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[2]
ENVS = REPO / "envs"

# Pinned to the release: MLflow's client opens only a store of its own schema (3.5 cannot open a
# store that 3.17 created), dcm2niix changes its output with its version, ANTs its registrations,
# torch its checkpoints.
EXACT = {"mlflow", "dcm2niix", "antspyx", "torch"}
# conda package -> the pip distribution it is
CONDA_TO_PIP = {"matplotlib-base": "matplotlib", "pyyaml": "PyYAML", "pytorch": "torch",
                "pytorch-msssim": "pytorch-msssim"}
# In an environment file but not in `pip install -e ".[test]"`: conda-only FSL tools, the
# interpreter, pip itself, and fslpy (pip's `fsl` extra). Compared when installed.
OUTSIDE_THE_INSTALL = {"python", "pip", "fsl-bet2", "fsl-avwutils", "fslpy"}
CONDA_ONLY = {"python", "pip", "fsl-bet2", "fsl-avwutils"}
# distribution -> the module its users import
IMPORT_NAMES = {"matplotlib": "matplotlib", "PyYAML": "yaml", "antspyx": "ants",
                "pytorch-msssim": "pytorch_msssim", "fslpy": "fsl", "psycopg2-binary": "psycopg2"}

_CONDA_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)\s*(?:(?P<op>==|=|>=|<=|>|<|!=|~=)\s*"
                         r"(?P<version>[^\s=]+))?$")


@dataclass(frozen=True)
class Pin:
    """One package of an environment file: its pip distribution, the version it fixes (None when
    it fixes none), and whether that version is exact (``==1.2.3``, conda ``=1.2.3``) or a
    series (``=1.2``, ``==1.2.*``)."""

    file: str
    source: str  # "conda" or "pip"
    name: str  # as written
    distribution: str  # the pip distribution
    spec: str  # as written
    version: str | None
    exact: bool

    @property
    def pip_requirement(self) -> str:
        """What `pip install` takes for this pin (conda's ``=1.2`` is pip's ``==1.2.*``)."""
        if self.source == "pip":
            return self.spec
        if self.version is None:
            return self.distribution
        return f"{self.distribution}=={self.version}" + ("" if self.exact else ".*")


def _conda_pin(file: str, spec: str) -> Pin:
    match = _CONDA_SPEC.match(spec.strip())
    if match is None:
        return Pin(file, "conda", spec, spec, spec, None, False)
    name, op, version = match["name"], match["op"], match["version"]
    distribution = CONDA_TO_PIP.get(name, name)
    if op not in ("=", "==") or version is None or "*" in version:
        return Pin(file, "conda", name, distribution, spec, None, False)
    # conda: `=1.2` is the series 1.2.*; `=1.2.3` fixes the release; `==1.2.3` exactly it
    exact = op == "==" or len(version.split(".")) >= 3
    return Pin(file, "conda", name, distribution, spec, version, exact)


def _pip_pin(file: str, spec: str) -> Pin:
    try:
        requirement = Requirement(spec)
    except InvalidRequirement:
        return Pin(file, "pip", spec, spec, spec, None, False)
    specifiers = list(requirement.specifier)
    if len(specifiers) != 1 or specifiers[0].operator not in ("==", "==="):
        return Pin(file, "pip", requirement.name, requirement.name, spec, None, False)
    version = specifiers[0].version
    if version.endswith(".*"):
        return Pin(file, "pip", requirement.name, requirement.name, spec, version[:-2], False)
    return Pin(file, "pip", requirement.name, requirement.name, spec, version, True)


def read_pins(path: Path) -> list[Pin]:
    """Every package of an environment file, conda's and its `pip:` section's."""
    pins = []
    for item in yaml.safe_load(Path(path).read_text())["dependencies"]:
        if isinstance(item, dict):
            pins.extend(_pip_pin(Path(path).name, spec) for spec in item.get("pip", []))
        else:
            pins.append(_conda_pin(Path(path).name, str(item)))
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(distribution: str, version: Callable[[str], str]) -> str | None:
    try:
        return version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[int, ...]:
    return Version(version).release[:2]


def pin_problems(files: Iterable[Path],
                 version: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """Where the environment files differ from the installed versions (``version``), one line
    each; empty when every pin agrees: exactly for EXACT, by major.minor for the rest."""
    problems = []
    for path in files:
        seen: set[str] = set()
        for pin in read_pins(path):
            where = f"{pin.file}: {pin.spec}"
            key = _canonical(pin.distribution)
            if key in seen:
                problems.append(f"{where}: {pin.distribution} is listed twice")
            seen.add(key)
            if pin.name in CONDA_ONLY or pin.distribution in CONDA_ONLY:
                continue
            installed = _installed(pin.distribution, version)
            if installed is None:
                if pin.name not in OUTSIDE_THE_INSTALL:
                    problems.append(f"{where}: {pin.distribution} is not in the pip install; "
                                    "add it to pyproject.toml or to OUTSIDE_THE_INSTALL")
                continue
            installed_public = Version(installed).public  # torch 2.13.0+cpu is 2.13.0
            if pin.version is None:
                problems.append(f"{where}: fixes no version; the install has {installed_public}")
                continue
            try:
                pinned = Version(pin.version)
            except InvalidVersion:
                problems.append(f"{where}: {pin.version!r} is not a version")
                continue
            exact = _canonical(pin.distribution) in EXACT
            if exact and not (pin.exact and pinned == Version(installed_public)):
                problems.append(f"{where}: must be exactly the installed {installed_public}")
            elif not exact and (len(pinned.release) < 2
                                or _major_minor(pin.version) != _major_minor(installed_public)):
                problems.append(f"{where}: the install has {installed_public} "
                                "(the same major.minor is required)")
    return problems


def import_names(pins: Iterable[Pin]) -> list[str]:
    """The modules the environment's Python packages provide (conda-only tools left out)."""
    names = []
    for pin in pins:
        if pin.name in CONDA_ONLY:
            continue
        names.append(IMPORT_NAMES.get(pin.distribution, pin.distribution.replace("-", "_")))
    return names


_RULE_BLOCK = re.compile(r"^(?:rule|checkpoint) (?P<rule>\w+):\n(?P<body>(?:[ \t].*\n|\n)*)",
                         re.MULTILINE)
_CONDA_ENV = re.compile(r'conda:\s*\n\s*"\.\./envs/(?P<env>[\w-]+\.yaml)"')
_SCRIPT = re.compile(r'script:\s*\n\s*"\.\./workflow_scripts/(?P<script>[\w-]+\.py)"')


def rule_environments() -> dict[str, tuple[str, str]]:
    """Rule name -> (the environment file its ``conda:`` names, its workflow script), for every
    rule of rules/*.smk that has both."""
    rules = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in _RULE_BLOCK.finditer(smk.read_text()):
            conda, script = _CONDA_ENV.search(block["body"]), _SCRIPT.search(block["body"])
            if conda is not None and script is not None:
                rules[block["rule"]] = (conda["env"], script["script"])
    return rules


def rule_scripts() -> dict[str, set[str]]:
    """Environment file name -> the workflow scripts its rules run (from rules/*.smk)."""
    scripts: dict[str, set[str]] = {}
    for env, script in rule_environments().values():
        scripts.setdefault(env, set()).add(script)
    return scripts


PROBE_VARIABLE = "CESYNTH_ENV_PROBE"
# A .pth line runs at every start of the interpreter; at exit it appends its prefix and script
_PROBE = ("import atexit, os, sys; atexit.register(lambda: os.environ.get('CESYNTH_ENV_PROBE') "
          "and open(os.environ['CESYNTH_ENV_PROBE'], 'a').write(sys.prefix + '\\t' + "
          "(sys.argv[0] if sys.argv else '') + '\\n'))\n")


def add_interpreter_probe(python: Path) -> None:
    """Make a virtualenv's interpreter record, where :data:`PROBE_VARIABLE` names a file, its
    ``sys.prefix`` and the script it ran (one tab-separated line per run, at exit)."""
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "cesynth_env_probe.pth").write_text(_PROBE)


def write_conda_standin(root: Path, venvs: Mapping[Path, Path]) -> Path:
    """A ``conda`` command for ``snakemake --use-conda`` that "creates" each environment file's
    environment as the virtualenv built from it (:mod:`helpers.conda_standin`).

    Args:
        root: an empty folder for the stand-in (its ``bin`` goes first on PATH).
        venvs: environment file -> the virtualenv folder built from its Python pins.

    Returns:
        The stand-in's ``bin`` folder.
    """
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    built = {hashlib.sha256(Path(env).read_bytes()).hexdigest(): str(venv)
             for env, venv in venvs.items()}
    (root / "environments.json").write_text(json.dumps(built))
    conda = bin_dir / "conda"
    conda.write_text(f'#!/bin/sh\nexec "{sys.executable}" '
                     f'"{Path(__file__).with_name("conda_standin.py")}" "{root}" "$@"\n')
    conda.chmod(0o755)
    # Snakemake runs a job as `source <conda_prefix>/bin/activate ENV; <command>`
    (bin_dir / "activate").write_text('export PATH="$1/bin:$PATH" VIRTUAL_ENV="$1"\n')
    return bin_dir


def script_imports(scripts: Iterable[str]) -> list[str]:
    """The modules the scripts import (cesynth's own modules among them)."""
    modules: set[str] = set()
    for script in scripts:
        tree = ast.parse((REPO / "workflow_scripts" / script).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "cesynth":
                    modules.update(f"cesynth.{alias.name}" for alias in node.names)
                else:
                    modules.add(node.module)
    return sorted(modules)
