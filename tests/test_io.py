"""Path building and error text of cesynth.io."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cesynth.io import (
    GRID_ATOL_MM,
    MESSAGE_CHARS,
    InputError,
    bids_path,
    check_same_grid,
    one_line_error,
)


def test_bids_path_orders_entities_as_bids_does():
    path = bids_path("/data/derivatives", "07", "anat", "T1w", desc="brain", space="ceT1w",
                     ses="pre")
    assert path == ("/data/derivatives/sub-07/anat/"
                    "sub-07_ses-pre_space-ceT1w_desc-brain_T1w.nii.gz")


def test_bids_path_spells_from_and_skips_missing_entities():
    path = bids_path("out", "01", "xfm", "xfm", ext=".mat", from_="T2w", to="ceT1w", desc=None)
    assert path == "out/sub-01/xfm/sub-01_from-T2w_to-ceT1w_xfm.mat"


def test_bids_path_keeps_snakemake_wildcards():
    path = bids_path("results/preproc", "{subject}", "anat", "mask", space="model")
    assert path == "results/preproc/sub-{subject}/anat/sub-{subject}_space-model_mask.nii.gz"


def test_bids_path_rejects_unknown_entities():
    with pytest.raises(ValueError, match=r"unknown BIDS entities: \['run'\]"):
        bids_path("out", "01", "anat", "T1w", run="1")


def test_one_line_error_names_the_type_on_one_line():
    assert one_line_error(OSError("disk\n  full")) == "OSError: disk full"


def test_one_line_error_cuts_long_messages():
    text = one_line_error(ValueError("x" * 1000))
    assert len(text) == MESSAGE_CHARS
    assert text.startswith("ValueError: xxx") and text.endswith("...")


def _grid_image(shape=(6, 5, 4), shift_mm=0.0) -> nib.Nifti1Image:
    affine = np.diag([1.0, 1.2, 2.5, 1.0])
    affine[:3, 3] = [-3.0, -2.0, -5.0]
    affine[1, 3] += shift_mm
    return nib.Nifti1Image(np.zeros(shape, np.float32), affine)


def test_check_same_grid_tolerates_header_round_off_only():
    assert GRID_ATOL_MM == pytest.approx(1e-2)
    reference = _grid_image()
    check_same_grid(_grid_image(shift_mm=0.005), reference, "t2.nii.gz", "the CE-T1")
    check_same_grid(_grid_image((6, 5, 4, 1)), reference, "t2.nii.gz")  # spatial dims only
    with pytest.raises(InputError) as err:
        check_same_grid(_grid_image(shift_mm=0.05), reference, "t2.nii.gz", "the CE-T1")
    assert err.value.who == "t2.nii.gz"
    assert err.value.problem == "not on the CE-T1 grid: affine off by 0.05 mm (tolerance 0.01 mm)"


def test_check_same_grid_names_both_shapes():
    with pytest.raises(InputError) as err:
        check_same_grid(_grid_image((6, 5, 3)), _grid_image(), "mask.nii.gz", "the DWI",
                        hint="register it first")
    assert str(err.value) == ("mask.nii.gz: not on the DWI grid: shape (6, 5, 3) vs (6, 5, 4); "
                              "register it first")
    with pytest.raises(InputError, match=r"shape \(6, 5, 4, 1\) vs \(6, 5, 4\)"):
        check_same_grid(_grid_image((6, 5, 4, 1)), _grid_image(), "a.nii", full_shape=True)
