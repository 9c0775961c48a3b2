"""Tests of BIDS discovery, splits and input validation on real NIfTI files."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers.bids_builder import (
    AFFINE,
    SHAPE,
    add_subject,
    ellipsoid,
    make_dataset,
    save,
    tree_fingerprint,
)

from cesynth.ingest import (
    SCAN_ID_PATTERN,
    ScanFiles,
    discover_bids,
    expected_scan,
    list_dicom_subjects,
    scan_from_rule_inputs,
    scan_id_of,
    with_files_on_disk,
)
from cesynth.ingest_report import (
    exclusion_report,
    tabulate_reports,
    validate_and_report,
    validate_dataset,
    write_scan_report,
    write_sets_table,
)
from cesynth.io import InputError, read_json, read_tsv
from cesynth.splits import SplitFractions, assign_splits, check_assigned, participant_split
from cesynth.validation import validate_scan


def _one_scan(root: Path) -> ScanFiles:
    (scan,) = discover_bids(root)
    return scan


def _validation_error(tmp_path: Path, corrupt: Callable[[dict[str, Path]], None],
                      validation_options: dict | None = None, **subject_options) -> str:
    """Build subject 07, apply ``corrupt`` to its files, and return the validation message."""
    root = make_dataset(tmp_path / "bids")
    paths = add_subject(root, "07", **subject_options)
    corrupt(paths)
    with pytest.raises(InputError) as caught:
        validate_scan(_one_scan(root), **(validation_options or {}))
    assert caught.value.who == "sub-07"
    return str(caught.value)


# ------------------------------------------------------------------ one test per kind of bad input


def test_truncated_gzip_is_reported_as_unreadable(tmp_path):
    def truncate(paths):
        raw = paths["T2w"].read_bytes()
        paths["T2w"].write_bytes(raw[: len(raw) // 2])

    message = _validation_error(tmp_path, truncate)
    assert message.startswith("sub-07: sub-07_T2w.nii.gz: unreadable NIfTI")


def test_non_gzip_file_is_reported_without_its_full_path(tmp_path):
    message = _validation_error(tmp_path, lambda p: p["T2w"].write_bytes(b"not an image" * 40))
    assert message.startswith("sub-07: sub-07_T2w.nii.gz: unreadable NIfTI")
    assert str(tmp_path) not in message


def test_wrong_dimensionality_is_reported(tmp_path):
    def make_4d(paths):
        save(np.stack([ellipsoid(), ellipsoid(seed=1)], axis=-1), paths["ceT1w"])

    message = _validation_error(tmp_path, make_4d)
    assert message == ("sub-07: sub-07_ce-gadolinium_T1w.nii.gz: expected a 3D image, "
                       "got shape (12, 14, 10, 2)")


def test_single_volume_4d_anatomy_is_accepted(tmp_path):
    root = make_dataset(tmp_path / "bids")
    paths = add_subject(root, "07")
    save(ellipsoid()[..., np.newaxis], paths["T2w"])
    assert validate_scan(_one_scan(root))["status"] == "included"


def test_nan_is_reported(tmp_path):
    def add_nan(paths):
        data = ellipsoid()
        data[3, 4, 5] = np.nan
        save(data, paths["T1w"])

    message = _validation_error(tmp_path, add_nan)
    assert message == "sub-07: sub-07_T1w.nii.gz: 1 non-finite voxels (NaN or inf)"


def test_constant_image_is_reported(tmp_path):
    message = _validation_error(tmp_path, lambda p: save(np.full(SHAPE, 5.0), p["T2w"]))
    assert message == "sub-07: sub-07_T2w.nii.gz: constant image (every voxel is 5)"


def test_singular_affine_is_reported(tmp_path):
    singular = AFFINE.copy()
    singular[:3, 2] = singular[:3, 0]
    message = _validation_error(tmp_path, lambda p: save(ellipsoid(), p["T1w"], singular))
    assert message.startswith("sub-07: sub-07_T1w.nii.gz: singular affine")


def test_implausible_voxel_size_is_reported(tmp_path):
    huge = np.diag([20.0, 2.0, 2.0, 1.0])
    message = _validation_error(tmp_path, lambda p: save(ellipsoid(), p["T2w"], huge))
    assert message == "sub-07: sub-07_T2w.nii.gz: voxel size 20 x 2 x 2 mm outside 0.1-10.0 mm"


def test_bval_count_mismatch_is_reported(tmp_path):
    message = _validation_error(
        tmp_path, lambda p: p["bval"].write_text("0 500 500 500 1000 1000\n"))
    assert message == "sub-07: sub-07_dwi.bval: 6 b-values for 7 volumes"


def test_bvec_count_mismatch_is_reported(tmp_path):
    def drop_direction(paths):
        rows = paths["bvec"].read_text().splitlines()
        paths["bvec"].write_text("\n".join(" ".join(row.split()[:6]) for row in rows))

    message = _validation_error(tmp_path, drop_direction)
    assert message == "sub-07: sub-07_dwi.bvec: 6 directions for 7 volumes"


def test_bvec_with_two_rows_is_reported(tmp_path):
    def drop_row(paths):
        paths["bvec"].write_text("\n".join(paths["bvec"].read_text().splitlines()[:2]))

    message = _validation_error(tmp_path, drop_row)
    assert message == "sub-07: sub-07_dwi.bvec: 2 rows (expected 3: x, y, z)"


def test_missing_bval_file_is_reported(tmp_path):
    message = _validation_error(tmp_path, lambda p: p["bval"].unlink())
    assert message == "sub-07: sub-07_dwi.bval: missing (required with sub-07_dwi.nii.gz)"


STRICT_SHELLS = {"required_b_values": (0, 500, 1000)}  # the paper's shells all required


def test_missing_b1000_is_reported_when_required(tmp_path):
    message = _validation_error(
        tmp_path, lambda p: p["bval"].write_text("0 500 500 500 500 500 500\n"), STRICT_SHELLS)
    assert message == ("sub-07: sub-07_dwi.bval: no volume at b=1000 (within 50); "
                       "b-values found: 0, 500")


def test_b_value_outside_tolerance_is_reported_when_required(tmp_path):
    message = _validation_error(
        tmp_path, lambda p: p["bval"].write_text("0 500 500 500 1080 1080 1080\n"),
        STRICT_SHELLS)
    assert message == ("sub-07: sub-07_dwi.bval: no volume at b=1000 (within 50); "
                       "b-values found: 0, 500, 1080")


@pytest.mark.parametrize("bvals, fitted", [("0 1000 1000 1000 1000 1000 1000", [0, 1000]),
                                           ("0 500 500 500 1080 1080 1080", [0, 500, 1080]),
                                           ("0 500 500 500 1000 1000 1000", [0, 500, 1000]),
                                           ("0 0 500 800 1000 1000 1000", [0, 500, 1000])])
def test_b0_plus_any_shell_is_accepted_by_default(tmp_path, bvals, fitted):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "07")["bval"].write_text(bvals + "\n")
    assert validate_scan(_one_scan(root))["adc_b_values"] == fitted


@pytest.mark.parametrize("bvals, problem", [
    ("500 500 500 1000 1000 1000 1000", "no volume at b=0 (within 50); b-values found: 500, 1000"),
    ("0 0 0 0 0 0 0", "one b-value only (the ADC needs two shells); b-values found: 0")])
def test_dwi_without_b0_or_second_shell_is_reported(tmp_path, bvals, problem):
    message = _validation_error(tmp_path, lambda p: p["bval"].write_text(bvals + "\n"))
    assert message == f"sub-07: sub-07_dwi.bval: {problem}"


def test_b_value_inside_tolerance_is_accepted(tmp_path):
    root = make_dataset(tmp_path / "bids")
    paths = add_subject(root, "07")
    paths["bval"].write_text("5 490 500 510 1000 1030 990\n")
    assert validate_scan(_one_scan(root))["b_values"] == [5, 490, 500, 510, 990, 1000, 1030]


def test_missing_target_is_reported_for_training(tmp_path):
    message = _validation_error(tmp_path, lambda p: None, modalities=("T1w", "T2w", "dwi"))
    assert message == ("sub-07: sub-07_ce-gadolinium_T1w.nii.gz: "
                       "missing (the CE-T1 target is required)")


def test_missing_target_is_accepted_for_prediction(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "07", modalities=("T1w", "T2w", "dwi"))
    report = validate_scan(_one_scan(root), require_target=False)
    assert report["missing"] == ["ceT1w"]


def test_a_declared_flair_that_is_missing_stops_the_subject_with_one_line(tmp_path):
    message = _validation_error(tmp_path, lambda p: None,
                                validation_options={"require_flair": True})
    assert message == ("sub-07: sub-07_FLAIR.nii.gz: missing (a model's inputs, train.modalities "
                       "or an experiment's, include FLAIR; add it, or list 07 in "
                       "ingest.exclude_subjects)")


def test_a_flair_is_found_checked_and_reported_but_never_missing_unless_declared(tmp_path):
    root = make_dataset(tmp_path / "bids")
    paths = add_subject(root, "07", modalities=("T1w", "ceT1w", "T2w", "FLAIR", "dwi"))
    add_subject(root, "08")
    with_flair, without = discover_bids(root)
    assert with_flair.flair == paths["FLAIR"] and without.flair is None
    report = validate_scan(with_flair, require_flair=True)
    assert report["modalities"][-1] == "FLAIR" and report["files"]["FLAIR"]["shape"] == list(SHAPE)
    assert validate_scan(without)["missing"] == []  # an optional input, not declared
    save(np.full(SHAPE, 3.0, np.float32), paths["FLAIR"])
    with pytest.raises(InputError, match=r"^sub-07: sub-07_FLAIR.nii.gz: constant image"):
        validate_scan(with_flair)


def test_missing_t1w_is_reported(tmp_path):
    message = _validation_error(tmp_path, lambda p: None, modalities=("ceT1w", "T2w", "dwi"))
    assert message == "sub-07: sub-07_T1w.nii.gz: missing (T1w is always required)"


def test_tumor_mask_on_another_grid_is_reported(tmp_path):
    def regrid(paths):
        mask = np.zeros((12, 14, 11), np.uint8)
        mask[5:8, 6:9, 4:6] = 1
        save(mask, paths["tumor_mask"])

    message = _validation_error(tmp_path, regrid, tumor_mask=True)
    assert message == ("sub-07: sub-07_desc-tumor_mask.nii.gz: not on the CE-T1 grid: "
                       "shape (12, 14, 11) vs (12, 14, 10)")


def test_tumor_mask_with_shifted_affine_is_reported(tmp_path):
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5

    def shift(paths):
        save(_mask_data(paths), paths["tumor_mask"], shifted)

    message = _validation_error(tmp_path, shift, tumor_mask=True)
    assert message.endswith("not on the CE-T1 grid: affine off by 0.5 mm (tolerance 0.01 mm)")


def test_non_binary_tumor_mask_is_reported(tmp_path):
    def soften(paths):
        save(_mask_data(paths) * 0.5, paths["tumor_mask"])

    message = _validation_error(tmp_path, soften, tumor_mask=True)
    assert message == ("sub-07: sub-07_desc-tumor_mask.nii.gz: "
                       "not a binary mask (values other than 0 and 1: 0.5)")


def _mask_data(paths: dict[str, Path]) -> np.ndarray:
    return np.asarray(nib.load(str(paths["tumor_mask"])).dataobj, dtype=np.float32)


# ------------------------------------------------------------------ discovery and reports


def test_valid_subject_report(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01")
    report = validate_scan(_one_scan(root))
    assert report["status"] == "included"
    assert report["modalities"] == ["T1w", "ceT1w", "T2w", "dwi"]
    assert report["missing"] == []
    assert report["dwi_volumes"] == 7
    assert report["b_values"] == [0, 500, 1000]
    assert report["files"]["T1w"] == {"file": "sub-01_T1w.nii.gz", "shape": [12, 14, 10],
                                      "voxel_size_mm": [2.0, 2.0, 2.5]}


def test_subject_without_t2_and_dwi_is_kept_and_reported_missing(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01")
    add_subject(root, "02", modalities=("T1w", "ceT1w"))
    scans = discover_bids(root)
    assert [scan.scan_id for scan in scans] == ["01", "02"]
    assert scans[1].available_modalities() == ("T1w", "ceT1w")
    report = validate_scan(scans[1])
    assert report["status"] == "included"
    assert report["missing"] == ["T2w", "dwi"]
    table = assign_splits(scans, SplitFractions(0.1, 0.2))
    assert table.set_index("scan_id").loc["02", ["has_T2w", "has_dwi"]].tolist() == [False,
                                                                                       False]


def test_uncompressed_nifti_is_found(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01", modalities=("ceT1w",))
    t1w = save(ellipsoid(), root / "sub-01" / "anat" / "sub-01_T1w.nii")
    assert _one_scan(root).t1w == t1w


def test_sessions_give_distinct_scan_ids(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01", session="1")
    add_subject(root, "01", session="2", modalities=("T1w", "ceT1w"))
    scans = discover_bids(root)
    assert [(s.scan_id, s.participant, s.session) for s in scans] == [("01_ses-1", "01", "1"),
                                                                      ("01_ses-2", "01", "2")]
    assert scans[1].t1w.name == "sub-01_ses-2_T1w.nii.gz"
    assert validate_scan(scans[0])["scan_id"] == "01_ses-1"
    one_patient = assign_splits(scans, SplitFractions(0.5, 0.2))["split"]
    assert len(set(one_patient)) == 1  # one patient, one side


def test_scan_ids_are_the_bids_entities_without_sub():
    assert scan_id_of("01") == "01"
    assert scan_id_of("01", "pre") == "01_ses-pre"
    assert re.fullmatch(SCAN_ID_PATTERN, "01_ses-pre") and re.fullmatch(SCAN_ID_PATTERN, "01")
    for not_an_id in ("01sespre_", "01_ses-", "01_run-1", "01_ses-pre_ses-post", "sub-01"):
        assert not re.fullmatch(SCAN_ID_PATTERN, not_an_id)


def test_a_participant_named_like_a_session_scan_keeps_its_own_id(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01", session="2")
    add_subject(root, "01ses2")
    assert [scan.scan_id for scan in discover_bids(root)] == ["01_ses-2", "01ses2"]


def test_sessions_are_split_by_participant_not_by_scan(tmp_path):
    root = make_dataset(tmp_path / "bids")
    participants = [f"{i:02d}" for i in range(12)]
    for participant in participants:
        for session in ("pre", "post"):
            add_subject(root, participant, session=session, modalities=("T1w",))
    fractions = SplitFractions(0.3, 0.3)
    table = assign_splits(discover_bids(root), fractions)
    assert len(table) == 24
    for row in table.itertuples():
        assert row.scan_id == f"{row.participant}_ses-{row.session}"
        assert row.split == participant_split(row.participant, fractions)
    assert table.groupby("participant")["split"].nunique().eq(1).all()


def test_set_from_participants_tsv_overrides_tumor_mask_rule(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01")
    add_subject(root, "02", tumor_mask=True)
    add_subject(root, "03")
    (root / "participants.tsv").write_text("participant_id\tset\nsub-01\tB\nsub-02\tA\n"
                                           "sub-03\tn/a\n")
    assert [scan.set for scan in discover_bids(root)] == ["B", "A", "A"]


def test_set_from_tumor_mask_without_set_column(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01")
    add_subject(root, "02", tumor_mask=True)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t50\nsub-02\t60\n")
    scans = discover_bids(root)
    assert [scan.set for scan in scans] == ["A", "B"]
    assert scans[1].tumor_mask is not None
    splits = assign_splits(scans, SplitFractions(0.1, 0.2)).set_index("scan_id")["split"]
    assert splits["02"] == "test"


def test_bad_set_value_names_participants_tsv(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01")
    (root / "participants.tsv").write_text("participant_id\tset\nsub-01\tC\n")
    with pytest.raises(InputError) as caught:
        discover_bids(root)
    assert caught.value.who.endswith("participants.tsv")
    assert "'C' (expected A or B)" in caught.value.problem


def test_not_a_bids_dataset_is_rejected(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        discover_bids(tmp_path / "absent")
    (tmp_path / "sub-01").mkdir()
    with pytest.raises(InputError, match="no dataset_description.json"):
        discover_bids(tmp_path)
    with pytest.raises(InputError, match="no sub-"):
        discover_bids(make_dataset(tmp_path / "empty"))


def test_split_is_stable_when_subjects_are_added(tmp_path):
    fractions = SplitFractions(0.2, 0.2)
    first = [f"{i:03d}" for i in range(50)]
    second = [f"{i:03d}" for i in range(50, 100)]
    before = {p: participant_split(p, fractions) for p in first}
    after = {p: participant_split(p, fractions) for p in first + second}
    assert all(after[p] == before[p] for p in first)
    many = [participant_split(f"p{i}", SplitFractions(0.1, 0.2)) for i in range(2000)]
    assert abs(many.count("validation") / 2000 - 0.1) < 0.025
    assert abs(many.count("test") / 2000 - 0.2) < 0.03


def test_split_is_sha256_of_the_participant_label():
    for label in ("001", "abc", "P42"):
        position = int(hashlib.sha256(label.encode()).hexdigest()[:16], 16) / 2.0**64
        for validation, test in ((0.1, 0.2), (0.5, 0.3), (0.0, 0.9)):
            expected = ("validation" if position < validation else
                        "test" if position < validation + test else "train")
            assert participant_split(label, SplitFractions(validation, test)) == expected


def test_a_declared_split_wins_over_the_hash_and_names_participants_as_written():
    sets = {"validation_fraction": 0.0, "test_fraction": 0.0,
            "assigned": {"Brats18_2013_2_1": "validation", "sub-07": "test"}}
    fractions = SplitFractions.from_config(sets)
    assert participant_split("Brats18201321", fractions) == "validation"
    assert participant_split("07", fractions) == "test"
    assert participant_split("08", fractions) == "train"  # not declared: the hash
    check_assigned(fractions, {"Brats18201321": "A", "07": "A", "08": "A"})
    with pytest.raises(ValueError, match="07: a Set B participant is always test, not train"):
        check_assigned(SplitFractions(assigned=(("07", "train"),)), {"07": "B"})
    with pytest.raises(ValueError, match="unknown splits"):
        SplitFractions(assigned=(("07", "holdout"),))


@pytest.mark.parametrize(("validation", "test"), [(1.5, 0.1), (-0.1, 0.1), (0.6, 0.5)])
def test_split_rejects_bad_fractions(validation, test):
    with pytest.raises(ValueError, match="split fractions"):
        SplitFractions(validation, test)


def test_a_participant_with_a_tumor_mask_in_one_session_is_set_b_in_all(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01", session="pre")
    add_subject(root, "01", session="post", tumor_mask=True)
    add_subject(root, "02", session="pre")
    scans = {scan.scan_id: scan for scan in discover_bids(root)}
    assert scans["01_ses-pre"].set == scans["01_ses-post"].set == "B"
    assert scans["02_ses-pre"].set == "A"
    splits = assign_splits(scans.values()).set_index("scan_id")["split"]
    assert splits["01_ses-pre"] == splits["01_ses-post"] == "test"


def test_splits_on_disk_are_stable_when_subjects_are_added(tmp_path):
    root = make_dataset(tmp_path / "bids")
    for i in range(3):
        add_subject(root, f"{i:02d}", modalities=("T1w",))
    fractions = SplitFractions(0.4, 0.3)
    before = assign_splits(discover_bids(root), fractions).set_index("scan_id")["split"]
    for i in range(3, 6):
        add_subject(root, f"{i:02d}", modalities=("T1w",))
    after = assign_splits(discover_bids(root), fractions).set_index("scan_id")["split"]
    assert after.loc[before.index].tolist() == before.tolist()


def test_source_tree_is_unchanged_by_discovery_and_validation(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01", tumor_mask=True)
    add_subject(root, "02", session="1")
    add_subject(root, "03", modalities=("T1w",))
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n")
    before = tree_fingerprint(root)
    for scan in discover_bids(root):
        try:
            validate_scan(scan)
        except InputError:
            pass
    assign_splits(discover_bids(root))
    assert tree_fingerprint(root) == before


def test_tabulate_reports_lists_included_and_excluded_scans(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01")
    bad = add_subject(root, "02", modalities=("T1w", "ceT1w", "dwi"))
    bad["bval"].write_text("0 500 1000\n")
    reports = []
    for scan in discover_bids(root):
        try:
            report = validate_scan(scan)
        except InputError as err:
            report = exclusion_report(scan, err)
        path = tmp_path / "qc" / f"sub-{scan.scan_id}_ingest.json"
        write_scan_report(report, path)
        reports.append(path)
    assert read_json(reports[1])["status"] == "excluded"
    out = tmp_path / "qc" / "ingest.tsv"
    table = tabulate_reports(reports, out, SplitFractions(0.1, 0.2))
    on_disk = read_tsv(out)
    assert on_disk["status"].tolist() == ["included", "excluded"]
    assert on_disk["reason"].tolist()[1] == "sub-02: sub-02_dwi.bval: 3 b-values for 7 volumes"
    assert pd.isna(on_disk["reason"].tolist()[0])
    assert on_disk["missing"].tolist()[1] == "T2w"
    assert on_disk["modalities"].tolist()[0] == "T1w,ceT1w,T2w,dwi"
    assert table["split"].tolist()[0] in ("train", "validation", "test")
    assert list(on_disk.columns) == ["scan_id", "participant", "session", "set", "split",
                                     "status", "reason", "modalities", "missing"]
    assert not list(out.parent.glob(".*"))  # no temporary files left behind


def test_report_names_no_file_path_outside_the_dataset(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01")
    report = validate_scan(_one_scan(root))
    assert str(tmp_path) not in str(report)



# ------------------------------------------------------------------ helpers the workflow calls


def test_expected_scan_matches_discovery_once_files_exist(tmp_path):
    root = make_dataset(tmp_path / "bids")
    expected = expected_scan(root, "05", "B", session="1")
    assert expected.cet1w == root / "sub-05/ses-1/anat/sub-05_ses-1_ce-gadolinium_T1w.nii.gz"
    add_subject(root, "05", session="1", tumor_mask=True)
    assert discover_bids(root) == [expected]
    assert with_files_on_disk(expected) == expected


def test_rescan_sees_only_files_that_exist(tmp_path):
    root = make_dataset(tmp_path / "bids")
    expected = expected_scan(root, "05")
    add_subject(root, "05", modalities=("T1w", "ceT1w"))
    found = with_files_on_disk(expected)
    assert found.available_modalities() == ("T1w", "ceT1w")
    assert found.bval is None and found.set == "A"


def test_scan_from_rule_inputs_rebuilds_the_scan(tmp_path):
    root = make_dataset(tmp_path / "bids")
    paths = add_subject(root, "05", session="2", modalities=("T1w", "ceT1w", "dwi"))
    (root / "participants.tsv").write_text("participant_id\tset\nsub-05\tB\n")
    inputs = {"t1w": str(paths["T1w"]), "cet1w": str(paths["ceT1w"]),
              "dwi": str(paths["dwi"]), "bval": str(paths["bval"]), "bvec": str(paths["bvec"])}
    scan = scan_from_rule_inputs("05_ses-2", inputs)
    assert scan == _one_scan(root)
    assert (scan.participant, scan.session, scan.set) == ("05", "2", "B")
    for other in ("06", "05", "05ses2"):  # another participant, or the session left out
        with pytest.raises(InputError, match="belongs to another scan"):
            scan_from_rule_inputs(other, inputs)


def test_list_dicom_subjects(tmp_path):
    for label in ("P2", "P1", ".cache"):
        (tmp_path / label).mkdir()
    (tmp_path / "readme.txt").write_text("x")
    assert list_dicom_subjects(tmp_path) == ["P1", "P2"]
    (tmp_path / "P_3").mkdir()
    with pytest.raises(InputError, match="not alphanumeric"):
        list_dicom_subjects(tmp_path)


def test_validate_dataset_and_sets_table(tmp_path):
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01")
    add_subject(root, "02", tumor_mask=True)
    bad = add_subject(root, "03")
    bad["bval"].unlink()
    table = validate_dataset(root, SplitFractions(0.1, 0.2), out_tsv=tmp_path / "ingest.tsv")
    assert table["status"].tolist() == ["included", "included", "excluded"]
    assert read_tsv(tmp_path / "ingest.tsv")["scan_id"].tolist() == ["01", "02", "03"]
    reports = []
    for scan in discover_bids(root):
        path = tmp_path / "qc" / f"sub-{scan.scan_id}.json"
        if scan.scan_id == "03":
            with pytest.raises(InputError, match="sub-03: sub-03_dwi.bval"):
                validate_and_report(scan, path, b_values=(0, 500, 1000), b_tolerance=50.0)
            assert not path.exists()
            assert read_json(tmp_path / "qc" / "sub-03.excluded.json")["status"] == "excluded"
            continue
        report = validate_and_report(scan, path, b_values=(0, 500, 1000), b_tolerance=50.0)
        assert read_json(path) == json_roundtrip(report)
        reports.append(path)
    table = tabulate_reports(sorted((tmp_path / "qc").glob("sub-*.json")), tmp_path / "i.tsv")
    assert table["status"].tolist() == ["included", "included", "excluded"]
    sets = write_sets_table(reports, tmp_path / "sets.tsv", SplitFractions(0.1, 0.2))
    assert sets["scan_id"].tolist() == ["01", "02"]
    assert sets["split"].tolist()[1] == "test"
    assert sets["has_tumor_mask"].tolist() == [False, True]


def json_roundtrip(report: dict) -> dict:
    return json.loads(json.dumps(report, default=str))
