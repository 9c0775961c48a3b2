"""The phantom's settings: size, resolution and acquisition imperfections (no dependencies)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PhantomSettings:
    """Size, resolution and acquisition imperfections of the phantom.

    T2w and DWI voxel sizes left as ``None`` follow ``voxel_mm``: T2w in-plane = voxel_mm,
    slices 2.5 x voxel_mm; DWI in-plane 1.25 x voxel_mm, slices 2.5 x voxel_mm. ``max_tumors``
    is the most lesions a subject draws (the cohort plan may give validation subjects more, so
    that together they hold every lesion type).
    """

    voxel_mm: float = 2.0
    t2_inplane_mm: float | None = None
    t2_slice_mm: float | None = None
    dwi_inplane_mm: float | None = None
    dwi_slice_mm: float | None = None
    max_rotation_deg: float = 6.0
    max_translation_mm: float = 6.0
    deformation_mm: float = 3.0
    snr: float = 40.0
    bias_field: float = 0.15
    max_tumors: int = 3
    head_scale_range: tuple[float, float] = (0.86, 0.94)

    def __post_init__(self) -> None:
        derived = {"t2_inplane_mm": 1.0, "t2_slice_mm": 2.5, "dwi_inplane_mm": 1.25,
                   "dwi_slice_mm": 2.5}
        for name, factor in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, factor * self.voxel_mm)
        if self.voxel_mm <= 0 or self.snr <= 0 or self.max_tumors < 0:
            raise ValueError("PhantomSettings: voxel_mm and snr must be > 0, max_tumors >= 0")
