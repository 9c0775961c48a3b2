"""A stand-in for the `conda` command, for `snakemake --use-conda` where no conda channel is.

Usage (the wrapper :func:`helpers.environments.write_conda_standin` writes calls it so):
``python conda_standin.py ROOT <conda arguments>``. ROOT holds ``bin/activate`` and
``environments.json`` (SHA-256 of an environment file's bytes -> the virtualenv built from its
Python pins). Snakemake asks conda for its version, its info and its channel priority, creates a
rule's environment with ``conda env create --file <copy of envs/X.yaml> --prefix DIR`` and runs
the job after ``source <conda_prefix>/bin/activate DIR``: here creating links DIR to the
virtualenv of that file, and activating puts its ``bin`` first on PATH; ``conda clean`` does
nothing. Any other command fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1].strip('"')


def _create(root: Path, args: list[str]) -> int:
    env_file, prefix = Path(_option(args, "--file")), _option(args, "--prefix")
    built = json.loads((root / "environments.json").read_text())
    venv = built.get(hashlib.sha256(env_file.read_bytes()).hexdigest())
    if venv is None:
        print(f"conda stand-in: no virtualenv was built from {env_file}", file=sys.stderr)
        return 1
    os.symlink(venv, prefix, target_is_directory=True)
    print(f"conda stand-in: {prefix} -> {venv}")
    return 0


def main(root: Path, args: list[str]) -> int:
    if args[:1] == ["--version"]:
        print("conda 25.1.1")
    elif args[:2] == ["info", "--json"]:
        print(json.dumps({"conda_prefix": str(root), "root_prefix": str(root),
                          "platform": "linux-64"}))
    elif args[:3] == ["config", "--get", "channel_priority"]:
        print(json.dumps({"get": {"channel_priority": "strict"}, "rc_path": "", "success": True,
                          "warnings": []}))
    elif args[:2] == ["env", "create"]:
        return _create(root, args)
    elif args[:1] == ["clean"]:
        pass  # Snakemake's --conda-cleanup-pkgs: no package cache to clean
    else:
        print(f"conda stand-in: not supported: conda {' '.join(args)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
