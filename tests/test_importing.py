"""`cesynth import`: phantom cohorts in the UCSF-PDGM and BraTS layouts to the BIDS layout, then
the pipeline's own validation of the result; the workflow's dry run with import_dir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from helpers.bids_builder import tree_fingerprint
from helpers.workflow import CESYNTH, REPO, dry_run_jobs, snakemake

from cesynth import import_layouts, importing
from cesynth.io import InputError, read_tsv
from cesynth.phantom import PhantomSettings
from cesynth.phantom.layouts import case_ids, write_layout_cohort

SETTINGS = PhantomSettings(voxel_mm=4.0)
N_CASES = 2
# (layout, BraTS naming) -> source file suffix per key, as the releases name them
SOURCES = {
    ("ucsf-pdgm", "2023"): {"sep": "_", "T1w": "T1", "ceT1w": "T1c", "T2w": "T2",
                            "FLAIR": "FLAIR", "adc": "ADC",
                            "md": "DTI_eddy_MD", "seg": "tumor_segmentation",
                            "brain": "brain_segmentation", "folder": "{case}_nifti",
                            "enhancing": [4], "whole": [1, 2, 4]},
    ("brats", "2023"): {"sep": "-", "T1w": "t1n", "ceT1w": "t1c", "T2w": "t2w", "FLAIR": "t2f",
                        "seg": "seg",
                        "folder": "{case}", "enhancing": [3], "whole": [1, 2, 3]},
    ("brats", "2017"): {"sep": "_", "T1w": "t1", "ceT1w": "t1ce", "T2w": "t2", "FLAIR": "flair",
                        "seg": "seg",
                        "folder": "{case}", "enhancing": [4], "whole": [1, 2, 4]},
}
LAYOUT_IDS = ["ucsf-pdgm", "brats2023", "brats2017"]


def cesynth(*args) -> subprocess.CompletedProcess:
    return subprocess.run([CESYNTH, *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def source_file(root: Path, key: tuple[str, str], case: str, what: str) -> Path:
    names = SOURCES[key]
    return root / names["folder"].format(case=case) / f"{case}{names['sep']}{names[what]}.nii.gz"


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """One phantom cohort per layout; the BraTS 2023 one through the `cesynth phantom` CLI."""
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout, naming in SOURCES:
        root = base / f"{layout}{naming}"
        if (layout, naming) == ("brats", "2023"):
            result = cesynth("phantom", "--layout", "brats", "--out", root, "--subjects",
                             N_CASES, "--seed", 5, "--voxel-mm", SETTINGS.voxel_mm)
            assert result.returncode == 0, result.stderr
        else:
            write_layout_cohort(root, layout, N_CASES, seed=5, settings=SETTINGS, naming=naming)
        out[(layout, naming)] = root
    return out


@pytest.fixture(scope="module")
def imported(cohorts, tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Each cohort imported once with the CLI; the source's fingerprint before and after."""
    base = tmp_path_factory.mktemp("imported")
    out = {}
    for key, source in cohorts.items():
        before = tree_fingerprint(source)
        bids = base / f"{key[0]}{key[1]}"
        result = cesynth("import", "--layout", key[0], source, "--out", bids)
        out[key] = {"bids": bids, "result": result, "before": before,
                    "after": tree_fingerprint(source)}
    return out


def _copy_cohort(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


@pytest.mark.parametrize("key", list(SOURCES), ids=LAYOUT_IDS)
def test_imported_flair_is_planned_and_discovered(imported, cohorts, key):
    """The plan from file names (what the workflow knows before the import ran) names the FLAIR
    the import writes, and BIDS discovery finds it there."""
    from cesynth.ingest import discover_bids

    bids = imported[key]["bids"]
    planned = {s.scan_id: s.flair for s in importing.planned_scans(cohorts[key], bids, key[0])}
    found = {s.scan_id: s.flair for s in discover_bids(bids)}
    assert planned == found and len(found) == N_CASES
    assert all(path.name.endswith("_FLAIR.nii.gz") and path.is_file() for path in found.values())


@pytest.mark.parametrize("key", list(SOURCES), ids=LAYOUT_IDS)
def test_import_writes_the_bids_layout_with_identical_voxels(imported, cohorts, key):
    run = imported[key]
    assert run["result"].returncode == 0, run["result"].stderr
    assert run["result"].stderr == ""
    bids = run["bids"]
    summary = json.loads(run["result"].stdout)
    assert summary["imported"] == N_CASES and summary["skipped"] == {}
    for case in case_ids(key[0], N_CASES, key[1]):
        label = import_layouts.subject_label(case)
        sub = bids / f"sub-{label}"
        pairs = {"T1w": sub / "anat" / f"sub-{label}_T1w.nii.gz",
                 "ceT1w": sub / "anat" / f"sub-{label}_ce-gadolinium_T1w.nii.gz",
                 "T2w": sub / "anat" / f"sub-{label}_T2w.nii.gz",
                 "FLAIR": sub / "anat" / f"sub-{label}_FLAIR.nii.gz"}
        if key[0] == "ucsf-pdgm":
            pairs["adc"] = sub / "dwi" / f"sub-{label}_adc.nii.gz"
            pairs["brain"] = sub / "anat" / f"sub-{label}_desc-brain_mask.nii.gz"
        else:
            assert not (sub / "dwi").exists()  # BraTS has no diffusion
        masks = bids / "derivatives" / "tumor_masks" / f"sub-{label}" / "anat"
        pairs["seg"] = masks / f"sub-{label}_desc-tumor_dseg.nii.gz"
        for what, path in pairs.items():
            source = nib.load(source_file(cohorts[key], key, case, what))
            copy = nib.load(path)
            assert copy.get_data_dtype() == source.get_data_dtype(), path.name
            np.testing.assert_array_equal(copy.affine, source.affine)
            if what == "brain":
                np.testing.assert_array_equal(copy.get_fdata(), source.get_fdata() != 0)
            else:
                np.testing.assert_array_equal(copy.get_fdata(), source.get_fdata())
            for field in importing.CLEARED_HEADER_FIELDS:
                assert bytes(copy.header[field]).strip(b"\0") == b"", (path.name, field)
            assert bytes(source.header["descrip"]).startswith(b"phantom")  # had text
        seg = nib.load(pairs["seg"]).get_fdata()
        mask = nib.load(masks / f"sub-{label}_desc-tumor_mask.nii.gz")
        assert mask.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(mask.get_fdata(), np.isin(seg, SOURCES[key]["enhancing"]))
        assert mask.get_fdata().any()
        labels = json.loads((masks / f"sub-{label}_desc-tumor_dseg.json").read_text())
        assert labels["TumorMaskLabels"] == SOURCES[key]["enhancing"]
        assert set(labels["LabelsPresent"]) <= {int(v) for v in labels["Labels"]}
    participants = read_tsv(bids / "participants.tsv")
    assert list(participants.columns) == ["participant_id", "set", "source_case"]
    assert list(participants["set"]) == ["B"] * N_CASES
    assert list(participants["source_case"]) == case_ids(key[0], N_CASES, key[1])
    description = json.loads((bids / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Name"] == "cesynth import"
    assert description["CesynthImport"]["layout"] == key[0]
    assert run["after"] == run["before"], "the import wrote into the source folder"
    assert not list(bids.glob(".cesynth-import-*")), "a staging folder was left behind"


def test_ucsf_adc_sidecar_says_adc_and_md_is_used_without_adc(imported, cohorts, tmp_path):
    bids = imported[("ucsf-pdgm", "2023")]["bids"]
    sidecar = json.loads((bids / "sub-UCSFPDGM0001/dwi/sub-UCSFPDGM0001_adc.json").read_text())
    assert sidecar["Source"] == "ADC" and sidecar["SourceFile"] == "UCSF-PDGM-0001_ADC.nii.gz"
    source = _copy_cohort(cohorts[("ucsf-pdgm", "2023")], tmp_path / "src")
    source_file(source, ("ucsf-pdgm", "2023"), "UCSF-PDGM-0002", "adc").unlink()
    result = importing.import_layout(source, tmp_path / "bids", "ucsf-pdgm")
    assert result["imported"]["UCSFPDGM0002"]["adc_source"] == "MD"
    sidecar = json.loads((tmp_path / "bids/sub-UCSFPDGM0002/dwi/sub-UCSFPDGM0002_adc.json")
                         .read_text())
    assert sidecar["Source"] == "MD"
    md = nib.load(source_file(source, ("ucsf-pdgm", "2023"), "UCSF-PDGM-0002", "md"))
    adc = nib.load(tmp_path / "bids/sub-UCSFPDGM0002/dwi/sub-UCSFPDGM0002_adc.nii.gz")
    np.testing.assert_array_equal(adc.get_fdata(), md.get_fdata())


@pytest.mark.parametrize("labels, expected", [("whole", "whole"), ("1,4", [1, 4]),
                                              ([1, 2], [1, 2])])
def test_tumor_labels_choose_the_mask(cohorts, tmp_path, labels, expected):
    key = ("brats", "2017")
    expected = SOURCES[key][expected] if isinstance(expected, str) else expected
    importing.import_layout(cohorts[key], tmp_path, "brats", tumor_labels=labels)
    masks = tmp_path / "derivatives/tumor_masks/sub-BraTS20Training001/anat"
    seg = nib.load(masks / "sub-BraTS20Training001_desc-tumor_dseg.nii.gz").get_fdata()
    mask = nib.load(masks / "sub-BraTS20Training001_desc-tumor_mask.nii.gz").get_fdata()
    np.testing.assert_array_equal(mask, np.isin(seg, expected))


def test_set_option_overrides_auto(cohorts, tmp_path):
    result = cesynth("import", "--layout", "brats", cohorts[("brats", "2023")], "--out",
                     tmp_path / "bids", "--set", "A")
    assert result.returncode == 0, result.stderr
    assert set(read_tsv(tmp_path / "bids/participants.tsv")["set"]) == {"A"}


def test_missing_required_contrast_is_one_line_naming_case_and_file(cohorts, tmp_path):
    key = ("brats", "2023")
    source = _copy_cohort(cohorts[key], tmp_path / "src")
    source_file(source, key, "BraTS-GLI-00002-000", "ceT1w").unlink()
    before = tree_fingerprint(source)
    result = cesynth("import", "--layout", "brats", source, "--out", tmp_path / "bids")
    assert result.returncode == 1
    assert result.stderr == ("error: BraTS-GLI-00002-000: BraTS-GLI-00002-000-t1c.nii.gz: "
                             "missing\n")
    assert not (tmp_path / "bids").exists()  # all or nothing: found before anything is written
    kept = cesynth("import", "--layout", "brats", source, "--out", tmp_path / "kept",
                   "--keep-going")
    assert kept.returncode == 1
    lines = kept.stderr.splitlines()
    assert lines[0] == "error: BraTS-GLI-00002-000: BraTS-GLI-00002-000-t1c.nii.gz: missing"
    assert lines[1:] == [f"error: {source}: 1 of 2 cases skipped"]
    assert list(read_tsv(tmp_path / "kept/participants.tsv")["participant_id"]) == [
        "sub-BraTSGLI00001000"]
    assert not (tmp_path / "kept/sub-BraTSGLI00002000").exists()
    assert tree_fingerprint(source) == before


def test_case_without_t2_or_diffusion_is_kept(cohorts, tmp_path):
    key = ("ucsf-pdgm", "2023")
    source = _copy_cohort(cohorts[key], tmp_path / "src")
    for what in ("T2w", "adc", "md"):
        source_file(source, key, "UCSF-PDGM-0001", what).unlink()
    result = importing.import_layout(source, tmp_path / "bids", "ucsf-pdgm")
    record = result["imported"]["UCSFPDGM0001"]
    assert record["missing"] == ["T2w", "adc"]
    assert not (tmp_path / "bids/sub-UCSFPDGM0001/dwi").exists()
    assert (tmp_path / "bids/sub-UCSFPDGM0001/anat/sub-UCSFPDGM0001_T1w.nii.gz").is_file()


def test_out_inside_the_source_is_refused(cohorts):
    source = cohorts[("brats", "2017")]
    before = tree_fingerprint(source)
    result = cesynth("import", "--layout", "brats", source, "--out", source / "bids")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: ") and "inside the source folder" in result.stderr
    assert tree_fingerprint(source) == before


def test_out_holding_another_dataset_is_refused_and_reimport_is_allowed(cohorts, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset_description.json").write_text('{"Name": "mine", "BIDSVersion": "1.9.0"}')
    with pytest.raises(InputError, match="not written by cesynth import"):
        importing.import_layout(cohorts[("brats", "2017")], other, "brats")
    bids = tmp_path / "bids"
    source = _copy_cohort(cohorts[("brats", "2017")], tmp_path / "src")
    first = importing.import_layout(source, bids, "brats")
    t2 = bids / "sub-BraTS20Training001/anat/sub-BraTS20Training001_T2w.nii.gz"
    assert t2.is_file()
    source_file(source, ("brats", "2017"), "BraTS20_Training_001", "T2w").unlink()
    again = importing.import_layout(source, bids, "brats")
    assert sorted(again["imported"]) == sorted(first["imported"])
    assert len(read_tsv(bids / "participants.tsv")) == N_CASES
    assert not t2.exists()  # the re-imported subject replaces the earlier one as a whole


def test_validate_accepts_the_imported_datasets(imported):
    for key, run in imported.items():
        result = cesynth("validate", "--bids", run["bids"])
        assert result.returncode == 0, (key, result.stderr)
        assert json.loads(result.stdout) == {"included": N_CASES}


# ----------------------------------------------------------------- small hand-made layouts


def _write(path: Path, data: np.ndarray, *, slope: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0]))
    if slope is not None:
        img.header.set_slope_inter(slope, 10.0)
    img.header["descrip"] = b"Patient Jane Doe 1970-01-01"
    nib.save(img, str(path))


def test_scaled_integer_images_keep_stored_values_and_scaling(tmp_path):
    values = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    _write(tmp_path / "src/BraTS-GLI-00007-000/BraTS-GLI-00007-000-t1n.nii.gz", values,
           slope=0.5)
    _write(tmp_path / "src/BraTS-GLI-00007-000/BraTS-GLI-00007-000-t1c.nii.gz", values)
    importing.import_layout(tmp_path / "src", tmp_path / "bids", "brats")
    source = nib.load(tmp_path / "src/BraTS-GLI-00007-000/BraTS-GLI-00007-000-t1n.nii.gz")
    copy = nib.load(tmp_path / "bids/sub-BraTSGLI00007000/anat/sub-BraTSGLI00007000_T1w.nii.gz")
    np.testing.assert_array_equal(copy.get_fdata(), source.get_fdata())
    np.testing.assert_array_equal(np.asanyarray(copy.dataobj.get_unscaled()), values)
    assert (copy.dataobj.slope, copy.dataobj.inter) == (0.5, 10.0)
    assert bytes(copy.header["descrip"]).strip(b"\0") == b""
    assert read_tsv(tmp_path / "bids/participants.tsv")["set"].tolist() == ["A"]  # no seg


def test_labels_that_collide_and_ambiguous_patterns_are_errors(tmp_path):
    data = np.zeros((2, 2, 2), np.int16)
    for case in ("BraTS-GLI-1", "BraTSGLI1"):
        for suffix in ("t1n", "t1c"):
            _write(tmp_path / "src" / case / f"{case}-{suffix}.nii.gz", data)
    with pytest.raises(InputError, match="both map to sub-BraTSGLI1"):
        import_layouts.plan_import(tmp_path / "src", "brats")
    assert import_layouts.subject_label("UCSF-PDGM-0004") == "UCSFPDGM0004"
    shutil.rmtree(tmp_path / "src" / "BraTSGLI1")
    plans = import_layouts.plan_import(tmp_path / "src", "brats", {"T1w": "*-t1*"})
    assert "matches 2 files" in plans[0].problem


def test_workflow_dry_run_imports_first(cohorts, tmp_path):
    config = {"bids_dir": str(tmp_path / "bids"), "results_dir": str(tmp_path / "results"),
              "demo": {"enabled": False}, "import_dir": str(cohorts[("ucsf-pdgm", "2023")]),
              "import": {"layout": "ucsf-pdgm", "tumor_labels": "whole"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    jobs = dry_run_jobs(tmp_path, "--configfile", str(path))
    assert jobs["import_dataset"] == 1
    assert jobs["validate_subject"] == N_CASES
    assert jobs["convert_adc_map"] == N_CASES and "fit_adc" not in jobs
    # the layout is co-registered and skull-stripped: declared so, nothing is registered
    config["ingest"] = {"coregistered": True, "skull_stripped": True}
    path.write_text(yaml.safe_dump(config))
    jobs = dry_run_jobs(tmp_path, "--configfile", str(path))
    assert "register_anat_to_cet1w" not in jobs and "register_dwi_to_cet1w" not in jobs
    assert jobs["coregistered_anat_to_cet1w"] == 2 * N_CASES  # T1w and T2w


def test_segmentation_without_the_chosen_labels_gives_no_mask_and_set_a(tmp_path):
    case = tmp_path / "src" / "BraTS-GLI-00009-000"
    image = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    _write(case / "BraTS-GLI-00009-000-t1n.nii.gz", image)
    _write(case / "BraTS-GLI-00009-000-t1c.nii.gz", image)
    _write(case / "BraTS-GLI-00009-000-seg.nii.gz", (image % 3).astype(np.uint8))  # 0, 1, 2
    result = importing.import_layout(tmp_path / "src", tmp_path / "bids", "brats")
    record = result["imported"]["BraTSGLI00009000"]
    assert record["set"] == "A" and record["tumor_voxels"] == 0
    assert "tumor_dseg" in record["files"] and "tumor_mask" not in record["files"]
    with pytest.raises(InputError, match="none of the tumor labels"):
        importing.import_layout(tmp_path / "src", tmp_path / "forced", "brats", set_mode="B")
    assert not (tmp_path / "forced").exists()  # nothing imported, nothing left behind
    whole = importing.import_layout(tmp_path / "src", tmp_path / "whole", "brats",
                                    tumor_labels="whole")
    assert whole["imported"]["BraTSGLI00009000"]["set"] == "B"


def _small_case(root: Path, case: str, seg: np.ndarray, names: tuple[str, ...]) -> Path:
    """A case of 2x2x2 images (T1, T1c, segmentation) under ``root/<folder>``."""
    image = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    folder, t1, t1c, seg_name = names
    for name, data in ((t1, image), (t1c, image),
                       (seg_name, seg.reshape(2, 2, 2).astype(np.uint8))):
        _write(root / folder.format(case=case) / f"{case}{name}.nii.gz", data)
    return root / folder.format(case=case) / f"{case}{seg_name}.nii.gz"


@pytest.mark.parametrize("case", ["asked-label-unknown", "map-label-unknown"])
def test_tumor_labels_the_layout_does_not_know_stop_with_one_line(case, tmp_path):
    """Issue 26: ``--tumor-labels 9``, or a UCSF-PDGM map using label 3 (BraTS 2023's
    enhancing label), gave no mask and put the patients in Set A (training) with exit 0."""
    if case == "asked-label-unknown":
        layout, names, labels = "brats", ("{case}", "-t1n", "-t1c", "-seg"), "9"
        seg_case = "BraTS-GLI-00001-000"  # the first of two: neither is written
        seg = _small_case(tmp_path / "src", seg_case, np.array([0, 1, 2, 3] * 2), names)
        _small_case(tmp_path / "src", "BraTS-GLI-00009-000", np.array([0, 1, 2, 3] * 2), names)
        problem = f"{seg.name}: tumor labels 9 asked, labels found 1, 2, 3"
    else:
        layout, names, labels = "ucsf-pdgm", ("{case}_nifti", "_T1", "_T1c",
                                              "_tumor_segmentation"), "enhancing"
        seg_case = "UCSF-PDGM-0001"
        seg = _small_case(tmp_path / "src", seg_case, np.array([0, 1, 2, 3] * 2), names)
        problem = f"{seg.name}: labels found 1, 2, 3, tumor labels 4 asked; label 3"
    before = tree_fingerprint(tmp_path / "src")
    result = cesynth("import", "--layout", layout, tmp_path / "src", "--out", tmp_path / "bids",
                     "--tumor-labels", labels)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {seg_case}: {problem}"), lines
    assert not (tmp_path / "bids").exists()
    assert tree_fingerprint(tmp_path / "src") == before


@pytest.mark.parametrize("case, problem", [
    ("adc-x100", "UCSF-PDGM-0001_ADC.nii.gz: ADC median 0.13 is in no known unit"),
    ("adc-negative", "UCSF-PDGM-0001_ADC.nii.gz: ADC map has no positive voxel"),
    ("pixdim-zero", "UCSF-PDGM-0001_T1.nii.gz: voxel size (pixdim) 0 x 1 x 1: every size "
                    "must be positive"),
])
def test_import_refuses_adc_in_no_unit_and_zero_voxel_size(case, problem, tmp_path):
    """Issue 26: import passed an ADC map x100 or negative (predict refuses it) and wrote a
    pixdim of 0 as 1 mm."""
    names = ("{case}_nifti", "_T1", "_T1c", "_tumor_segmentation")
    folder = _small_case(tmp_path / "src", "UCSF-PDGM-0001", np.array([0, 4] * 4), names).parent
    adc = {"adc-x100": 0.1, "adc-negative": -1e-3}.get(case, 1e-3)
    _write(folder / "UCSF-PDGM-0001_ADC.nii.gz",
           (adc * (1 + np.arange(8) / 10)).reshape(2, 2, 2).astype(np.float32))
    if case == "pixdim-zero":
        t1 = folder / "UCSF-PDGM-0001_T1.nii.gz"
        img = nib.load(t1)
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
        img.header["pixdim"][1:4] = (0.0, 1.0, 1.0)
        img.to_filename(str(t1))
    before = tree_fingerprint(tmp_path / "src")
    result = cesynth("import", "--layout", "ucsf-pdgm", tmp_path / "src", "--out",
                     tmp_path / "bids")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: UCSF-PDGM-0001: {problem}"), lines
    assert not (tmp_path / "bids").exists()
    assert tree_fingerprint(tmp_path / "src") == before


# Per layout: the inputs the model can use, the ADC source and brain mask QC records (BraTS
# publishes no diffusion and no brain mask: the model learns from T1 and T2, the mask is the
# nonzero region of the skull-stripped CE-T1), and further experiments (BraTS: T1 + T2 against
# T1 + T2 + FLAIR, issue 25). Cases: enough for the ID hash to put one in the Set A test split
# (UCSF-PDGM 0001 of 3, BraTS 00004 of 4).
FLAIR_INPUTS = ["T1w", "T2w", "FLAIR"]
END_TO_END = {
    "ucsf-pdgm": {"modalities": ["T1w", "T2w", "adc"], "adc_sources": {"given ADC map"},
                  "mask": "provided", "cases": 3, "experiments": {}},
    "brats": {"modalities": ["T1w", "T2w"], "adc_sources": set(), "mask": "nonzero",
              "cases": 4, "experiments": {"flair": {"modalities": FLAIR_INPUTS}}},
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(END_TO_END))
def test_an_imported_cohort_runs_to_evaluation_and_release(tmp_path, layout):
    """The workflow from a phantom in a published layout: imported first (Set A, so it trains),
    declared co-registered and skull-stripped, the scanner's ADC maps (if any) used as given."""
    source = tmp_path / layout
    cases = str(END_TO_END[layout]["cases"])
    subprocess.run([CESYNTH, "phantom", "--out", str(source), "--subjects", cases, "--set-b", "1",
                    "--voxel-mm", "4", "--layout", layout], check=True, capture_output=True)
    small = yaml.safe_load((REPO / "config/profiles/demo-small.yaml").read_text())
    config = {key: value for key, value in small.items()
              if key not in ("demo", "bids_dir", "results_dir")}
    results = tmp_path / "results"
    config |= {"bids_dir": str(tmp_path / "bids"), "results_dir": str(results),
               "demo": {"enabled": False}, "import_dir": str(source),
               "import": {"layout": layout, "set": "A"},
               "ingest": {"coregistered": True, "skull_stripped": True},
               "release": {"gates": {"require_score": False}},
               "experiments": {"default": {}, **END_TO_END[layout]["experiments"]}}
    config["train"] = {**config["train"], "modalities": END_TO_END[layout]["modalities"]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake(tmp_path, "--cores", "2", "--configfile", str(path))
    assert set(read_tsv(results / "qc" / "registration.tsv")["method"]) == {
        "identity (declared co-registered)"}
    mask_methods = set(read_tsv(results / "qc" / "brainmask.tsv")["method"])
    assert mask_methods == {END_TO_END[layout]["mask"]}
    adc_sources = set(read_tsv(results / "qc" / "adc.tsv").get("source", []))
    assert adc_sources == END_TO_END[layout]["adc_sources"]
    # the case the ID hash puts in the Set A test split: scored in the brain and in its tumor
    scored = sorted((results / "eval" / "default").glob("sub-*/sub-*_metrics.json"))
    assert scored, "no Set A test subject was scored"
    metrics = json.loads(scored[0].read_text())
    assert metrics["set"] == "A" and metrics["brain"]["psnr"] > 0 and "tumor" in metrics
    assert json.loads((results / "release" / "default.json").read_text())["version"] == 1
    status = read_tsv(results / "qc" / "status.tsv")
    assert set(status["state"]) <= {"done", "not needed"}
    if "flair" in END_TO_END[layout]["experiments"]:
        _check_the_flair_model(tmp_path, results, scored[0])


def _check_the_flair_model(workdir: Path, results: Path, scored: Path) -> None:
    """The FLAIR imported from the BraTS layout went through every stage of the model that
    takes it, beside the T1 + T2 model: brought to the CE-T1 grid, normalised, cached as a
    channel, trained on, scored, released and given to `cesynth predict --flair`."""
    import torch

    cases = END_TO_END["brats"]["cases"]
    for stage in ("registration", "normalise"):
        rows = read_tsv(results / "qc" / f"{stage}.tsv")
        assert (rows["modality"] == "FLAIR").sum() == cases, stage
    caches = sorted((results / "train" / "cache").glob("sub-*/*_cache.json"))
    assert caches and all(json.loads(c.read_text())["modalities"] == FLAIR_INPUTS
                          for c in caches)
    checkpoint = torch.load(results / "train" / "flair" / "checkpoint_final.pt",
                            weights_only=False)
    assert checkpoint["preprocessing"]["modalities"] == FLAIR_INPUTS
    subject = scored.parent.name
    synthetic = json.loads((results / "eval" / "flair" / subject /
                            f"{subject}_space-model_desc-synthetic_ceT1w.json").read_text())
    assert synthetic["InputModalities"] == FLAIR_INPUTS
    metrics = read_tsv(results / "eval" / "metrics.tsv")
    assert set(metrics["model"]) == {"default", "flair"}
    release = json.loads((results / "release" / "flair.json").read_text())
    assert release["champion"] and release["model_uri"] == "models:/cesynth-flair/1"
    card = (results / "release" / "flair_model_card.md").read_text()
    assert "T1w, T2w, FLAIR" in card

    anat = workdir / "bids" / subject / "anat"
    out = workdir / "predicted.nii.gz"
    result = subprocess.run(
        [CESYNTH, "predict", "--t1", anat / f"{subject}_T1w.nii.gz",
         "--t2", anat / f"{subject}_T2w.nii.gz", "--flair", anat / f"{subject}_FLAIR.nii.gz",
         "--brainmask-method", "nonzero", "--model", "models:/cesynth-flair@champion",
         "--out", out], capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{results / 'mlflow.db'}"})
    assert result.returncode == 0, result.stderr
    sidecar = json.loads(out.with_name("predicted.json").read_text())
    assert sidecar["InputModalities"] == FLAIR_INPUTS and sidecar["MissingModalities"] == []
    assert f"{subject}_FLAIR.nii.gz" in sidecar["Sources"]
