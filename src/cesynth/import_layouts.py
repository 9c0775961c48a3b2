"""The published cohorts' layouts (UCSF-PDGM, BraTS) and the plan of an import, from file names.

:data:`LAYOUTS` holds, per layout, the folder-name suffix of a case and its naming variants: the
file-name pattern of each contrast (overridable from config ``import.patterns``,
:func:`layout_spec`), the tumor segmentation's label values and their groups
(:func:`resolve_tumor_labels`). :func:`plan_import` finds every case's files from their names
alone, no image read (:class:`CasePlan`); :mod:`cesynth.importing` writes the BIDS dataset from
the plan.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cesynth.io import InputError

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
REQUIRED = ("T1w", "ceT1w")

# Per layout: the folder-name suffix stripped to get the public case ID, and one or more naming
# variants (tried in order; a case uses the first whose T1, T1c or segmentation pattern matches a
# file). Patterns are shell globs on the file name without its .nii.gz/.nii extension; a list is
# tried in order. "adc" is the ADC map, "md" the DTI mean diffusivity used when there is no ADC,
# "seg" the tumor label map, "brain" a brain mask (written as sub-<label>_desc-brain_mask).
LAYOUTS: dict[str, dict[str, Any]] = {
    "ucsf-pdgm": {
        "description": "UCSF-PDGM (UCSF Preoperative Diffuse Glioma MRI, TCIA): "
                       "<case>_nifti/<case>_{T1,T1c,T2,FLAIR,ADC,DTI_eddy_MD,...}.nii.gz, "
                       "co-registered at 1 mm and skull-stripped",
        "case_suffix": "_nifti",
        "variants": {
            "ucsf-pdgm": {
                "patterns": {"T1w": "*_T1", "ceT1w": "*_T1c", "T2w": "*_T2", "FLAIR": "*_FLAIR",
                             "adc": "*_ADC",
                             "md": "*_DTI_eddy_MD", "seg": "*_tumor_segmentation",
                             "brain": "*_brain_segmentation"},
                "labels": {1: "necrotic / non-enhancing tumor core", 2: "edema",
                           4: "enhancing tumor"},
                "groups": {"enhancing": [4], "core": [1, 4], "whole": [1, 2, 4]},
            },
        },
    },
    "brats": {
        "description": "BraTS: <case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz (2023 and later) or "
                       "<case>/<case>_{t1,t1ce,t2,flair,seg}.nii[.gz] (2017-2021); no diffusion",
        "case_suffix": "",
        "variants": {
            "brats2023": {
                "patterns": {"T1w": "*-t1n", "ceT1w": "*-t1c", "T2w": "*-t2w", "FLAIR": "*-t2f",
                             "seg": "*-seg"},
                "labels": {1: "necrotic / non-enhancing tumor core",
                           2: "edema (surrounding non-enhancing FLAIR hyperintensity)",
                           3: "enhancing tumor",
                           4: "resection cavity (BraTS 2024 post-treatment cases only)"},
                "groups": {"enhancing": [3], "core": [1, 3], "whole": [1, 2, 3]},
            },
            "brats2017": {
                "patterns": {"T1w": "*_t1", "ceT1w": "*_t1ce", "T2w": "*_t2", "FLAIR": "*_flair",
                             "seg": "*_seg"},
                "labels": {1: "necrotic / non-enhancing tumor core", 2: "edema",
                           4: "enhancing tumor"},
                "groups": {"enhancing": [4], "core": [1, 4], "whole": [1, 2, 4]},
            },
        },
    },
}
PATTERN_KEYS = ("T1w", "ceT1w", "T2w", "FLAIR", "adc", "md", "seg", "brain")
TUMOR_LABEL_GROUPS = ("enhancing", "core", "whole")

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")
_SOURCE_NAME = {"T1w": "T1", "ceT1w": "T1c", "T2w": "T2", "FLAIR": "FLAIR", "adc": "ADC",
                "md": "MD",
                "seg": "tumor segmentation"}


@dataclass
class CasePlan:
    """One source case as found from file names alone (no image read)."""

    case: str
    label: str
    folder: Path
    variant: str
    files: dict[str, Path] = field(default_factory=dict)
    problem: str | None = None

    @property
    def has_segmentation(self) -> bool:
        return "seg" in self.files

    @property
    def diffusion(self) -> tuple[str, Path] | None:
        """The ADC map ("ADC"), else the DTI mean diffusivity ("MD"), else None."""
        if "adc" in self.files:
            return "ADC", self.files["adc"]
        if "md" in self.files:
            return "MD", self.files["md"]
        return None


# ------------------------------------------------------------------------------ the plan


def layout_spec(layout: str, patterns: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The layout's table entry, with ``patterns`` (modality -> glob or list) applied to every
    naming variant.

    Raises:
        InputError: unknown layout or pattern key.
    """
    if layout not in LAYOUTS:
        raise InputError(layout, f"unknown layout (expected one of {', '.join(LAYOUTS)})")
    spec = copy.deepcopy(LAYOUTS[layout])
    for key, value in (patterns or {}).items():
        if key not in PATTERN_KEYS:
            raise InputError(f"import.patterns.{key}",
                             f"unknown pattern key (expected {', '.join(PATTERN_KEYS)})")
        for variant in spec["variants"].values():
            variant["patterns"][key] = value
    return spec


def subject_label(case: str) -> str:
    """BIDS label of a public case ID: its letters and digits (``UCSF-PDGM-0004`` ->
    ``UCSFPDGM0004``)."""
    return _NOT_ALNUM.sub("", case)


def plan_import(source_dir: str | os.PathLike, layout: str,
                patterns: Mapping[str, Any] | None = None) -> list[CasePlan]:
    """List the cases of a layout folder and find each contrast's file, from names alone.

    Args:
        source_dir: the folder holding one sub-folder per case.
        layout: a key of :data:`LAYOUTS`.
        patterns: overrides of the layout's file-name patterns.

    Returns:
        One :class:`CasePlan` per case folder, sorted by case; a case that lacks T1 or T1c or
        whose pattern matches several files carries the one-line ``problem``.

    Raises:
        InputError: not a folder, no case folders, or two cases with one BIDS label.
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise InputError(root, "not a directory")
    spec = layout_spec(layout, patterns)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(root, f"no case folders ({layout} layout: one folder per case)")
    plans = [_plan_case(folder, spec) for folder in folders]
    seen: dict[str, str] = {}
    for plan in plans:
        if not plan.label:
            raise InputError(plan.folder.name, "case ID has no letters or digits")
        if plan.label in seen:
            raise InputError(root, f"cases {seen[plan.label]} and {plan.case} both map to "
                                   f"sub-{plan.label}")
        seen[plan.label] = plan.case
    return plans


def _plan_case(folder: Path, spec: Mapping[str, Any]) -> CasePlan:
    suffix = spec["case_suffix"]
    case = folder.name.removesuffix(suffix) if suffix else folder.name
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    variants = spec["variants"]
    chosen = next((name for name, variant in variants.items()
                   if any(_matches(names, variant["patterns"].get(key))
                          for key in ("T1w", "ceT1w", "seg"))), next(iter(variants)))
    plan = CasePlan(case=case, label=subject_label(case), folder=folder, variant=chosen)
    for key, pattern in variants[chosen]["patterns"].items():
        found = _matches(names, pattern)
        if len(found) > 1:
            plan.problem = plan.problem or (f"{_glob_text(pattern)}: matches {len(found)} files "
                                            f"({', '.join(found[:3])})")
        elif found:
            plan.files[key] = folder / found[0]
    for key in REQUIRED:
        if key not in plan.files and plan.problem is None:
            expected = expected_name(case, variants[chosen]["patterns"][key])
            plan.problem = f"{expected}: missing"
    return plan


def _globs(pattern: str | Sequence[str] | None) -> list[str]:
    if pattern is None:
        return []
    return [pattern] if isinstance(pattern, str) else list(pattern)


def _matches(names: Sequence[str], pattern: str | Sequence[str] | None) -> list[str]:
    """File names matching the first glob of ``pattern`` that matches any (with extensions)."""
    import fnmatch

    for glob in _globs(pattern):
        found = [name for name in names
                 if any(name.endswith(ext) and fnmatch.fnmatchcase(name[:-len(ext)], glob)
                        for ext in NIFTI_EXTENSIONS)]
        if found:
            return found
    return []


def _glob_text(pattern: str | Sequence[str]) -> str:
    return " or ".join(f"{glob}.nii.gz" for glob in _globs(pattern))


def expected_name(case: str, pattern: str | Sequence[str]) -> str:
    first = _globs(pattern)[0]
    return (first.replace("*", case, 1) if first.startswith("*") else first) + ".nii.gz"


# ----------------------------------------------------------------------------- tumor labels


def resolve_tumor_labels(tumor_labels: str | Iterable[int] | None,
                         variant: Mapping[str, Any]) -> list[int]:
    """The label values that make the binary tumor mask.

    Args:
        tumor_labels: ``"enhancing"`` (default), ``"core"``, ``"whole"``, or label values.
        variant: the naming variant's table entry (its ``groups``).

    Returns:
        Sorted label values.
    """
    if tumor_labels is None:
        tumor_labels = "enhancing"
    if isinstance(tumor_labels, str):
        if tumor_labels in variant["groups"]:
            return sorted(variant["groups"][tumor_labels])
        try:
            return sorted(int(part) for part in tumor_labels.replace(",", " ").split())
        except ValueError as err:
            raise InputError("--tumor-labels", f"{tumor_labels!r}: expected "
                             f"{', '.join(TUMOR_LABEL_GROUPS)} or label numbers") from err
    values = sorted(int(v) for v in tumor_labels)
    if not values:
        raise InputError("--tumor-labels", "no label given")
    return values


__all__ = ["LAYOUTS", "NIFTI_EXTENSIONS", "PATTERN_KEYS", "REQUIRED", "TUMOR_LABEL_GROUPS",
           "CasePlan", "expected_name", "layout_spec", "plan_import", "resolve_tumor_labels",
           "subject_label"]
