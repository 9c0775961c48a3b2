"""File input and output shared by every stage: NIfTI, JSON and TSV, written atomically.

Every writer goes through :func:`atomic_path`, so a crash or a kill never leaves a half-written
file at an output path: the data go to a temporary file in the same folder, which is renamed
into place only once complete. A full disk (or quota) is one line naming the file, with the file
that was there before left as it was. Inside the workflow's results folder each file's checksum
is recorded as it is written and checked when it is read (:mod:`cesynth.integrity`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from cesynth import integrity
from cesynth.errors import MESSAGE_CHARS, InputError, one_line_error  # noqa: F401 (re-exported)
from cesynth.signals import sigterm_raises

SYNTHETIC_DESCRIP = b"cesynth SYNTHETIC image - not acquired"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary name keeps the full suffix (``.nii.gz``), so writers that choose a format by
    extension behave as they would on the final path. A SIGTERM during the block removes the
    temporary file before the process ends (:func:`cesynth.signals.sigterm_raises`).
    """
    final = Path(path)
    suffix = "".join(final.suffixes) or ".tmp"
    with sigterm_raises(keep_existing=True), _full_disk_named(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=suffix,
                                        dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            # a hidden name is an outer atomic_path's temporary: recorded under its final name
            if integrity.is_managed(final) and not final.name.startswith("."):
                integrity.record(tmp, final)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def _full_disk_named(final: Path) -> Iterator[None]:
    """Turn "no space left" (or an exhausted quota) while writing ``final`` into a one-line
    :class:`InputError` naming it; the file that was there before is left as it was."""
    try:
        yield
    except OSError as err:
        if err.errno not in FULL_DISK_ERRNOS:
            raise
        kept = "the previous file is unchanged" if final.exists() else "nothing was written"
        raise InputError(final, f"cannot be written: {os.strerror(err.errno)} on "
                                f"{final.parent} ({kept})") from err


GRID_ATOL_MM = 1e-2
"""Largest difference (mm) of any affine entry between images taken to share one voxel grid.

Images resampled onto one grid but written by different tools (nibabel, ANTs, FSL) differ by
float32 header round-off (sform/qform stored as float32); 1e-2 mm covers that with room to spare
while any real misregistration or different grid is far larger."""


def check_same_grid(img: Any, reference: Any, who: str | os.PathLike,
                    what: str = "the reference", *, full_shape: bool = False,
                    hint: str = "") -> None:
    """Raise unless ``img`` lies on the voxel grid of ``reference``: same shape and affine.

    Shapes are compared on the first three (spatial) dimensions unless ``full_shape``; affines by
    their largest absolute entry difference, which may be at most :data:`GRID_ATOL_MM` (no
    relative tolerance).

    Args:
        img: the image to check (anything with ``shape`` and ``affine``, e.g. a NIfTI image).
        reference: the image that defines the grid.
        who: the file or subject that the error names.
        what: the reference in words, read as ``"not on <what> grid"`` (``"the CE-T1"``).
        full_shape: compare every dimension, not only the first three.
        hint: appended to the message after ``"; "`` (e.g. ``"register it first"``).

    Raises:
        InputError: on ``who``, naming both shapes, or the affine offset in mm.
    """
    shape, ref_shape = tuple(int(n) for n in img.shape), tuple(int(n) for n in reference.shape)
    if not full_shape:
        shape, ref_shape = shape[:3], ref_shape[:3]
    if shape != ref_shape:
        problem = f"not on {what} grid: shape {shape} vs {ref_shape}"
    else:
        diff = np.abs(np.asarray(img.affine, dtype=float) - np.asarray(reference.affine,
                                                                       dtype=float))
        offset = float(np.max(diff))
        if offset <= GRID_ATOL_MM:  # False for NaN: a NaN affine is never on the grid
            return
        problem = (f"not on {what} grid: affine off by {offset:.3g} mm "
                   f"(tolerance {GRID_ATOL_MM:g} mm)")
    raise InputError(who, f"{problem}; {hint}" if hint else problem)


def load_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """Load a NIfTI image, turning any reader failure into an :class:`InputError` on the file."""
    try:
        integrity.verify(path)
    except FileNotFoundError as err:
        raise InputError(path, "file not found") from err
    try:
        # nibabel logs (to stderr) each header field it repairs, such as a pixdim of 0 read as
        # 1; the callers that care check those fields as written (check_voxel_sizes)
        with quiet_nibabel():
            img = nib.load(str(path))
        img.get_fdata(dtype=np.float32)  # force a full read so truncated files fail here
    except FileNotFoundError as err:
        raise InputError(path, "file not found") from err
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputError(path, f"unreadable NIfTI ({type(err).__name__}: {err})") from err
    return img


@contextlib.contextmanager
def quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header-repair messages (below ERROR) for the block."""
    nib_logger = nib.imageglobals.logger
    level = nib_logger.level
    nib_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        nib_logger.setLevel(level)


def load_checked_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """Load a NIfTI image for processing: readable, positive voxel sizes, at least
    :data:`MIN_VOXELS_PER_AXIS` voxels along each spatial axis, finite voxels.

    Raises:
        InputError: on the file, as :func:`load_nifti`, :func:`check_voxel_sizes`,
            :func:`check_min_extent` and :func:`check_finite` do.
    """
    img = load_nifti(path)
    check_voxel_sizes(img, path)
    check_min_extent(img, path)
    check_finite(img.get_fdata(dtype=np.float32), path)
    return img


def check_finite(data: np.ndarray, who: str | os.PathLike) -> None:
    """Raise unless every voxel is finite (no NaN, no inf)."""
    n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise InputError(who, f"{n_bad} non-finite voxels (NaN or inf)")


def check_binary_mask(data: np.ndarray, who: str | os.PathLike) -> None:
    """Raise unless every voxel is exactly 0 or 1 (integer or float; no tolerance, so a mask
    resampled with linear interpolation or a probability map is refused, not thresholded).

    Raises:
        InputError: on ``who``, naming up to three of the other values.
    """
    values = np.asarray(data)
    other = (values != 0) & (values != 1)
    if np.any(other):
        shown = ", ".join(f"{v:g}" for v in np.unique(values[other])[:3])
        raise InputError(who, f"not a binary mask (values other than 0 and 1: {shown})")


def check_voxel_sizes(img: Any, who: str | os.PathLike) -> None:
    """Raise unless the header's spatial voxel sizes (``pixdim``) are finite and positive.

    nibabel silently replaces a zero ``pixdim`` by 1 and a negative one by its absolute value
    when it reads a header, so the sizes are read again from the file as written.
    """
    header = getattr(img, "header", None)
    if not isinstance(header, nib.Nifti1Header):
        return
    holder = img.file_map.get("header") or img.file_map.get("image")  # a pair, or one file
    if holder is None or holder.filename is None:
        return  # made in memory: nibabel wrote nothing to repair
    with nib.openers.ImageOpener(holder.filename) as fileobj:
        raw = type(header).from_fileobj(fileobj, check=False)
    n_spatial = max(1, min(3, int(raw["dim"][0])))
    sizes = np.asarray(raw["pixdim"][1:1 + n_spatial], dtype=float)
    if not np.all(np.isfinite(sizes) & (sizes > 0)):
        shown = " x ".join(f"{size:g}" for size in sizes)
        raise InputError(who, f"voxel size (pixdim) {shown}: every size must be positive")


MIN_VOXELS_PER_AXIS = 3
"""Fewest voxels along each spatial axis an image may have: registration (ITK) and the model's
3-slice patches need at least this many."""


def check_min_extent(img: Any, who: str | os.PathLike,
                     minimum: int = MIN_VOXELS_PER_AXIS) -> None:
    """Raise unless the image has at least ``minimum`` voxels along each of its 3 spatial axes
    (a missing axis counts as 1 voxel)."""
    shape = tuple(int(n) for n in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
    for axis, n in enumerate(shape, start=1):
        if n < minimum:
            shown = " x ".join(str(v) for v in shape)
            raise InputError(who, f"shape {shown}: {n} voxel{'s' if n != 1 else ''} along axis "
                                  f"{axis} (at least {minimum} along each spatial axis)")


def other_nifti_copy(path: str | os.PathLike) -> Path | None:
    """The same image under the other NIfTI extension (``x.nii`` for ``x.nii.gz`` and the
    reverse) when that file exists too, else None."""
    path = Path(path)
    if path.name.endswith(".nii.gz"):
        other = path.with_name(path.name[:-3])
    elif path.name.endswith(".nii"):
        other = path.with_name(path.name + ".gz")
    else:
        return None
    return other if other.exists() else None


def same_file_key(path: str | os.PathLike) -> str:
    """A key equal for two spellings of one file (links and ``..`` resolved)."""
    return os.path.normcase(os.path.realpath(path))


def check_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike] = (),
                  sources: Iterable[str | os.PathLike] = ()) -> None:
    """Fail before any work when an output would write over a source: an input file, anything
    inside a source folder (a DICOM series, a BIDS dataset), or another output.

    Raises:
        InputError: on the output path.
    """
    input_keys = {same_file_key(path) for path in inputs}
    folders = [Path(same_file_key(folder)) for folder in sources]
    seen: set[str] = set()
    for path in outputs:
        key = same_file_key(path)
        if key in input_keys:
            raise InputError(path, "output would overwrite an input")
        inside = next((f for f in folders if Path(key).is_relative_to(f)), None)
        if inside is not None:
            raise InputError(path, f"output would overwrite an input (it lies inside the "
                                   f"input folder {inside})")
        if key in seen:
            raise InputError(path, "two outputs share this path")
        seen.add(key)


def dataset_generators(root: str | os.PathLike) -> set[str] | None:
    """The ``GeneratedBy`` names of the dataset at ``root`` (None: no dataset_description.json;
    an unreadable one names none)."""
    description = Path(root) / "dataset_description.json"
    if not description.is_file():
        return None
    try:
        content = read_json(description)
    except InputError:
        content = {}
    generators = content.get("GeneratedBy", []) if isinstance(content, dict) else []
    return {g.get("Name") for g in generators if isinstance(g, dict)}


def guard_dataset_target(root: str | os.PathLike, generator: str,
                         also: Iterable[dict[str, Any]] = ()) -> None:
    """Fail before any work unless ``root`` is missing, empty, or a dataset that ``generator``
    wrote (its dataset_description.json names it in ``GeneratedBy``, or equals one of
    ``also``): a writer never mixes its subjects into somebody else's dataset.

    Raises:
        InputError: on ``root``.
    """
    out = Path(root)
    names = dataset_generators(out)
    if names is not None:
        if generator in names:
            return
        try:
            content = read_json(out / "dataset_description.json")
        except InputError:
            content = None
        if content not in list(also):
            raise InputError(out, f"holds a dataset not written by {generator}; refusing to "
                                  "write over it")
    elif out.is_dir() and any(out.iterdir()):
        raise InputError(out, f"is not empty and holds no {generator} dataset; refusing to "
                              "write into it")


def check_output_file(path: str | os.PathLike, suffixes: Sequence[str]) -> Path:
    """Fail before any work when an output file cannot be written at ``path``: a name without
    one of ``suffixes``, an existing folder, or a folder that cannot be written.

    Raises:
        InputError: on the path.
    """
    out = Path(path)
    if not out.name.endswith(tuple(suffixes)) or out.name in suffixes:
        raise InputError(out, f"output must end in {' or '.join(suffixes)}")
    if out.is_dir():
        raise InputError(out, "output is a folder; give a file name")
    check_writable_folder(out)
    return out


def check_writable_folder(path: str | os.PathLike) -> None:
    """Fail when nothing can be created beside ``path`` (in its nearest existing folder).

    A file is created and removed there: permission bits say nothing for root or on a
    read-only file system.

    Raises:
        InputError: on the path, naming the folder.
    """
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(path, f"{folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cesynth-probe-", dir=folder)
    except OSError as err:
        raise InputError(path, f"folder {folder} is not writable ({err.strerror})") from err
    os.close(fd)
    os.unlink(probe)


def save_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    *,
    dtype: np.dtype | type = np.float32,
    synthetic: bool = False,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write ``data`` as NIfTI atomically, with sform and qform set to ``affine``.

    Args:
        data: the voxel array.
        affine: 4x4 voxel-to-world (RAS, mm) matrix.
        path: output path (``.nii`` or ``.nii.gz``).
        dtype: on-disk data type.
        synthetic: mark the image as synthetic in the header's ``descrip`` field.
        header: optional header to copy units and other fields from.

    Returns:
        The output path.
    """
    img = nib.Nifti1Image(np.asarray(data).astype(dtype, copy=False), affine, header=header)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = SYNTHETIC_DESCRIP if synthetic else b"cesynth"
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def is_synthetic(img: nib.Nifti1Image) -> bool:
    """True when the header carries cesynth's synthetic-image mark."""
    return bytes(img.header["descrip"]).rstrip(b"\0") == SYNTHETIC_DESCRIP


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars and arrays are converted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, naming the file in the error when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputError(path, "file not found") from err
    except json.JSONDecodeError as err:
        raise InputError(path, f"malformed JSON ({err})") from err


def write_tsv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as TSV atomically (no index, ``n/a`` for missing values as BIDS does)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    return Path(path)


def read_tsv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a BIDS-style TSV (``n/a`` as missing, identifiers kept as strings).

    Raises:
        InputError: on the file when it is missing, not UTF-8 text, empty (no header row), or
            has a row with more or fewer fields than the header (naming the row).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError as err:
        raise InputError(path, "file not found") from err
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                               f"{err.start})") from err
    rows = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(text),
                                                                  delimiter="\t"), start=1)
            if row]
    if not rows:
        raise InputError(path, "empty file (no header row)")
    n_columns = len(rows[0][1])
    for index, (line, row) in enumerate(rows[1:], start=1):
        if len(row) != n_columns:
            raise InputError(path, f"row {index} (line {line}) has {len(row)} fields, the "
                                   f"header {n_columns}")
    return pd.read_csv(io.StringIO(text), sep="\t", na_values=["n/a"], keep_default_na=False,
                       dtype=str)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


BIDS_ENTITY_ORDER = ("ses", "ce", "from", "to", "space", "desc")


def bids_path(root: str | os.PathLike, subject: str, datatype: str, suffix: str,
              ext: str = ".nii.gz", **entities: str) -> str:
    """Build a BIDS(-derivatives) path such as ``root/sub-01/anat/sub-01_space-ceT1w_T1w.nii.gz``.

    Entities are written in BIDS order whatever order they are passed in; ``from`` is spelt
    ``from_`` in Python. Values may be Snakemake wildcards (``"{subject}"``).

    Args:
        root: dataset or derivatives folder.
        subject: subject label without ``sub-``.
        datatype: ``anat``, ``dwi``...
        suffix: the final BIDS suffix (``T1w``, ``mask``, ``xfm``...).
        ext: file extension with the dot.
        **entities: entity values by name.

    Returns:
        The path as a string (Snakemake patterns are strings).
    """
    values = {key.rstrip("_"): value for key, value in entities.items() if value is not None}
    unknown = set(values) - set(BIDS_ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities: {sorted(unknown)}")
    parts = [f"sub-{subject}"] + [f"{key}-{values[key]}" for key in BIDS_ENTITY_ORDER
                                  if key in values]
    name = "_".join(parts + [suffix]) + ext
    return str(Path(root) / f"sub-{subject}" / datatype / name)


def check_synthetic_paths(out_path: str | os.PathLike, sidecar_path: str | os.PathLike) -> None:
    """Fail before any work when a synthetic image's output names cannot be written.

    Raises:
        InputError: the image name is not ``.nii``/``.nii.gz``, or the sidecar is the image.
    """
    if not str(out_path).endswith((".nii", ".nii.gz")):
        raise InputError(out_path, "output image must end in .nii or .nii.gz")
    if Path(out_path) == Path(sidecar_path):
        raise InputError(sidecar_path, "sidecar path is the output image's path")


def write_synthetic(image: np.ndarray, affine: np.ndarray, sidecar: dict[str, Any],
                    out_path: str | os.PathLike, sidecar_path: str | os.PathLike) -> None:
    """Write a synthetic image (float32, marked synthetic) and its JSON sidecar, each
    atomically; the image is removed again if the sidecar cannot be written."""
    save_nifti(image, affine, out_path, dtype=np.float32, synthetic=True)
    try:
        write_json(dict(sidecar), sidecar_path)
    except BaseException:
        Path(out_path).unlink(missing_ok=True)
        raise

