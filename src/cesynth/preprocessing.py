"""The preprocessing record: everything that shaped a model's inputs, resolved, in its checkpoint.

Training stores one record in every checkpoint (``checkpoint["preprocessing"]``, and so in the
logged and released model); ``cesynth predict`` applies exactly that record to a new patient
(:func:`cesynth.predict_inputs.resolve_preprocessing`). :func:`preprocessing_record` builds it
from the workflow's settings (:func:`requested_settings`) and the brain-mask sidecars of the
training subjects, which say what actually ran (``auto`` resolved to ``fsl``, ``deepbet`` or
``bet-python``). Its keys (format 2):

* ``model_grid`` ``[x, y, z]``, ``orientation`` (``RAS``) and ``slice_axis`` (2, axial): the
  model grid (:mod:`cesynth.normalise`).
* ``normalise`` (the method) and ``normalise_options`` (every parameter of the method, defaults
  spelled out, :func:`cesynth.normalise.normaliser_options`).
* ``brainmask`` (the method that ran on every training subject), ``brainmask_requested`` (the
  configured one, e.g. ``auto``) and ``brainmask_reference``: the image the masks were computed
  from, ``ceT1w`` (the paper's choice) or ``T1w`` (the T1 registered to the CE-T1 grid). For a
  dataset declared skull-stripped (``ingest.skull_stripped``) ``brainmask_requested`` is
  ``skull-stripped`` and ``brainmask`` is ``nonzero`` (the nonzero region) or ``provided`` (the
  dataset's own masks): no brain extraction ran, and predict refuses such a model unless told
  the new scans are skull-stripped too (``--brainmask-method nonzero``).
* ``adc``: ``b_values``, ``b_tolerance`` (s/mm2), ``min_adc``, ``max_adc`` (mm2/s, the clip
  limits) and ``weighting`` of the fit (:func:`cesynth.adc.fit_adc_file`), and, for a model
  that takes (or synthesizes) the ADC and was given the training subjects' ADC QC rows,
  ``shells_used``: the shells their ADC was fitted from (``0/500/1000``, ``0/1000``) or a given
  map's source -> number of subjects (:func:`cesynth.adc_qc.shells_used`).
* ``modalities`` (the model's input order) and ``target``.
* ``registration``: ``seed`` and the method (:func:`cesynth.registration.method_record`).
* ``cesynth_version``: the package that made the record.

Checkpoints written before format 2 hold only ``model_grid``, ``normalise`` and ``brainmask``
(the configured method, often ``auto``); they load as before, and :func:`read_record` fills in
what the workflow did then: masks from the CE-T1, the ADC defaults, registration seed 0.

This module imports neither torch nor ANTs at import time (the workflow's rule files import it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cesynth import __version__, adc_qc
from cesynth.brainmask import (
    CONCRETE_METHODS,
    DECLARED_METHODS,
    METHODS,
    REFERENCES,
    SKULL_STRIPPED,
)
from cesynth.io import InputError, read_json
from cesynth.normalise import SATURATION_MIN_SHARE, SLICE_AXIS, normaliser_options

PathLike = str | os.PathLike

RECORD_FORMAT = 2
"""Version of the record's layout; records without ``format`` are format 1 (before this module)."""

ADC_DEFAULTS: dict[str, Any] = {"b_values": [0.0, 500.0, 1000.0], "b_tolerance": 50.0,
                                "min_adc": 0.0, "max_adc": 4e-3, "weighting": "shell",
                                "required_b_values": [0.0]}
"""The ADC fit's settings when a record does not hold them (those every version has used;
``required_b_values`` [0], b = 0 plus any other shell, since issue 24: records before it
required ``b_values`` all)."""

LEGACY_REFERENCE = "ceT1w"
"""The image the training masks of a format-1 record were computed from (the CE-T1, always)."""

LEGACY_REGISTRATION_SEED = 0

LEGACY_SATURATION = {"saturation": "keep"}
"""How records written before the ``saturation`` option normalised: every voxel kept."""

_NAMES_SHOWN = 3  # files named per method in an error, then "and N more"


def requested_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The workflow config's settings that shape a model's inputs (the training rules' params).

    Args:
        config: the workflow config (``model_grid``, ``normalise``, ``brainmask``, ``ingest``,
            ``adc``, ``registration``).

    Returns:
        ``model_grid``, ``normalise``, ``brainmask`` (the configured method, or
        ``skull-stripped`` when ``ingest.skull_stripped`` declares the dataset so),
        ``brainmask_reference``, ``adc`` (b-values, tolerance, clip limits) and
        ``registration`` (its seed): the input of :func:`preprocessing_record`.
    """
    ingest, adc = config["ingest"], config["adc"]
    skull_stripped = bool(ingest.get("skull_stripped", False))
    return {
        "model_grid": [int(n) for n in config["model_grid"]["shape"]],
        "normalise": config["normalise"]["method"],
        "normalise_options": normalise_image_options(config["normalise"]),
        "brainmask": SKULL_STRIPPED if skull_stripped else config["brainmask"]["method"],
        "brainmask_reference": config["brainmask"]["reference"],
        "adc": {"b_values": [float(b) for b in ingest["b_values"]],
                "required_b_values": [float(b) for b in ingest.get("required_b_values", [0])],
                "b_tolerance": float(ingest["b_tolerance"]),
                "min_adc": float(adc["min_adc"]), "max_adc": float(adc["max_adc"])},
        "registration": {"seed": int(config["registration"]["seed"])},
    }


def normalise_image_options(normalise: Mapping[str, Any]) -> dict[str, Any]:
    """The normalisation's options beyond its method from config ``normalise`` (what the
    workflow's normalisation applies and the record stores); absent keys take the defaults."""
    return {"bias_correction": normalise.get("bias_correction", "none"),
            "saturation": normalise.get("saturation", "exclude"),
            "saturation_min_share": float(normalise.get("saturation_min_share",
                                                        SATURATION_MIN_SHARE))}


def preprocessing_record(
    requested: Mapping[str, Any],
    *,
    modalities: Sequence[str],
    target: str = "ceT1w",
    mask_sidecars: Sequence[PathLike] = (),
    adc_qc_rows: Sequence[PathLike] = (),
) -> dict[str, Any]:
    """The resolved preprocessing record of a model trained on images made with ``requested``.

    Args:
        requested: :func:`requested_settings` (absent ``adc``, ``registration`` or
            ``brainmask_reference`` entries take the defaults: :data:`ADC_DEFAULTS`, seed 0,
            ``ceT1w``).
        modalities: the model's inputs, in its order.
        target: what the model synthesizes.
        mask_sidecars: the brain-mask sidecars (:func:`cesynth.brainmask.mask_sidecar`) of the
            subjects the training reads; they resolve ``auto`` to the method that ran.
        adc_qc_rows: the ADC QC rows (:func:`cesynth.adc_qc.write_qc_row`) of those subjects;
            for a model that takes (or synthesizes) the ADC they give ``adc.shells_used``.

    Returns:
        The record (see the module docstring), JSON-ready.

    Raises:
        InputError: the training subjects were masked by different methods or from different
            images, or not as ``requested`` says; an unknown normalisation; ``auto`` with no
            sidecar to resolve it; an ADC QC row that is not one.
    """
    from cesynth import registration  # ANTs: only when a record is made

    method = requested["normalise"]
    masks = resolve_training_masks(mask_sidecars, requested["brainmask"],
                                   requested.get("brainmask_reference", LEGACY_REFERENCE))
    adc = {**ADC_DEFAULTS, **dict(requested.get("adc") or {})}
    seed = int((requested.get("registration") or {}).get("seed", LEGACY_REGISTRATION_SEED))
    shells = ({"shells_used": adc_qc.shells_used(adc_qc_rows)}
              if "adc" in (*modalities, target) and adc_qc_rows else {})
    return {
        "format": RECORD_FORMAT,
        "model_grid": [int(n) for n in requested["model_grid"]],
        "orientation": "RAS",
        "slice_axis": SLICE_AXIS,
        "normalise": method,
        "normalise_options": normaliser_options(method, requested.get("normalise_options")),
        "brainmask": masks["method"],
        "brainmask_requested": requested["brainmask"],
        "brainmask_reference": masks["reference"],
        "adc": {"b_values": [float(b) for b in adc["b_values"]],
                "b_tolerance": float(adc["b_tolerance"]), "min_adc": float(adc["min_adc"]),
                "max_adc": float(adc["max_adc"]), "weighting": str(adc["weighting"]),
                "required_b_values": [float(b) for b in adc["required_b_values"]], **shells},
        "modalities": list(modalities),
        "target": target,
        "registration": {"seed": seed, **registration.method_record()},
        "cesynth_version": __version__,
    }


def resolve_training_masks(mask_sidecars: Sequence[PathLike], requested_method: str,
                           reference: str) -> dict[str, str]:
    """The one brain-mask method and reference image of the training subjects, from their sidecars.

    Args:
        mask_sidecars: one sidecar per subject (``Method``, ``Reference``); empty: the requested
            method must then be a concrete one.
        requested_method: the configured method (a :data:`cesynth.brainmask.METHODS` name), or
            :data:`cesynth.brainmask.SKULL_STRIPPED` (then the sidecars must name one of
            :data:`cesynth.brainmask.DECLARED_METHODS`).
        reference: the configured reference image (a :data:`cesynth.brainmask.REFERENCES` kind).

    Returns:
        ``{"method": ..., "reference": ...}``.

    Raises:
        InputError: the subjects differ in method or reference, or disagree with the request.
    """
    declared = requested_method == SKULL_STRIPPED
    if requested_method not in METHODS and not declared:
        raise InputError("brainmask.method", f"unknown method {requested_method!r}")
    if reference not in REFERENCES:
        raise InputError("brainmask.reference", f"unknown reference {reference!r}; expected one "
                                                f"of {', '.join(REFERENCES)}")
    if not mask_sidecars:
        if requested_method not in CONCRETE_METHODS + ("nonzero",):
            raise InputError("brain masks", f"method {requested_method!r} cannot be resolved "
                                            "without the training subjects' mask sidecars")
        return {"method": requested_method, "reference": reference}
    sidecars = {Path(p).name: read_json(p) for p in mask_sidecars}
    method = _the_one("Method", sidecars, "masked by different methods")
    found_reference = _the_one("Reference", sidecars, "masked from different images")
    if declared and method not in DECLARED_METHODS:
        raise InputError("brain masks", f"the training subjects were masked with {method}, "
                                        "but ingest.skull_stripped declares the dataset "
                                        "skull-stripped (masks nonzero or provided)")
    if not declared and method in DECLARED_METHODS:
        raise InputError("brain masks", f"the training subjects' masks are {method} (declared "
                                        "skull-stripped), but ingest.skull_stripped is false")
    if not declared and requested_method != "auto" and method != requested_method:
        raise InputError("brain masks", f"the training subjects were masked with {method}, "
                                        f"not {requested_method} as brainmask.method says")
    if found_reference != reference:
        raise InputError("brain masks", f"the training subjects were masked from "
                                        f"{found_reference}, not {reference} as "
                                        "brainmask.reference says")
    return {"method": method, "reference": reference}


def _the_one(key: str, sidecars: Mapping[str, Mapping[str, Any]], problem: str) -> str:
    groups: dict[str, list[str]] = {}
    for name, sidecar in sidecars.items():
        if key not in sidecar:
            raise InputError(name, f"brain-mask sidecar has no {key}")
        groups.setdefault(str(sidecar[key]), []).append(name)
    if len(groups) == 1:
        return next(iter(groups))
    listed = "; ".join(f"{value}: {_names(names)}" for value, names in sorted(groups.items()))
    raise InputError("brain masks", f"the training subjects were {problem} ({listed}); remask "
                                    "them all with one setting before training")


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def read_record(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """A checkpoint's record with every key present: format 1 records get what the workflow did.

    Args:
        stored: ``checkpoint["preprocessing"]`` (may be empty or partial for old checkpoints).

    Returns:
        A copy; for a record without ``format``: ``format`` 1, ``brainmask_reference``
        :data:`LEGACY_REFERENCE`, ``adc`` :data:`ADC_DEFAULTS`, ``registration`` with seed 0 (no
        method: it was not recorded), ``normalise_options`` the method's defaults and
        ``cesynth_version`` None; normalisation options without ``saturation`` (every record
        before it) get ``saturation: keep``, what they did. Keys it lacks (``model_grid``,
        ``normalise``, ``brainmask``) stay absent. An empty record stays empty.
    """
    record = _saturation_as_before(dict(stored or {}))
    if not record or record.get("format", 1) >= RECORD_FORMAT:
        return record
    legacy: dict[str, Any] = {
        "format": 1,
        "brainmask_reference": LEGACY_REFERENCE,
        "adc": dict(ADC_DEFAULTS),
        "registration": {"seed": LEGACY_REGISTRATION_SEED},
        "cesynth_version": None,
    }
    method = record.get("normalise")
    if method is not None:
        try:
            legacy["normalise_options"] = normaliser_options(method, LEGACY_SATURATION)
        except InputError:
            pass  # an unknown method is refused where it is applied
    return {**legacy, **record}


def _saturation_as_before(record: dict[str, Any]) -> dict[str, Any]:
    """A record whose normalisation options predate ``saturation`` kept saturated voxels."""
    options = record.get("normalise_options")
    if isinstance(options, Mapping) and "saturation" not in options:
        record["normalise_options"] = {**options, **LEGACY_SATURATION}
    return record


__all__ = ["ADC_DEFAULTS", "LEGACY_REFERENCE", "LEGACY_SATURATION", "RECORD_FORMAT",
           "normalise_image_options", "preprocessing_record",
           "read_record", "requested_settings", "resolve_training_masks"]
