"""Physics-based synthetic brain-tumor cohort, written as a BIDS dataset.

Each subject is a head built from the MNI ICBM152 2009a tissue maps, warped, wrapped in CSF,
skull and scalp fat, with lesions and enhancing vessels painted in; each scan is acquired on its
own grid and head pose from the resampled parameter maps, with a bias field and Rician noise.
Lesions come in four archetypes (``LESION_TYPES``: rim, solid, nonenhancing, t2abnormality),
mixed within subjects, so that enhancement endpoints can be tested for specificity.

One concern per module, lower layers never importing higher ones:

- :mod:`~cesynth.phantom.settings`: :class:`PhantomSettings`.
- :mod:`~cesynth.phantom.physics`: tissue parameters, signal equations (FLAIR included), bias
  field, noise.
- :mod:`~cesynth.phantom.grids`: scan grids, head poses, true transforms, sampling onto grids.
- :mod:`~cesynth.phantom.anatomy`: the subject's head (tissue maps, tumors, vessels).
- :mod:`~cesynth.phantom.cohort`: subject simulation, cohort plan and the BIDS writer; the
  ground-truth file names come from :func:`truth_files` alone.

Every public name is re-exported here, so ``from cesynth.phantom import X`` keeps working.
"""

from cesynth.phantom.anatomy import (
    BRATS_CLASSES,
    ENHANCING_TYPES,
    LABEL,
    LABELS,
    LESION_TYPES,
    PARAMETER_NAMES,
    Anatomy,
    build_anatomy,
    lesion_specs,
    lesion_types_of,
    planned_lesions,
    sample_indicators,
    sample_lesion_truth,
    sample_parameter_maps,
    smooth_random_field,
)
from cesynth.phantom.cohort import (
    B_VECTORS,
    TRUTH_DIR,
    TUMOR_MASK_DESCRIPTION,
    TUMOR_MASK_DIR,
    SubjectScans,
    guard_demo_target,
    make_cohort,
    plan_cohort,
    simulate_subject,
    subject_paths,
    truth_files,
    write_dataset_files,
    write_subject,
)
from cesynth.phantom.grids import (
    FLAIR,
    HEAD_CENTER,
    LAYERS_MM,
    MODALITIES,
    MOVING_MODALITIES,
    REFERENCE_MODALITY,
    Grid,
    acquisition_grids,
    anatomy_grid,
    head_poses,
    random_pose,
    rigid_matrix,
    sample_on_grid,
    true_transforms,
)
from cesynth.phantom.physics import (
    B_VALUES,
    DWI_SE,
    FLAIR_IR,
    GADOLINIUM_R1_PER_MM_S,
    SPGR,
    T2_SE,
    TISSUE_RANGES,
    WM_SCANNER_SIGNAL,
    TissueParams,
    add_rician_noise,
    bias_field,
    dwi_signal,
    inversion_recovery_signal,
    noise_free_image,
    null_inversion_time_ms,
    spgr_signal,
    spin_echo_signal,
    t1_post_contrast,
    tissue_parameters,
)
from cesynth.phantom.settings import PhantomSettings

__all__ = [
    "BRATS_CLASSES", "B_VALUES", "B_VECTORS", "DWI_SE", "ENHANCING_TYPES", "FLAIR", "FLAIR_IR",
    "GADOLINIUM_R1_PER_MM_S", "HEAD_CENTER", "LABEL", "LABELS", "LAYERS_MM", "LESION_TYPES",
    "MODALITIES", "MOVING_MODALITIES", "PARAMETER_NAMES", "REFERENCE_MODALITY",
    "SPGR", "T2_SE", "TISSUE_RANGES", "TRUTH_DIR", "TUMOR_MASK_DESCRIPTION", "TUMOR_MASK_DIR",
    "WM_SCANNER_SIGNAL",
    "Anatomy", "Grid", "PhantomSettings", "SubjectScans", "TissueParams",
    "acquisition_grids", "add_rician_noise", "anatomy_grid", "bias_field", "build_anatomy",
    "dwi_signal", "guard_demo_target", "head_poses", "inversion_recovery_signal",
    "lesion_specs", "lesion_types_of", "make_cohort", "noise_free_image",
    "null_inversion_time_ms", "plan_cohort", "planned_lesions", "random_pose", "rigid_matrix",
    "sample_indicators", "sample_lesion_truth", "sample_on_grid", "sample_parameter_maps",
    "simulate_subject", "smooth_random_field", "spgr_signal",
    "spin_echo_signal", "subject_paths", "t1_post_contrast", "tissue_parameters",
    "true_transforms", "truth_files", "write_dataset_files", "write_subject",
]
