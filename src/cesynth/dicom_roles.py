"""Which DICOM series of a subject is the T1w, CE-T1, T2w, FLAIR, DWI or ADC map, from its tags.

Clinical exports do not name their series for us: pre- and post-contrast T1 share one
SeriesDescription, a 3D post-contrast T1 has no contrast word, FLAIR is called ``T2W_FLAIR``, the
scanner adds trace, ADC and registered DWI series beside the DWI. So a series' role is read from
its DICOM tags first and its description second (FIELD-NOTES, "Real scans"):

1. **Kind** (:func:`classify`): localizers (ImageType LOCALIZER, survey/scout names), SWI/T2*
   (ImageType SWI/MNIP/PHASE, gradient echo with a long TE), BOLD/perfusion/angiography are
   *other*; an ADC map is ImageType ADC (Siemens DERIVED, Philips ORIGINAL/PRIMARY/ADC) or an
   ADC description; trace, exponential ADC, FA, MIP/projection, reformats, registered and other
   DERIVED series are *derived* and never the DWI; the DWI is an original series with two or
   more b-values. Anatomy is weighted from InversionTime, EchoTime and RepetitionTime (TI >= 1400
   ms: FLAIR; TI 300-1400 ms: T1; TE >= 60 and TR >= 1500 ms: T2; TE <= 30 and TR <= 1200 ms:
   T1); only where those are not decisive does the description decide (FLAIR before T2, so
   ``T2W_FLAIR`` is FLAIR). FLAIR is never the T2w.
2. **Pre or post contrast** (:func:`contrast_phases`), for the anatomical series:
   ContrastBolusAgent / ContrastBolusStartTime where any series carries them; else the order of
   acquisition: a protocol acquired twice (same sequence, weighting, orientation, matrix and
   voxel size) brackets the injection, which is placed after the last first acquisition of any
   repeated protocol, and every series acquired after that point is post-contrast; else a
   contrast word in the description (``ingest.dicom_series_patterns.ceT1w``). A description
   contradicting the order leaves the series undecided. With no sign of contrast at all, a lone
   T1 series is the pre-contrast T1.
3. **Choice** (:func:`assign_roles`): per role the candidates are ranked by pre-contrast (T2w,
   FLAIR), the preferred acquisition (``ingest.dicom_prefer``: 3D or 2D), finer voxels, then
   larger coverage; DWI by having the preferred shells (``ingest.b_values``). When the best two
   tie, or a T1 series' phase cannot be told, the subject stops with one line naming the
   candidates by SeriesNumber and the override (``--series ROLE=N``, config
   ``ingest.dicom_series``) that settles it. Never a silent first match.

Every series gets a row (:func:`series_table`): number, description, acquisition time (time of day
only, no date), kind, role, decision and the signals behind it. Nothing identifying is read into
it (no names, IDs, dates or UIDs).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cesynth.io import InputError

ROLES = ("T1w", "ceT1w", "T2w", "FLAIR", "DWI", "ADC")
"""The roles a series can be chosen for (anything else is ``derived`` or ``other``)."""
PREFER_CHOICES = ("3d", "2d")
DEFAULT_PREFER = "3d"

DEFAULT_SERIES_PATTERNS: dict[str, str] = {
    "ceT1w": r"(post|\+c|gad|gd|contrast|ce[-_ ]?t1)",
    "T1w": r"(t1|mprage|spgr|bravo)",
    "T2w": r"t2(?!\*)",
    "dwi": r"(dwi|diff|trace|dti)",
}
"""Description patterns (``ingest.dicom_series_patterns``): one signal among the tags."""

DEFAULT_ROLE_PATTERNS: dict[str, str] = {
    "FLAIR": r"(flair|dark[-_ ]?fluid|tirm)",
    "adc": r"((^|[^a-z])d?adc([^a-z]|$)|apparent[-_ ]?diff)",
}
"""Description patterns besides ``ingest.dicom_series_patterns`` (which may override them)."""

_LOCALIZER = re.compile(r"(locali[sz]er|scout|survey|3[-_ ]?plane|tri[-_ ]?pilot|aahead|"
                        r"smartbrain|calibration|ref(erence)?[-_ ]?scan|sense[-_ ]?ref|"
                        r"(^|[^a-z])(loc|cal)([^a-z]|$))", re.IGNORECASE)
_SWI = re.compile(r"(swi|swan|susc|veno|t2\*|t2star|hemo|merge|medic|(^|[^a-z])pha(se)?"
                  r"([^a-z]|$)|mnip|min[-_ ]?ip)", re.IGNORECASE)
_FUNCTIONAL = re.compile(r"(bold|fmri|rest(ing)?[-_ ]?state|(^|[^a-z])task|perf|(^|[^a-z])dsc"
                         r"|(^|[^a-z])dce|(^|[^a-z])p?c?asl([^a-z]|$)|(^|[^a-z])tof|angio|mra"
                         r"([^a-z]|$)|spectro|(^|[^a-z])(svs|csi|mrs)([^a-z]|$))", re.IGNORECASE)
_REGISTERED = re.compile(r"((^|[^a-z])reg([^a-z]|$)|registered)", re.IGNORECASE)
_DERIVED_DIFFUSION = re.compile(r"(trace|(^|[^a-z])e[-_ ]?adc|exp(onential)?[-_ ]?adc|"
                                r"(^|[^a-z])fa([^a-z]|$)|isotropic|tensor|calc)", re.IGNORECASE)
# ImageType values (DICOM PS3.3 C.8.16.1 and vendor values) that make a series derived data
_DERIVED_TOKENS = {
    "TRACEW": "trace", "TRACE": "trace", "ISOTROPIC": "isotropic (trace)", "EADC": "exp. ADC",
    "EXP": "exp. ADC", "FA": "FA map", "TENSOR": "tensor", "COLFA": "FA map",
    "CALC_BVALUE": "computed b-value", "MOCO": "motion corrected", "PROJECTION IMAGE": "MIP",
    "MIP": "MIP", "MPR": "reformat", "REFORMATTED": "reformat", "SUBTRACTION": "subtraction",
    "SUB": "subtraction", "MNIP": "minIP", "SYNTHETIC": "synthetic",
}
_SWI_TOKENS = {"SWI", "MNIP", "PHASE", "P", "FILTERED_PHASE", "PHASE MAP", "R2STAR", "T2_STAR"}
_PRIVATE_B_VALUES = (
    (0x0019, 0x100C),  # Siemens
    (0x0043, 0x1039),  # GE: first value, sometimes offset by 1e9
    (0x2001, 0x1003),  # Philips
)


# --------------------------------------------------------------------------- series headers


@dataclass
class SeriesInfo:
    """What a subject's DICOM files say about one of its series (no identifying field kept)."""

    key: str
    uid: str
    number: int | None
    description: str
    files: list[Path] = field(default_factory=list)
    acquired: datetime | None = None
    image_type: tuple[str, ...] = ()
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    acquisition_type: str = ""
    tr_ms: float | None = None
    te_ms: float | None = None
    ti_ms: float | None = None
    b_values: tuple[float, ...] = ()
    contrast_agent: str = ""
    contrast_start: datetime | None = None
    orientation: str = ""
    matrix: tuple[int, int] = (0, 0)
    voxel_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    n_slices: int = 0
    n_volumes: int = 1
    manufacturer: str = ""

    @property
    def label(self) -> str:
        """``12 (T1W_3D_TFE)``: how an error names the series (no time of day, as no
        output carries one)."""
        number = "?" if self.number is None else str(self.number)
        return f"{number} ({self.description or 'no description'})"

    def time_after(self, start: Any) -> str:
        """``+00:12:31``: when it was acquired after ``start`` (the study's first series), so
        the order is recorded without the time of day."""
        if not self.acquired or start is None:
            return ""
        seconds = int((self.acquired - start).total_seconds())
        return f"+{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.voxel_mm))

    @property
    def coverage_mm(self) -> float:
        return self.n_slices * self.voxel_mm[2]

    def protocol(self) -> tuple:
        """What makes two acquisitions the same protocol: sequence, weighting tags, orientation,
        matrix and voxel size (not the description: pre and post may be named apart)."""
        def rounded(value: float | None) -> float | None:
            return None if value is None else float(f"{value:.2g}")
        return (self.scanning_sequence, self.sequence_variant, self.acquisition_type,
                rounded(self.tr_ms), rounded(self.te_ms), rounded(self.ti_ms), self.orientation,
                self.matrix, tuple(round(v, 1) for v in self.voxel_mm))


def read_series(subject_dir: str | os.PathLike) -> list[SeriesInfo]:
    """Read the headers of every DICOM file under ``subject_dir``, grouped into series.

    Args:
        subject_dir: the subject's folder (any depth, any names; non-DICOM files skipped).

    Returns:
        The series in acquisition order (time, then SeriesNumber).
    """
    import pydicom
    import pydicom.errors

    groups: dict[str, SeriesInfo] = {}
    headers: dict[str, list[Any]] = {}
    for path in sorted(p for p in Path(subject_dir).rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
            continue
        number = _int(ds.get("SeriesNumber"))
        description = str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "")).strip()
        uid = str(ds.get("SeriesInstanceUID", "")) or f"{number}:{description}"
        if uid not in groups:
            groups[uid] = SeriesInfo(key=uid, uid=uid, number=number, description=description)
            headers[uid] = []
        groups[uid].files.append(path)
        headers[uid].append(ds)
    series = [_summarise(groups[uid], headers[uid]) for uid in groups]
    return sorted(series, key=_order_key)


def _order_key(info: SeriesInfo) -> tuple:
    # the acquisition time orders; the SeriesNumber breaks ties and orders series without a time
    time = info.acquired.timestamp() if info.acquired else math.inf
    return (time, info.number if info.number is not None else 10**9, info.description)


def _summarise(info: SeriesInfo, headers: list[Any]) -> SeriesInfo:
    first = headers[0]
    shared = _functional_groups(first)
    info.image_type = tuple(str(v).upper().strip() for v in _values(first.get("ImageType")))
    info.scanning_sequence = tuple(str(v).upper() for v in _values(first.get("ScanningSequence")))
    info.sequence_variant = tuple(str(v).upper() for v in _values(first.get("SequenceVariant")))
    info.acquisition_type = str(first.get("MRAcquisitionType", "") or "").upper()
    info.tr_ms = _float(first.get("RepetitionTime")) or _float(shared.get("RepetitionTime"))
    info.te_ms = _float(first.get("EchoTime")) or _float(shared.get("EffectiveEchoTime"))
    info.ti_ms = _float(first.get("InversionTime")) or _float(shared.get("InversionTimes"))
    info.manufacturer = str(first.get("Manufacturer", "") or "")
    times = [t for t in (_acquired(ds) for ds in headers) if t is not None]
    info.acquired = min(times) if times else None
    agents = {str(ds.get("ContrastBolusAgent", "") or "").strip() for ds in headers}
    info.contrast_agent = next((a for a in sorted(agents) if a), "")
    starts = [t for t in (_time_of(ds, "ContrastBolusStartTime", "AcquisitionDate")
                          for ds in headers) if t is not None]
    info.contrast_start = min(starts) if starts else None
    b_values = {b for ds in headers for b in _b_values(ds)}
    info.b_values = tuple(sorted(b_values))
    orientation = first.get("ImageOrientationPatient") or shared.get("ImageOrientationPatient")
    info.orientation = _orientation(orientation)
    info.matrix = (_int(first.get("Rows")) or 0, _int(first.get("Columns")) or 0)
    spacing = first.get("PixelSpacing") or shared.get("PixelSpacing") or (0, 0)
    thickness = (_float(first.get("SpacingBetweenSlices")) or _float(first.get("SliceThickness"))
                 or _float(shared.get("SliceThickness")) or 0.0)
    info.voxel_mm = (float(spacing[0]), float(spacing[1]), float(thickness))
    positions = {tuple(round(float(v), 2) for v in ds.get("ImagePositionPatient", ()) or ())
                 for ds in headers}
    frames = sum(_int(ds.get("NumberOfFrames")) or 1 for ds in headers)
    info.n_slices = max(len(positions), 1) if len(headers) > 1 else frames
    info.n_volumes = max(1, round(frames / max(info.n_slices, 1)))
    temporal = _int(first.get("NumberOfTemporalPositions"))
    if temporal and temporal > info.n_volumes:
        info.n_volumes = temporal
    return info


def _functional_groups(ds: Any) -> dict[str, Any]:
    """The shared (else first per-frame) functional-group values of an enhanced MR file."""
    found: dict[str, Any] = {}
    for groups_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(groups_name)
        if not groups:
            continue
        for group in groups[0]:
            if getattr(group, "VR", "") != "SQ" or not group.value:
                continue
            for element in group.value[0]:
                if element.VR != "SQ":
                    found.setdefault(element.keyword, element.value)
    return found


def _b_values(ds: Any) -> list[float]:
    values = []
    standard = ds.get((0x0018, 0x9087))
    if standard is not None and standard.value is not None:
        values.append(float(standard.value))
    for frame in ds.get("PerFrameFunctionalGroupsSequence", None) or ():
        for diffusion in frame.get("MRDiffusionSequence", None) or ():
            if "DiffusionBValue" in diffusion:
                values.append(float(diffusion.DiffusionBValue))
    if values:
        return values
    for tag in _PRIVATE_B_VALUES:
        element = ds.get(tag)
        if element is None or element.value in (None, b""):
            continue
        value = element.value
        if not isinstance(value, str | bytes) and hasattr(value, "__getitem__"):
            value = value[0] if len(value) else None
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if number > 1e8:  # GE adds 1e9 to flag the b-value
            number = number % 1e9
        return [number]
    return []


def _acquired(ds: Any) -> datetime | None:
    text = str(ds.get("AcquisitionDateTime", "") or "")
    if text:
        parsed = _parse(text[:8], text[8:])
        if parsed is not None:
            return parsed
    for time_key, date_key in (("AcquisitionTime", "AcquisitionDate"),
                               ("SeriesTime", "SeriesDate"), ("ContentTime", "ContentDate")):
        parsed = _time_of(ds, time_key, date_key)
        if parsed is not None:
            return parsed
    return None


def _time_of(ds: Any, time_key: str, date_key: str) -> datetime | None:
    time = str(ds.get(time_key, "") or "").strip()
    if not time:
        return None
    date = str(ds.get(date_key, "") or ds.get("StudyDate", "") or "").strip()
    return _parse(date, time)


def _parse(date: str, time: str) -> datetime | None:
    time = time.replace(":", "").split("+")[0].split("-")[0]
    whole, _, fraction = time.partition(".")
    whole = (whole + "0000")[:6]
    try:
        day = datetime.strptime(date[:8], "%Y%m%d") if len(date) >= 8 else datetime(1900, 1, 1)
        clock = datetime.strptime(whole, "%H%M%S")
    except ValueError:
        return None
    micro = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
    return day.replace(hour=clock.hour, minute=clock.minute, second=clock.second,
                       microsecond=micro)


def _orientation(iop: Any) -> str:
    try:
        values = [float(v) for v in iop]
    except (TypeError, ValueError):
        return ""
    if len(values) != 6:
        return ""
    normal = np.cross(values[:3], values[3:])
    axis = int(np.argmax(np.abs(normal)))
    name = ("sagittal", "coronal", "axial")[axis]
    return name if abs(normal[axis]) > 0.9 else f"oblique-{name}"


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [v for v in str(value).split("\\") if v]
    try:
        return list(value)
    except TypeError:
        return [value]


def _float(value: Any) -> float | None:
    if isinstance(value, list | tuple) or (hasattr(value, "__iter__")
                                            and not isinstance(value, str | bytes)):
        value = next(iter(value), None)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


# --------------------------------------------------------------------------- kind and weighting


@dataclass
class Classified:
    """A series' kind and, for anatomy, weighting, with the signals that decided them.

    ``kind``: ``anat``, ``DWI``, ``ADC``, ``derived`` or ``other``; ``weighting``: ``T1``,
    ``T2``, ``FLAIR`` or None; ``phase``: ``pre``, ``post`` or None (anatomy only)."""

    info: SeriesInfo
    kind: str
    weighting: str | None = None
    signals: list[str] = field(default_factory=list)
    phase: str | None = None
    role: str = ""
    decision: str = ""


def classify(info: SeriesInfo, patterns: Mapping[str, str]) -> Classified:
    """Kind and weighting of one series from its tags, the description as one signal among them.

    Args:
        info: the series (:func:`read_series`).
        patterns: role -> case-insensitive regex on the description (``ceT1w``, ``T1w``,
            ``T2w``, ``dwi``, optional ``FLAIR`` and ``adc``; :data:`DEFAULT_ROLE_PATTERNS`).

    Returns:
        The :class:`Classified` series.
    """
    rx = {name: re.compile(p, re.IGNORECASE) for name, p in
          {**DEFAULT_SERIES_PATTERNS, **DEFAULT_ROLE_PATTERNS, **patterns}.items()}
    text = " ".join(part for part in (info.description,) if part)
    tokens = set(info.image_type)
    out = Classified(info, "other")
    if "LOCALIZER" in tokens or _LOCALIZER.search(text) or info.n_slices < 4 and not info.b_values:
        out.signals.append("localizer" if "LOCALIZER" in tokens or _LOCALIZER.search(text)
                           else f"{info.n_slices} slices (localizer-like)")
        return out
    if ("ADC" in tokens or "ADC_UNSPECIFIED" in tokens) and not tokens & {"EADC", "EXP"}:
        out.kind = "ADC"
        out.signals.append(f"ImageType {'/'.join(info.image_type)}")
        return out
    if (rx["adc"].search(text) and len({round(b) for b in info.b_values}) <= 1
            and not _DERIVED_DIFFUSION.search(text) and not tokens & set(_DERIVED_TOKENS)):
        out.kind = "ADC"
        out.signals.append("description: ADC")
        return out
    derived = [name for token, name in _DERIVED_TOKENS.items() if token in tokens]
    if derived:
        out.kind = "derived"
        out.signals.append(f"ImageType {'/'.join(info.image_type)} ({derived[0]})")
        return out
    if info.image_type and info.image_type[0] == "DERIVED":
        out.kind = "derived"
        out.signals.append(f"ImageType {'/'.join(info.image_type)}")
        return out
    if _REGISTERED.search(text):
        out.kind = "derived"
        out.signals.append("description: registered")
        return out
    if info.b_values or rx["dwi"].search(text):
        return _classify_diffusion(out, info, text, rx)
    if tokens & _SWI_TOKENS or _SWI.search(text):
        out.signals.append("SWI/T2* (" + ("ImageType" if tokens & _SWI_TOKENS
                                          else "description") + ")")
        return out
    if _FUNCTIONAL.search(text) or ("EP" in info.scanning_sequence and info.n_volumes > 3):
        out.signals.append("functional/perfusion/angiography")
        return out
    return _classify_anatomy(out, info, text, rx)


def _classify_diffusion(out: Classified, info: SeriesInfo, text: str,
                        rx: Mapping[str, re.Pattern]) -> Classified:
    distinct = sorted({round(b) for b in info.b_values})
    if len(distinct) >= 2:
        out.kind = "DWI"
        out.signals.append("b = " + "/".join(f"{b:g}" for b in distinct))
        return out
    if _DERIVED_DIFFUSION.search(text):
        out.kind = "derived"
        out.signals.append("description: derived diffusion (trace, eADC, FA)")
        return out
    if len(distinct) == 1:
        out.kind = "derived"
        out.signals.append(f"one b-value ({distinct[0]:g}): a trace or one shell, not a DWI")
        return out
    out.kind = "DWI"
    out.signals.append("description: DWI (no b-values in the headers)")
    return out


def _classify_anatomy(out: Classified, info: SeriesInfo, text: str,
                      rx: Mapping[str, re.Pattern]) -> Classified:
    weighting, why = weighting_from_tags(info)
    described = _described_weighting(text, rx)
    if weighting == "other":
        out.signals.append(why)
        return out
    if weighting is not None:
        out.signals.append(why)
        if described is not None and described != weighting:
            out.signals.append(f"description says {described}, tags win")
    elif described is not None:
        weighting = described
        out.signals.append(f"description: {described}" + (f" ({why})" if why else ""))
    else:
        out.signals.append("weighting unknown (" + (why or "no TR/TE/TI") + ", no pattern)")
        return out
    out.kind = "anat"
    out.weighting = weighting
    if info.acquisition_type:
        out.signals.append(info.acquisition_type)
    return out


def weighting_from_tags(info: SeriesInfo) -> tuple[str | None, str]:
    """``T1``, ``T2``, ``FLAIR``, ``other`` (PD, STIR, T2* gradient echo) or None (not decisive),
    from InversionTime, EchoTime and RepetitionTime (ms), with the reason in words."""
    tr, te, ti = info.tr_ms, info.te_ms, info.ti_ms
    what = ", ".join(f"{name} {v:g}" for name, v in (("TR", tr), ("TE", te), ("TI", ti))
                     if v is not None)
    if ti is not None and ti > 0:
        if ti >= 1400:
            return "FLAIR", f"FLAIR ({what})"
        if ti >= 300:
            return "T1", f"IR T1 ({what})"
        return "other", f"STIR ({what})"
    if te is None or tr is None:
        return None, what
    gradient_echo = "GR" in info.scanning_sequence and "SE" not in info.scanning_sequence
    if gradient_echo and te >= 15 and tr >= 25 and tr < 1500:
        return "other", f"T2* gradient echo ({what})"
    if te >= 60 and tr >= 1500:
        return "T2", f"T2 ({what})"
    if te <= 30 and tr <= 1200:
        return "T1", f"T1 ({what})"
    if te <= 30 and tr >= 1500:
        return "other", f"PD ({what})"
    return None, what


def _described_weighting(text: str, rx: Mapping[str, re.Pattern]) -> str | None:
    if rx["FLAIR"].search(text):
        return "FLAIR"
    if rx["ceT1w"].search(text) or rx["T1w"].search(text):
        return "T1"
    if rx["T2w"].search(text):
        return "T2"
    return None


# --------------------------------------------------------------------------- pre or post


def contrast_phases(anatomy: Sequence[Classified], patterns: Mapping[str, str]
                    ) -> tuple[str, bool]:
    """Set ``phase`` (pre/post/None) of each anatomical series, with its signal.

    Returns:
        How the injection was placed, in words (for the subject's summary), and whether any
        sign of contrast was found (tags, repeated protocols or contrast words).
    """
    ce_word = re.compile(patterns.get("ceT1w", DEFAULT_SERIES_PATTERNS["ceT1w"]), re.IGNORECASE)
    tagged = [c for c in anatomy if c.info.contrast_agent or c.info.contrast_start]
    if tagged:
        return _phases_from_tags(anatomy), True
    order = {id(c): i for i, c in enumerate(sorted(anatomy, key=lambda c: _order_key(c.info)))}
    injection, how = _injection_from_repeats(anatomy, order)
    worded = {id(c) for c in anatomy if ce_word.search(c.info.description)}
    for c in anatomy:
        word = id(c) in worded
        if injection is not None:
            phase = "post" if order[id(c)] > injection else "pre"
            c.signals.append(f"acquired {'after' if phase == 'post' else 'before'} the "
                             "injection (repeated protocols)")
            if word and phase == "pre":
                c.signals.append("description has a contrast word: order and description "
                                 "disagree")
                phase = None
            c.phase = phase
        elif worded:
            c.phase = "post" if word else "pre"
            c.signals.append("contrast word in description" if word
                             else "no contrast word (another series has one)")
    if injection is None and worded:
        how = "contrast words in descriptions"
    return how, injection is not None or bool(worded) or "disagree" in how


def _phases_from_tags(anatomy: Sequence[Classified]) -> str:
    starts = [c.info.contrast_start for c in anatomy if c.info.contrast_start]
    start = min(starts) if starts else None
    for c in anatomy:
        info = c.info
        if info.contrast_agent:
            c.phase = "post"
            c.signals.append(f"ContrastBolusAgent {info.contrast_agent!r}")
        elif start is not None and info.acquired is not None and info.acquired > start:
            c.phase = "post"
            c.signals.append("acquired after ContrastBolusStartTime")
        else:
            c.phase = "pre"
            c.signals.append("no ContrastBolusAgent (other series have one)")
    return "ContrastBolusAgent/ContrastBolusStartTime"


def _injection_from_repeats(anatomy: Sequence[Classified], order: Mapping[int, int]
                            ) -> tuple[int | None, str]:
    """The order index after which the agent was given (None: no repeated protocol, or the
    repeats disagree), and how it was found."""
    protocols: dict[tuple, list[Classified]] = {}
    for c in anatomy:
        protocols.setdefault((c.weighting, *c.info.protocol()), []).append(c)
    repeated = [sorted(group, key=lambda c: order[id(c)]) for group in protocols.values()
                if len(group) > 1]
    if not repeated:
        return None, "no repeated protocol, no ContrastBolusAgent"
    after = max(order[id(group[0])] for group in repeated)
    before = min(order[id(group[1])] for group in repeated)
    names = ", ".join("/".join(str(c.info.number) for c in group) for group in repeated)
    if after >= before:
        return None, f"repeated protocols disagree on the injection ({names})"
    return after, f"repeated protocols {names}"


# --------------------------------------------------------------------------- choice


@dataclass
class Assignment:
    """The roles of a subject's series: ``chosen`` role -> series, every series classified,
    and how the injection was placed."""

    chosen: dict[str, SeriesInfo]
    series: list[Classified]
    injection: str

    def summary(self, subject: str) -> str:
        """One line: ``sub-P001: T1w=3 ceT1w=9 T2w=4 DWI=5 (b=0/1000); 4 other/derived``."""
        parts = []
        for role in ROLES:
            info = self.chosen.get(role)
            if info is None:
                continue
            extra = (" (b=" + "/".join(f"{b:g}" for b in sorted({round(b) for b in
                                                                 info.b_values})) + ")"
                     if role == "DWI" and info.b_values else "")
            parts.append(f"{role}={info.number}{extra}")
        unused = sum(1 for c in self.series if not c.decision.startswith("chosen"))
        return (f"sub-{subject}: " + " ".join(parts) + f"; {unused} series not used; "
                f"contrast from {self.injection}")


def parse_override(value: str | int) -> int | str | None:
    """A pinned series: a SeriesNumber (int), a SeriesInstanceUID (str) or ``none``."""
    text = str(value).strip()
    if text.lower() == "none":
        return None
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"[0-9.]+", text):
        return text
    raise ValueError(f"{text!r} is neither a SeriesNumber, a SeriesInstanceUID nor 'none'")


def assign_roles(
    series: Sequence[SeriesInfo],
    subject: str,
    patterns: Mapping[str, str],
    *,
    prefer: str = DEFAULT_PREFER,
    preferred_b: Sequence[float] = (0, 500, 1000),
    b_tolerance: float = 50.0,
    overrides: Mapping[str, Any] | None = None,
) -> Assignment:
    """Decide each series' role; stop the subject on an ambiguity.

    Args:
        series: the subject's series (:func:`read_series`).
        subject: the subject label (for errors).
        patterns: description patterns (``ingest.dicom_series_patterns``).
        prefer: ``3d`` or ``2d``: which acquisition wins between candidates of one role.
        preferred_b: the preferred DWI shells (``ingest.b_values``).
        b_tolerance: s/mm2 within which a b-value matches a shell.
        overrides: role -> SeriesNumber, SeriesInstanceUID or ``none`` (pins a role).

    Returns:
        The :class:`Assignment`.

    Raises:
        InputError: ``sub-<subject>``: no pre-contrast T1, an undecidable or tied role (naming
            the candidates by SeriesNumber and the override), or an override matching no
            series or several.
    """
    who = f"sub-{subject}"
    if prefer not in PREFER_CHOICES:
        raise InputError(who, f"dicom_prefer must be one of {PREFER_CHOICES}, not {prefer!r}")
    classified = [classify(info, patterns) for info in series]
    pinned = _pinned(classified, overrides or {}, who)
    anatomy = [c for c in classified if c.kind == "anat"]
    injection, evidence = contrast_phases(anatomy, patterns)
    chosen: dict[str, SeriesInfo] = {}
    for role in ROLES:
        if role in pinned:
            c = pinned[role]
            if c is not None:
                c.role, c.decision = role, f"chosen as {role} (pinned by override)"
                chosen[role] = c.info
            continue
        if role == "ADC" and "DWI" in chosen:
            continue  # the ADC is fitted from the DWI; scanner maps are not needed
        pool = [c for c in classified if not c.decision]
        best = _choose(role, pool, who, subject, prefer, preferred_b, b_tolerance, evidence)
        if best is not None:
            best.role, best.decision = role, f"chosen as {role}"
            chosen[role] = best.info
    if "T1w" not in chosen:
        found = "; ".join(f"{c.info.label}: {_what(c)}" for c in classified)
        raise InputError(who, f"no pre-contrast T1 series (series: {found}); "
                              f"{_how_to_pin('T1w', subject)}")
    pinned_none = {role for role, c in pinned.items() if c is None}
    for c in classified:
        if not c.decision:
            c.decision = _why_not(c, chosen, pinned_none)
    return Assignment(chosen, classified, injection)


def _pinned(classified: Sequence[Classified], overrides: Mapping[str, Any], who: str
            ) -> dict[str, Classified | None]:
    pinned: dict[str, Classified | None] = {}
    for role, raw in overrides.items():
        if role not in ROLES:
            raise InputError(who, f"unknown role {role!r} in the series override (roles: "
                                  f"{', '.join(ROLES)})")
        try:
            value = parse_override(raw)
        except ValueError as err:
            raise InputError(who, f"series override {role}: {err}") from err
        if value is None:
            pinned[role] = None
            continue
        matches = [c for c in classified if (c.info.number == value if isinstance(value, int)
                                             else c.info.uid == value)]
        if len(matches) != 1:
            what = "no series" if not matches else f"{len(matches)} series (give the UID)"
            raise InputError(who, f"series override {role}={value} matches {what}")
        if any(other is matches[0] for other in pinned.values()):
            raise InputError(who, f"series {value} is pinned to two roles")
        pinned[role] = matches[0]
        matches[0].signals.append(f"pinned as {role}")
    for c in pinned.values():
        if c is not None:
            c.decision = "pinned"
    return pinned


def _eligible(role: str, c: Classified) -> bool:
    if role in ("T1w", "ceT1w"):
        return c.kind == "anat" and c.weighting == "T1"
    if role == "T2w":
        return c.kind == "anat" and c.weighting == "T2"
    if role == "FLAIR":
        return c.kind == "anat" and c.weighting == "FLAIR"
    return c.kind == role


def _choose(role: str, pool: Sequence[Classified], who: str, subject: str, prefer: str,
            preferred_b: Sequence[float], b_tolerance: float, evidence: bool
            ) -> Classified | None:
    candidates = [c for c in pool if _eligible(role, c)]
    if role in ("T1w", "ceT1w") and any(c.phase is None for c in candidates):
        if len(candidates) == 1 and not evidence:
            candidates[0].phase = "pre"
            candidates[0].signals.append("no sign of contrast anywhere: taken as pre-contrast")
        else:
            names = ", ".join(f"{c.info.label}: {c.phase or 'pre or post?'}"
                              for c in candidates)
            raise InputError(who, "cannot tell pre- from post-contrast T1 among series "
                                  f"{names} (no ContrastBolusAgent, no repeated protocol "
                                  "bracketing the injection, no agreeing contrast word); "
                                  f"{_how_to_pin(role, subject)}")
    if role in ("T1w", "ceT1w"):
        wanted = "pre" if role == "T1w" else "post"
        candidates = [c for c in candidates if c.phase == wanted]
    if not candidates:
        return None
    if role in ("DWI", "ADC"):
        ranked = sorted(candidates, key=lambda c: _diffusion_rank(c, preferred_b, b_tolerance))
        keys = [_diffusion_rank(c, preferred_b, b_tolerance) for c in ranked]
    else:
        ranked = sorted(candidates, key=lambda c: _anatomy_rank(c, prefer))
        keys = [_anatomy_rank(c, prefer) for c in ranked]
    if len(ranked) > 1 and keys[0] == keys[1]:
        tied = [c for c, key in zip(ranked, keys, strict=True) if key == keys[0]]
        names = ", ".join(c.info.label for c in tied)
        raise InputError(who, f"{len(tied)} plausible {role} series: {names} (alike in "
                              f"{_rank_words(role)}); {_how_to_pin(role, subject)}")
    for c, key in zip(ranked[1:], keys[1:], strict=True):
        c.decision = (f"rejected as {role}: series {ranked[0].info.number} preferred "
                      f"({_lost_on(role, keys[0], key, prefer)})")
    return ranked[0]


def _anatomy_rank(c: Classified, prefer: str) -> tuple:
    """Smaller is better: pre-contrast, preferred dimension, finer voxels, more coverage."""
    dim = c.info.acquisition_type.lower()
    return (0 if c.phase != "post" else 1,
            0 if dim == prefer else 1 if not dim else 2,
            _bucket(c.info.voxel_volume), -_bucket(c.info.coverage_mm))


def _bucket(value: float) -> int:
    """Values within about 10% fall in one bucket (log scale), so near-equal voxels tie."""
    return int(round(math.log(value) / math.log(1.1))) if value > 0 else 0


def _diffusion_rank(c: Classified, preferred_b: Sequence[float], tolerance: float) -> tuple:
    b = np.asarray(c.info.b_values, dtype=float)
    has = [bool(b.size) and bool(np.any(np.abs(b - p) <= tolerance)) for p in preferred_b]
    has_b0 = bool(b.size) and bool(np.any(b <= tolerance))
    image_type = 0 if c.kind == "ADC" and "ADC" in c.info.image_type else 1
    return (0 if all(has) else 1, 0 if has_b0 else 1, -len(set(np.round(b))), image_type)


def _rank_words(role: str) -> str:
    if role in ("DWI", "ADC"):
        return "b-values and image type"
    return "contrast phase, 2D/3D, voxel size and coverage"


def _lost_on(role: str, best: tuple, key: tuple, prefer: str) -> str:
    """Why the best-ranked series won over one ranked below it (the first key that differs)."""
    if role in ("DWI", "ADC"):
        words = ("it has the preferred shells", "it has b=0", "it has more shells",
                 "ImageType ADC")
    else:
        words = ("pre-contrast", f"{prefer.upper()}, ingest.dicom_prefer", "finer voxels",
                 "more coverage")
    index = next((i for i, (a, b) in enumerate(zip(best, key, strict=True)) if a != b), 0)
    return words[index]


def _why_not(c: Classified, chosen: Mapping[str, SeriesInfo],
             pinned_none: Set[str] = frozenset()) -> str:
    if c.kind == "ADC" and "DWI" in chosen:
        return "not used: the ADC is fitted from the chosen DWI"
    if c.kind in pinned_none:  # DWI or ADC: the kind is the role
        return f"not used ({c.kind} pinned to none by override)"
    if c.kind in ("derived", "other"):
        return f"not used ({c.kind})"
    if c.kind == "anat" and c.weighting == "T1":
        return f"not used ({c.phase or 'phase unknown'} T1)"
    return "not used"


def _what(c: Classified) -> str:
    if c.kind != "anat":
        return c.kind
    return f"{c.phase + '-contrast ' if c.phase else ''}{c.weighting}"


def _how_to_pin(role: str, subject: str) -> str:
    return (f"pin one with --series {role}=<SeriesNumber> or config ingest.dicom_series: "
            f"{{{subject}: {{{role}: <SeriesNumber>}}}}")


# --------------------------------------------------------------------------- record


TABLE_COLUMNS = ("series_number", "description", "acquired_after_first", "kind", "weighting",
                 "contrast", "acquisition", "b_values", "role", "decision", "signals")


def series_table(assignment: Assignment, outputs: Mapping[str, str] | None = None
                 ) -> list[dict[str, str]]:
    """One row per series, in acquisition order: what it is, what it became and why.

    Args:
        assignment: the subject's :class:`Assignment`.
        outputs: role -> the BIDS file name written for it (added to the decision).

    Returns:
        Rows with :data:`TABLE_COLUMNS` (no identifiers: no names, IDs, dates or UIDs).
    """
    rows = []
    times = [c.info.acquired for c in assignment.series if c.info.acquired]
    start = min(times) if times else None
    for c in assignment.series:
        info = c.info
        decision = c.decision
        if outputs and c.role in outputs and decision.startswith("chosen"):
            decision += f" -> {outputs[c.role]}"
        rows.append({
            "series_number": "" if info.number is None else str(info.number),
            "description": info.description,
            "acquired_after_first": info.time_after(start),
            "kind": c.kind,
            "weighting": c.weighting or "",
            "contrast": c.phase or "",
            "acquisition": info.acquisition_type,
            "b_values": "/".join(f"{b:g}" for b in sorted({round(b) for b in info.b_values})),
            "role": c.role if c.decision.startswith("chosen") else "",
            "decision": decision,
            "signals": "; ".join(c.signals),
        })
    return rows


def write_series_table(rows: Sequence[Mapping[str, str]], path: str | os.PathLike) -> Path:
    """Write :func:`series_table` rows as a TSV (atomically)."""
    import pandas as pd

    from cesynth.io import write_tsv

    table = pd.DataFrame(list(rows), columns=list(TABLE_COLUMNS))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_tsv(table, path)


__all__ = ["DEFAULT_PREFER", "DEFAULT_ROLE_PATTERNS", "DEFAULT_SERIES_PATTERNS", "PREFER_CHOICES",
           "ROLES", "TABLE_COLUMNS",
           "Assignment", "Classified", "SeriesInfo", "assign_roles", "classify",
           "contrast_phases", "parse_override", "read_series", "series_table",
           "weighting_from_tags", "write_series_table"]
