"""ANTs linear transforms as 4x4 RAS matrices: reading, conversion both ways, displacement.

ANTs (ITK) stores a linear transform in LPS physical coordinates as ``y = A (x - c) + t + c``;
NIfTI affines here are RAS. :func:`ants_transform_to_ras` and :func:`ras_to_ants_transform`
convert between the two, :func:`read_ants_transform` reads a ``.mat`` naming the file when it
fails, and :func:`displacement_error_mm` compares an estimated transform with a known one over a
mask (the registration QC against the phantom's truth). The registrations themselves are
:mod:`cesynth.registration`.
"""

from __future__ import annotations

import os
from pathlib import Path

import ants
import nibabel as nib
import numpy as np

from cesynth.io import InputError, load_nifti

PathLike = str | os.PathLike


def displacement_error_mm(
    estimated_xfm_path: PathLike,
    true_fixed_to_moving_world: np.ndarray,
    mask_path: PathLike,
) -> dict[str, float]:
    """Displacement between an estimated ANTs transform and the true one over a mask's voxels.

    Args:
        estimated_xfm_path: ANTs ``.mat`` from a registration (fixed -> moving physical space).
        true_fixed_to_moving_world: the true 4x4 mapping of fixed RAS world points (mm) to moving
            RAS world points.
        mask_path: a mask NIfTI; its nonzero voxel centres (in world space) are the points compared.

    Returns:
        ``{"mean_mm", "max_mm", "median_mm", "n_voxels"}``.
    """
    estimated = ants_transform_to_ras(read_ants_transform(estimated_xfm_path))
    mask_nii = load_nifti(mask_path)
    ijk = np.argwhere(np.asarray(mask_nii.dataobj) > 0)
    if ijk.size == 0:
        raise InputError(mask_path, "mask is empty")
    points = nib.affines.apply_affine(mask_nii.affine, ijk)
    truth = np.asarray(true_fixed_to_moving_world, dtype=float)
    gap = np.linalg.norm(nib.affines.apply_affine(estimated, points)
                         - nib.affines.apply_affine(truth, points), axis=1)
    return {"mean_mm": float(gap.mean()), "max_mm": float(gap.max()),
            "median_mm": float(np.median(gap)), "n_voxels": int(len(gap))}


def read_ants_transform(xfm_path: PathLike) -> ants.ANTsTransform:
    """Read an ANTs linear transform file, as an :class:`InputError` on the file when it fails."""
    if not Path(xfm_path).is_file():
        raise InputError(xfm_path, "transform file not found")
    try:
        return ants.read_transform(str(xfm_path))
    except Exception as err:  # ITK raises RuntimeError with a C++ message
        raise InputError(xfm_path, f"unreadable ANTs transform ({err})") from err


def ants_transform_to_ras(transform: ants.ANTsTransform) -> np.ndarray:
    """The 4x4 RAS-world matrix of an ANTs 3D linear transform.

    ITK stores ``y = A (x - c) + t + c`` in LPS, ``A`` and ``t`` in ``parameters``, the centre
    ``c`` in ``fixed_parameters``; RAS is LPS with x and y negated on both sides.

    Args:
        transform: a 3D affine-family ANTs transform.

    Returns:
        4x4 matrix mapping RAS points the way the transform maps LPS points.
    """
    params = np.asarray(transform.parameters, dtype=float)
    centre = np.asarray(transform.fixed_parameters, dtype=float)
    matrix, translation = params[:9].reshape(3, 3), params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + centre - matrix @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def ras_to_ants_transform(matrix_ras: np.ndarray) -> ants.ANTsTransform:
    """An ANTs affine transform (LPS) equivalent to a 4x4 RAS-world matrix (centre at the origin).

    Args:
        matrix_ras: 4x4 mapping of RAS points.

    Returns:
        The ANTs ``AffineTransform`` (float) mapping the same physical points in LPS.
    """
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ np.asarray(matrix_ras, dtype=float) @ flip
    return ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                      matrix=lps[:3, :3], translation=lps[:3, 3],
                                      center=np.zeros(3))


__all__ = ["ants_transform_to_ras", "displacement_error_mm", "ras_to_ants_transform",
           "read_ants_transform"]
