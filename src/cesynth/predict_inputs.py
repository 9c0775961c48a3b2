"""A new patient's scans for ``cesynth predict``: which were given, the checks on them and on the
model's preprocessing, and their registration to the T1 (the reference space).

The T2 and the FLAIR are registered to the T1; the ADC is fitted from a DWI at b = 0, 500, 1000
(:mod:`cesynth.adc`) and carried by the DWI's b0 registration, or a given ADC (or MD) map is
brought to mm2/s from whichever unit it is in (:func:`cesynth.adc_maps.convert_adc_map_file`, as the
workflow does) and registered itself (:mod:`cesynth.registration`, seeded). :class:`StepTimer`
times the steps of a prediction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cesynth import __version__, adc_maps, brainmask, registration
from cesynth import adc as adc_fit
from cesynth.inference import Generator
from cesynth.io import InputError, load_checked_nifti
from cesynth.normalise import NORMALISERS, ModelGrid, normaliser_options
from cesynth.preprocessing import ADC_DEFAULTS, LEGACY_REFERENCE, read_record
from cesynth.release import CASCADE_TARGETS

PathLike = str | os.PathLike

_log = logging.getLogger("cesynth.predict")  # the step times log under the command's module


@dataclass(frozen=True)
class Scans:
    """A patient's raw scans: the T1 (required) and whichever of T2, ADC or DWI and FLAIR exist.

    Args:
        t1: the pre-contrast T1.
        t2: the T2, or None.
        adc: an ADC (or MD) map in mm2/s, 1e-3 or 1e-6 mm2/s or m2/s (detected), or None.
        dwi: a 4D DWI with b = 0, 500, 1000, or None (exclusive with ``adc``).
        bval: the DWI's FSL ``.bval`` (with ``dwi`` only).
        bvec: the DWI's FSL ``.bvec`` (with ``dwi`` only).
        flair: the FLAIR, or None.
    """

    t1: Path
    t2: Path | None = None
    adc: Path | None = None
    dwi: Path | None = None
    bval: Path | None = None
    bvec: Path | None = None
    flair: Path | None = None

    def files(self) -> list[Path]:
        """The given files, in field order."""
        return [p for p in asdict(self).values() if p is not None]


@dataclass(frozen=True)
class Preprocessing:
    """How a patient's images are brought to the model: as the model's training images were.

    Args:
        model_grid: the RAS ``(x, y, z)`` model grid.
        normalise: a :data:`cesynth.normalise.NORMALISERS` method.
        brainmask: the concrete :data:`cesynth.brainmask.CONCRETE_METHODS` method to run.
        normalise_options: the method's parameters (:func:`cesynth.normalise.normalise`).
        brainmask_reference: the image the training masks were computed from (``T1w`` or
            ``ceT1w``); prediction always masks the T1.
        adc: the ADC fit's ``b_values``, ``b_tolerance``, ``min_adc``, ``max_adc`` and
            ``weighting`` (:func:`cesynth.adc.fit_adc_file`).
        registration_seed: the registrations' random seed.
        overrides: what the caller chose against the record, by sidecar name
            (``{"Recorded": ..., "Used": ...}``).
        differences: what prediction cannot do as recorded and does otherwise, by sidecar name
            (``{"Recorded": ..., "Used": ..., "Why": ...}``).
        record: the model's preprocessing record (:func:`cesynth.preprocessing.read_record`).
    """

    model_grid: tuple[int, int, int]
    normalise: str
    brainmask: str
    normalise_options: Mapping[str, Any] = field(default_factory=dict)
    brainmask_reference: str = "T1w"
    adc: Mapping[str, Any] = field(default_factory=lambda: dict(ADC_DEFAULTS))
    registration_seed: int = 0
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    differences: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- checks


def check_scans(t1: PathLike | None, t2: PathLike | None = None, adc: PathLike | None = None,
                dwi: PathLike | None = None, bval: PathLike | None = None,
                bvec: PathLike | None = None, flair: PathLike | None = None) -> Scans:
    """Check which scans were given, that each exists and that each image's values are usable.

    Args:
        t1: the T1 (required).
        t2: the T2, or None.
        adc: an ADC map, or None.
        dwi: a DWI, or None; needs ``bval`` and ``bvec``; exclusive with ``adc``.
        bval: the DWI's ``.bval``.
        bvec: the DWI's ``.bvec``.
        flair: the FLAIR, or None.

    Returns:
        The scans as paths.

    Raises:
        InputError: no T1, both ADC and DWI, a DWI without its gradient files (or gradient
            files without a DWI), a file that does not exist, or an image that is unreadable,
            has a voxel size (pixdim) that is not positive or a voxel that is not finite.
    """
    if t1 is None:
        raise InputError("T1w", "the T1 is required")
    if adc is not None and dwi is not None:
        raise InputError(dwi, "give either an ADC map (--adc) or a DWI (--dwi), not both")
    if dwi is not None and (bval is None or bvec is None):
        raise InputError(dwi, "a DWI needs its --bval and --bvec files")
    if dwi is None and (bval is not None or bvec is not None):
        raise InputError(bval if bval is not None else bvec, "--bval/--bvec given without --dwi")
    scans = Scans(*(Path(p) if p is not None else None
                    for p in (t1, t2, adc, dwi, bval, bvec, flair)))
    for path in scans.files():
        if not path.is_file():
            raise InputError(path, "file not found")
    for image in (scans.t1, scans.t2, scans.adc, scans.dwi, scans.flair):
        if image is not None:
            load_checked_nifti(image)
    return scans


def check_cascade_files(cascade: Mapping[str, PathLike | None] | None, *,
                        use_cascade: bool = True) -> dict[str, Path]:
    """Check the cascade checkpoints given by hand (``--cascade-t2``, ``--cascade-adc``).

    Args:
        cascade: cascade target (``T2w``, ``adc``) -> checkpoint file, or None (not given).
        use_cascade: False when cascade models are turned off (``--no-cascade``).

    Returns:
        The given checkpoints by target, as paths.

    Raises:
        InputError: an unknown target, a file that does not exist, or checkpoints given with
            the cascade turned off.
    """
    given = {target: Path(p) for target, p in (cascade or {}).items() if p is not None}
    for target, path in given.items():
        if target not in CASCADE_TARGETS:
            raise InputError(f"cascade {target}", "unknown cascade target; expected one of "
                                                  f"{', '.join(CASCADE_TARGETS)}")
        if not path.is_file():
            raise InputError(path, "file not found")
    if given and not use_cascade:
        raise InputError("--no-cascade", "given with a cascade checkpoint (--cascade-t2 or "
                                         "--cascade-adc); choose one")
    return given


def resolve_preprocessing(generator: Generator, who: str, *,
                          model_grid: tuple[int, int, int] | None = None,
                          normalise: str | None = None,
                          brainmask_method: str | None = None,
                          seed: int | None = None) -> Preprocessing:
    """The preprocessing for a model: exactly its checkpoint's record, unless the caller
    overrides a setting explicitly (each override is recorded).

    The record's brain-mask method must be installed here; the T1's mask stands in for a
    CE-T1 mask (recorded as a difference: a new patient has no CE-T1); the registration method
    must be this cesynth's.

    Args:
        generator: the loaded model (its ``preprocessing`` comes from the checkpoint).
        who: names the model in errors.
        model_grid: overrides the recorded model grid.
        normalise: overrides the recorded normalisation method.
        brainmask_method: overrides the recorded brain-mask method (``auto``: the first
            installed).
        seed: overrides the recorded registration seed.

    Returns:
        The preprocessing to apply, with its overrides and differences.

    Raises:
        InputError: one line naming what differs: the grid or the normalisation is neither
            recorded nor given, or invalid; the recorded brain-mask method is not installed here
            (and no other was asked for); the inputs were registered with another method.
    """
    stored = read_record(generator.preprocessing)
    grid = model_grid if model_grid is not None else stored.get("model_grid")
    method = normalise if normalise is not None else stored.get("normalise")
    lacking = [name for name, value in (("model_grid", grid), ("normalise", method))
               if value is None]
    if lacking:
        what = ("has no preprocessing record" if not stored
                else f"has no {' or '.join(lacking)} in its preprocessing record")
        raise InputError(who, f"checkpoint {what} (written before it was stored?); pass the "
                              "model grid and normalisation used in training "
                              "(--model-grid X Y Z --normalise METHOD)")
    if method not in NORMALISERS:
        raise InputError(who, f"unknown normalisation {method!r}; expected one of "
                              f"{sorted(NORMALISERS)}")
    try:
        shape = ModelGrid(tuple(grid)).shape
    except (TypeError, ValueError) as err:
        raise InputError(who, f"invalid model grid {grid!r}") from err
    _check_registration_method(stored, who)
    overrides: dict[str, dict[str, Any]] = {}
    differences: dict[str, dict[str, Any]] = {}
    recorded_seed = int(stored.get("registration", {}).get("seed", 0))
    for name, recorded, used in (
            ("ModelGrid", stored.get("model_grid"), list(shape) if model_grid else None),
            ("Normalisation", stored.get("normalise"), normalise),
            ("RegistrationSeed", recorded_seed, seed)):
        if used is not None and recorded is not None and _plain(recorded) != _plain(used):
            overrides[name] = {"Recorded": _plain(recorded), "Used": _plain(used)}
    options = (stored.get("normalise_options") or {}) if method == stored.get("normalise") else {}
    mask_method = _brainmask_method(stored.get("brainmask"), brainmask_method, who, overrides,
                                    differences)
    reference = stored.get("brainmask_reference", LEGACY_REFERENCE)
    if reference != "T1w":
        differences["BrainMaskReference"] = {
            "Recorded": reference, "Used": "T1w",
            "Why": "a new patient has no CE-T1; the brain mask is computed from the T1"}
    version = stored.get("cesynth_version")
    if version != __version__:
        differences["CesynthVersion"] = {"Recorded": version, "Used": __version__,
                                         "Why": "the model was prepared by another cesynth"
                                                if version else "not recorded (old checkpoint)"}
    return Preprocessing(
        shape, str(method), mask_method, normalise_options=normaliser_options(method, options),
        brainmask_reference=reference, adc={**ADC_DEFAULTS, **stored.get("adc", {})},
        registration_seed=recorded_seed if seed is None else int(seed), overrides=overrides,
        differences=differences, record=stored)


def _brainmask_method(recorded: str | None, requested: str | None, who: str,
                      overrides: dict[str, dict[str, Any]],
                      differences: dict[str, dict[str, Any]]) -> str:
    """The concrete brain-mask method to run: the recorded one, or the caller's override."""
    if requested is not None:
        used = _installed(requested)
        if recorded is not None and used != recorded:
            overrides["BrainMaskMethod"] = {"Recorded": recorded, "Used": used}
        return used
    if recorded in brainmask.DECLARED_METHODS:
        what = ("their nonzero region" if recorded == "nonzero"
                else "the dataset's own brain masks")
        raise InputError(who, f"the model was trained on images declared skull-stripped (brain "
                              f"masks: {what}); give skull-stripped scans and pass "
                              "--brainmask-method nonzero, or pass --brainmask-method METHOD "
                              "to extract the brain (the sidecar records the override)")
    if recorded in (None, "auto"):  # a format-1 record: the method was resolved in training
        used = _installed("auto")
        differences["BrainMaskMethod"] = {
            "Recorded": recorded or "not recorded", "Used": used,
            "Why": "the checkpoint does not say which method ran in training"}
        return used
    if recorded not in brainmask.CONCRETE_METHODS:
        raise InputError(who, f"unknown brain-mask method {recorded!r} in its preprocessing "
                              "record")
    if recorded not in brainmask.available_methods():
        raise InputError(who, f"the model was trained on {recorded} brain masks and {recorded} "
                              "is not installed here; install it, or pass --brainmask-method "
                              "METHOD to predict with another method (the sidecar records the "
                              "override)")
    return recorded


def _plain(value: Any) -> Any:
    """A record value as JSON holds it (tuples as lists)."""
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _installed(method: str) -> str:
    try:
        return brainmask.resolve_method(method)
    except brainmask.MethodError as err:
        raise InputError(err.who, err.problem) from err


def _check_registration_method(record: Mapping[str, Any], who: str) -> None:
    """Refuse a model whose inputs were registered with another method than this cesynth's."""
    recorded = {k: v for k, v in record.get("registration", {}).items() if k != "seed"}
    if not recorded:
        return  # a format-1 record: registration was not recorded
    here = registration.method_record()
    differing = [key for key in sorted(set(recorded) | set(here))
                 if recorded.get(key) != here.get(key)]
    if differing:
        key = differing[0]
        raise InputError(who, f"the model's inputs were registered with {key} = "
                              f"{recorded.get(key)!r}, this cesynth {__version__} registers with "
                              f"{here.get(key)!r}; predict with cesynth "
                              f"{record.get('cesynth_version')}")


# ---------------------------------------------------------------- registration to the T1


def lacking_inputs(scans: Scans, wanted: Sequence[str]) -> list[str]:
    """The model's inputs the patient lacks (not acquired), in model order."""
    acquired = {"T1w", *_anatomical(scans), *(["adc"] if adc_source(scans) is not None else [])}
    return [m for m in wanted if m not in acquired]


def _anatomical(scans: Scans) -> dict[str, Path]:
    """The given images registered to the T1 as they are (T2, FLAIR), by modality."""
    images = {"T2w": scans.t2, "FLAIR": scans.flair}
    return {modality: path for modality, path in images.items() if path is not None}


def register_inputs(scans: Scans, wanted: Sequence[str], work: Path, timer: StepTimer, *,
                    threads: int, seed: int, adc: Mapping[str, Any] | None = None,
                    coregistered: bool = False) -> tuple[dict[str, Path], dict[str, Any]]:
    """The model's inputs on the T1 grid: the T1 itself, the T2, FLAIR and ADC registered to it.

    Inputs the model does not take are neither registered nor returned. A DWI's ADC is fitted
    with ``adc`` (the model's recorded ``b_values``, ``b_tolerance``, ``min_adc``, ``max_adc``,
    ``weighting``; default :data:`cesynth.preprocessing.ADC_DEFAULTS`). ``coregistered``: the
    inputs are declared on the T1's grid and aligned (a published cohort such as BraTS, as
    ``ingest.coregistered``): checked to be on it and copied, not registered.

    Returns:
        ``(modality -> path on the T1 grid, modality -> MI before and after registration)``.
    """
    native: dict[str, Path] = {"T1w": scans.t1}
    info: dict[str, Any] = {}
    for modality, path in _anatomical(scans).items():
        if modality not in wanted:
            continue
        native[modality] = work / f"{modality}_space-T1w.nii.gz"
        xfm = work / f"from-{modality}_to-T1w_xfm.mat"
        with timer(f"register_{modality}"):
            info[modality] = _mi(
                _declared_on_t1_grid(scans.t1, path, native[modality], xfm) if coregistered
                else registration.register_to_reference(scans.t1, path, native[modality], xfm,
                                                        threads=threads, seed=seed))
    if adc_source(scans) is not None and "adc" in wanted:
        native["adc"] = work / "adc_space-T1w.nii.gz"
        info["adc"] = _register_adc(scans, native["adc"], work, timer, threads=threads,
                                    seed=seed, settings={**ADC_DEFAULTS, **(adc or {})},
                                    coregistered=coregistered)
    return native, info


def _declared_on_t1_grid(t1: Path, image: Path, out_path: Path,
                         xfm: Path) -> registration.RegistrationResult:
    """``--coregistered``: the image checked to lie on the T1's grid and copied there."""
    return registration.identity_to_reference(
        t1, image, out_path, xfm, reference="the T1",
        hint="--coregistered declares every input on the T1's grid; leave it out to register")


def adc_source(scans: Scans) -> str | None:
    """``"dwi"`` (fitted), ``"adc"`` (given) or None (missing)."""
    return "dwi" if scans.dwi is not None else "adc" if scans.adc is not None else None


def unused_inputs(scans: Scans, wanted: Sequence[str]) -> list[str]:
    """The given scans (T2, ADC, FLAIR) the model does not take."""
    given = {"T2w": scans.t2 is not None, "adc": adc_source(scans) is not None,
             "FLAIR": scans.flair is not None}
    return [m for m, present in given.items() if present and m not in wanted]


def _register_adc(scans: Scans, out_path: Path, work: Path, timer: StepTimer, *,
                  threads: int, seed: int, settings: Mapping[str, Any],
                  coregistered: bool = False) -> dict[str, Any]:
    """Bring the ADC to the T1 grid: fitted from the DWI and carried by its b0, or a given map
    brought to mm2/s (:func:`cesynth.adc_maps.convert_adc_map_file`, the workflow's conversion, with
    the model's clip limits) and registered itself; ``coregistered``: the map checked to lie on
    the T1's grid and copied."""
    if scans.dwi is None:
        given = work / "adc_mm2s.nii.gz"
        with timer("convert_adc"):
            stats = adc_maps.convert_adc_map_file(scans.adc, given, min_adc=settings["min_adc"],
                                                 max_adc=settings["max_adc"])
        xfm = work / "from-adc_to-T1w_xfm.mat"
        with timer("register_adc"):
            return {**_mi(
                _declared_on_t1_grid(scans.t1, given, out_path, xfm) if coregistered
                else registration.register_adc_map_to_reference(scans.t1, given, out_path, xfm,
                                                                threads=threads, seed=seed)),
                "source": stats.source, "unit": stats.unit,
                "unit_conversion": stats.unit_conversion}
    dwi_adc = work / "adc.nii.gz"
    with timer("fit_adc"):
        stats = adc_fit.fit_adc_file(
            scans.dwi, scans.bval, scans.bvec, dwi_adc, required_b=settings["b_values"],
            b_tolerance=settings["b_tolerance"], min_adc=settings["min_adc"],
            max_adc=settings["max_adc"], weighting=settings["weighting"],
            accept_b=settings["required_b_values"])
    xfm = work / "from-dwi_to-T1w_xfm.mat"
    with timer("register_dwi"):
        return {**_mi(
            _declared_on_t1_grid(scans.t1, dwi_adc, out_path, xfm) if coregistered
            else registration.register_dwi_to_reference(scans.t1, scans.dwi, scans.bval, dwi_adc,
                                                        out_path, xfm, threads=threads,
                                                        seed=seed)),
            "b_values": [float(b) for b in stats.b_values],
            "preferred_shells": stats.preferred_shells}


def _mi(result: registration.RegistrationResult) -> dict[str, float]:
    return {"mi_before": result.mi_before, "mi_after": result.mi_after}


# ---------------------------------------------------------------- helpers


class StepTimer:
    """Wall-clock seconds per named step."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._steps: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._steps[step] = round(time.perf_counter() - start, 3)
            _log.info("%s: %.1f s", step, self._steps[step])

    def seconds(self) -> dict[str, float]:
        return {**self._steps, "total": round(time.perf_counter() - self._started, 3)}


__all__ = ["PathLike", "Preprocessing", "Scans", "StepTimer", "adc_source",
           "check_cascade_files", "check_scans", "lacking_inputs",
           "register_inputs", "resolve_preprocessing", "unused_inputs"]
