"""N4 bias-field correction (antspyx) of a weighted image inside its brain mask, on its own grid.

A declared preprocessing option (``normalise.bias_correction: n4``), applied before the image is
resampled to the model grid and normalised, to the T1, T2, FLAIR and CE-T1 (never to the ADC, a
quantitative map). The correction is fitted inside the brain mask only and rescaled to the
image's in-mask intensity range (ANTs' command-line default), so the normalisation that follows
sees the same range.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

BIAS_CORRECTIONS = ("none", "n4")
"""The options of ``normalise.bias_correction``."""
CORRECTED_MODALITIES = ("T1w", "T2w", "FLAIR", "ceT1w")
"""Weighted images the correction applies to (the ADC map is quantitative: never corrected)."""
N4_SHRINK_FACTOR = 2
"""Subsampling of the fit (ANTs' default 4 leaves too few voxels on a 2 mm grid)."""


def n4_corrected(image: nib.Nifti1Image, mask: nib.Nifti1Image) -> np.ndarray:
    """The image's voxels divided by the N4 bias field fitted inside ``mask`` (float32).

    Args:
        image: a 3D weighted image.
        mask: its brain mask on the same grid (non-zero = brain).

    Returns:
        The corrected array on the image's grid; outside the mask the input values.
    """
    import ants  # ANTs: only when the option is on

    data = np.asarray(image.dataobj, dtype=np.float32)
    inside = np.asarray(mask.dataobj) != 0
    spacing = tuple(float(v) for v in image.header.get_zooms()[:3])
    ants_image = ants.from_numpy(np.where(inside, np.maximum(data, 0.0), 0.0), spacing=spacing)
    ants_mask = ants.from_numpy(inside.astype(np.float32), spacing=spacing)
    corrected = ants.n4_bias_field_correction(ants_image, mask=ants_mask,
                                              rescale_intensities=True,
                                              shrink_factor=N4_SHRINK_FACTOR).numpy()
    return np.where(inside, corrected, data).astype(np.float32)


__all__ = ["BIAS_CORRECTIONS", "CORRECTED_MODALITIES", "N4_SHRINK_FACTOR", "n4_corrected"]
