"""Bad input and bad output paths, as a user meets them: one line on stderr naming the file or
subject and the problem, a non-zero exit, no traceback, and nothing written over a source.

Real files throughout: tiny BIDS datasets and volumes written with nibabel, DICOM series read by
dcm2niix, the installed ``cesynth`` script and ``snakemake`` in subprocesses where the exit code
or a signal matters.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.bids_builder import (
    AFFINE,
    add_subject,
    ellipsoid,
    make_dataset,
    save,
    tree_fingerprint,
)
from helpers.workflow import CESYNTH, snakemake

from cesynth import cli, predict
from cesynth.io import InputError, read_tsv
from cesynth.signals import EXIT_TERMINATED

# ---------------------------------------------------------------- helpers


def run_cli(capsys, *args: object) -> tuple[int, list[str]]:
    """``cesynth ARGS`` in this process: the exit code and the lines on stderr."""
    try:
        code = cli.main([str(arg) for arg in args])
    except SystemExit as exit_:  # the parser's usage errors
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line(code: int, lines: list[str], start: str, *parts: str) -> None:
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {start}"), lines[0]
    for part in parts:
        assert part in lines[0], lines[0]


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


def raw_pixdim(path: Path, sizes: tuple[float, float, float]) -> Path:
    """Write a volume whose header voxel sizes are ``sizes`` as stored (nibabel repairs them
    on reading); its affine comes from the sform, so only the pixdim is wrong."""
    img = nib.Nifti1Image(ellipsoid(), AFFINE)
    img.header["pixdim"][1:4] = sizes
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))
    return path


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """Two complete subjects (sub-01 in Set A, sub-02 in Set B)."""
    root = make_dataset(tmp_path / "bids")
    add_subject(root, "01", seed=1)
    add_subject(root, "02", seed=2, tumor_mask=True)
    return root


@pytest.fixture()
def images(tmp_path) -> dict[str, Path]:
    """A CE-T1, a T1, a T2 and a DWI with its gradient files, outside any dataset."""
    files = add_subject(tmp_path / "in", "09", seed=4)
    return {"fixed": files["ceT1w"], "moving": files["T2w"], "t1": files["T1w"],
            "dwi": files["dwi"], "bval": files["bval"], "bvec": files["bvec"]}


# ---------------------------------------------------------------- the source is never written


@pytest.mark.parametrize("case", ["validate-out-in-bids", "adc-out-is-dwi",
                                  "register-out-is-moving", "register-xfm-is-out",
                                  "brainmask-out-is-image"])
def test_outputs_never_write_over_a_source(case, capsys, dataset, images, tmp_path):
    moving_copy = tmp_path / "out.nii.gz"
    moving_copy.write_bytes(images["moving"].read_bytes())
    args, named, source = {
        "validate-out-in-bids": (["validate", "--bids", dataset, "--out",
                                  dataset / "derivatives" / "ingest.tsv"],
                                 dataset / "derivatives" / "ingest.tsv",
                                 dataset / "sub-01/anat/sub-01_T1w.nii.gz"),
        "adc-out-is-dwi": (["adc", "--dwi", images["dwi"], "--bval", images["bval"], "--bvec",
                            images["bvec"], "--out", images["dwi"]], images["dwi"], images["dwi"]),
        "register-out-is-moving": (["register", "--fixed", images["fixed"], "--moving",
                                    images["moving"], "--out", images["moving"], "--xfm",
                                    tmp_path / "x.mat"], images["moving"], images["moving"]),
        "register-xfm-is-out": (["register", "--fixed", images["fixed"], "--moving", moving_copy,
                                 "--out", tmp_path / "o.nii.gz", "--xfm", tmp_path / "o.nii.gz"],
                                tmp_path / "o.nii.gz", moving_copy),
        "brainmask-out-is-image": (["brainmask", "--image", images["t1"], "--out", images["t1"],
                                    "--method", "nonzero"], images["t1"], images["t1"]),
    }[case]
    before = sorted(p.name for p in tmp_path.rglob("*")), digest(source)
    code, lines = run_cli(capsys, *args)
    assert_one_line(code, lines, str(named))
    assert any(words in lines[0] for words in ("overwrite an input", "two outputs share this path"))
    if case == "validate-out-in-bids":
        assert f"inside the input folder {dataset}" in lines[0]
    assert (sorted(p.name for p in tmp_path.rglob("*")), digest(source)) == before


def test_failing_predict_keeps_the_file_that_was_at_out(capsys, images, tmp_path):
    """Already held: bad input fails before anything is written."""
    bad_t1 = images["t1"].with_name("nan_T1w.nii.gz")
    data = ellipsoid()
    data[3, 3, 3] = np.nan
    save(data, bad_t1)
    out = tmp_path / "synthetic.nii.gz"
    out.write_bytes(b"an earlier result")
    code, lines = run_cli(capsys, "predict", "--t1", bad_t1, "--model", tmp_path / "none.pt",
                          "--out", out)
    assert_one_line(code, lines, str(bad_t1), "1 non-finite voxels")
    assert out.read_bytes() == b"an earlier result"


@pytest.mark.parametrize("case", ["out-is-model", "sidecar-is-model", "sidecar-is-cascade",
                                  "grid-sidecar-is-model", "out-is-sibling-cascade"])
def test_predict_never_writes_over_its_checkpoints(case, capsys, images, tmp_path):
    """Issue 26: ``--out`` (or a sidecar) equal to ``--model`` or a cascade checkpoint replaced
    the checkpoint; refused before any work."""
    train = tmp_path / "train"
    files = {"model.nii.gz": train / "exp" / "model.nii.gz",
             "model.json": train / "exp" / "model.json",
             "cascade.json": tmp_path / "cascade.json",
             "sibling": train / "cascade-T2w" / "model.nii.gz"}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a checkpoint")
    out = tmp_path / "o.nii.gz"
    args, named = {
        "out-is-model": (["--model", files["model.nii.gz"], "--out", files["model.nii.gz"]],
                         files["model.nii.gz"]),
        "sidecar-is-model": (["--model", files["model.json"], "--out",
                              files["model.json"].with_name("model.nii.gz")], files["model.json"]),
        "sidecar-is-cascade": (["--model", files["model.nii.gz"], "--cascade-t2",
                                files["cascade.json"], "--out", tmp_path / "cascade.nii.gz"],
                               files["cascade.json"]),
        "grid-sidecar-is-model": (["--model", files["model.json"], "--out", out,
                                   "--out-model-grid", files["model.json"].with_name("model.nii")],
                                  files["model.json"]),
        "out-is-sibling-cascade": (["--model", files["model.nii.gz"], "--out", files["sibling"]],
                                   files["sibling"]),
    }[case]
    before = tree_fingerprint(tmp_path)
    code, lines = run_cli(capsys, "predict", "--t1", images["t1"], *args)
    assert_one_line(code, lines, f"{named}: ", "output would overwrite an input")
    assert tree_fingerprint(tmp_path) == before


@pytest.mark.parametrize("case", ["t1-folder", "inside-t1-folder", "inside-bval-folder",
                                  "inside-model-folder", "inside-cascade-folder",
                                  "inside-dicom-series"])
def test_predict_keep_work_inside_an_input_folder_is_refused(case, capsys, images, tmp_path):
    """Issue 26: ``--keep-work`` pointed into a folder holding an input (or the model) wrote
    the work files there; refused before any work, nothing created."""
    model = tmp_path / "train" / "exp" / "model.pt"
    cascade = tmp_path / "cascades" / "t2.pt"
    for path in (model, cascade):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a checkpoint")
    series = tmp_path / "dicom" / "t1_series"
    series.mkdir(parents=True)
    (series / "1.dcm").write_bytes(b"a slice")
    t1 = series if case == "inside-dicom-series" else images["t1"]
    work, holder = {
        "t1-folder": (images["t1"].parent, images["t1"].parent),
        "inside-t1-folder": (images["t1"].parent / "work", images["t1"].parent),
        "inside-bval-folder": (images["bval"].parent / "w" / "work", images["bval"].parent),
        "inside-model-folder": (model.parent / "work", model.parent),
        "inside-cascade-folder": (cascade.parent / "work", cascade.parent),
        "inside-dicom-series": (series / "work", series),
    }[case]
    before = tree_fingerprint(tmp_path)
    code, lines = run_cli(capsys, "predict", "--t1", t1, "--dwi", images["dwi"], "--bval",
                          images["bval"], "--bvec", images["bvec"], "--model", model,
                          "--cascade-t2", cascade, "--out", tmp_path / "out" / "o.nii.gz",
                          "--keep-work", work)
    assert_one_line(code, lines, f"{work}: ", f"--keep-work lies inside the input folder "
                                              f"{holder}")
    assert tree_fingerprint(tmp_path) == before


def test_predict_keep_work_beside_the_inputs_is_taken(capsys, images, tmp_path):
    model = tmp_path / "train" / "exp" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not a checkpoint")
    code, lines = run_cli(capsys, "predict", "--t1", images["t1"], "--model", model,
                          "--out", tmp_path / "out" / "o.nii.gz",
                          "--keep-work", tmp_path / "train" / "work")
    assert_one_line(code, lines, str(model))  # it got as far as reading the model
    assert (tmp_path / "train" / "work").is_dir()


def test_failing_predict_write_keeps_the_files_that_were_there(tmp_path):
    """The last output (the DICOM series) fails: the image and sidecar written before it must
    not replace, nor delete, the files that were at their paths."""
    targets = {"output": tmp_path / "synthetic.nii.gz", "sidecar": tmp_path / "synthetic.json",
               "output_dicom": tmp_path / "dicom"}
    targets["output"].write_bytes(b"earlier image")
    targets["sidecar"].write_text("{}")
    (targets["output_dicom"] / "taken").mkdir(parents=True)  # not empty: the write fails
    with pytest.raises(InputError, match="not empty"):
        predict._write_outputs(targets, np.zeros((4, 4, 4)), np.eye(4),
                               {"InputModalities": ["T1w"]}, None)
    assert targets["output"].read_bytes() == b"earlier image"
    assert targets["sidecar"].read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom", "synthetic.json",
                                                         "synthetic.nii.gz"]


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("command", ["brainmask", "register-moving", "register-fixed", "predict"])
def test_non_finite_voxels_are_refused(command, value, capsys, images, tmp_path):
    data = ellipsoid()
    data[2, 3, 4] = value
    bad = save(data, tmp_path / "bad.nii.gz")
    out = tmp_path / "out" / "o.nii.gz"
    args = {
        "brainmask": ["brainmask", "--image", bad, "--out", out, "--method", "nonzero"],
        "register-moving": ["register", "--fixed", images["fixed"], "--moving", bad, "--out", out,
                            "--xfm", tmp_path / "out" / "x.mat"],
        "register-fixed": ["register", "--fixed", bad, "--moving", images["moving"], "--out", out,
                           "--xfm", tmp_path / "out" / "x.mat"],
        "predict": ["predict", "--t1", bad, "--model", tmp_path / "model.pt", "--out", out],
    }[command]
    code, lines = run_cli(capsys, *args)
    assert_one_line(code, lines, str(bad), "1 non-finite voxels (NaN or inf)")
    assert not out.parent.exists()


@pytest.mark.parametrize("sizes", [(0.0, 2.0, 2.5), (-2.0, 2.0, 2.5)])
def test_voxel_size_zero_or_negative_is_refused(sizes, capsys, dataset, tmp_path):
    t1 = raw_pixdim(dataset / "sub-01/anat/sub-01_T1w.nii.gz", sizes)
    code, lines = run_cli(capsys, "validate", "--bids", dataset, "--out", tmp_path / "v.tsv")
    assert code == 1
    shown = f"{sizes[0]:g} x 2 x 2.5"
    assert lines[0] == (f"error: sub-01: sub-01_T1w.nii.gz: voxel size (pixdim) {shown}: every "
                        "size must be positive")
    assert read_tsv(tmp_path / "v.tsv").set_index("scan_id").loc["02", "status"] == "included"
    code, lines = run_cli(capsys, "brainmask", "--image", t1, "--out", tmp_path / "m.nii.gz",
                          "--method", "nonzero")
    assert_one_line(code, lines, str(t1), f"voxel size (pixdim) {shown}")


@pytest.mark.parametrize("scale, problem", [
    (0.1, "ADC median 0.1 is in no known unit"), (-1e-3, "ADC map has no positive voxel")])
def test_validate_refuses_an_adc_map_predict_refuses(scale, problem, capsys, dataset):
    """Issue 26: validate passed an ADC map in no known unit (x100) or negative."""
    add_subject(dataset, "03", modalities=("T1w", "ceT1w", "T2w"), seed=3)
    adc = save((scale * (1 + ellipsoid() / 1000)).astype(np.float32),
               dataset / "sub-03/dwi/sub-03_adc.nii.gz")
    before = tree_fingerprint(dataset)
    code, lines = run_cli(capsys, "validate", "--bids", dataset)
    assert code == 1
    assert lines[0].startswith(f"error: sub-03: {adc.name}: {problem}"), lines
    assert tree_fingerprint(dataset) == before


@pytest.mark.parametrize("case, named, problem", [
    ("nan", "dwi", "non-finite voxels (NaN or inf)"),
    ("zero", "dwi", "b=0 signal is zero or negative in every voxel"),
    ("negative", "dwi", "b=0 signal is zero or negative in every voxel"),
    ("empty-mask", "mask", "empty mask (no nonzero voxel)"),
    ("b0-negative-in-mask", "dwi", "b=0 signal is zero or negative in every voxel of the mask"),
    ("mostly-clipped", "dwi", "of the fitted voxels clipped"),
])
def test_adc_refuses_dwi_it_cannot_fit(case, named, problem, capsys, images, tmp_path):
    """Issue 26: NaN, zero or negative DWI, or an empty mask, gave exit 0 and an all-zero (or
    mostly clipped) ADC map."""
    img = nib.load(images["dwi"])
    dwi = np.asarray(img.get_fdata(dtype=np.float32))
    mask = np.zeros(dwi.shape[:3], np.uint8)
    mask[4:8, 5:9, 3:7] = 1
    if case == "nan":
        dwi[2, 3, 4, 1] = np.nan
    elif case in ("zero", "negative"):
        dwi[:] = 0.0 if case == "zero" else -dwi
    elif case == "empty-mask":
        mask[:] = 0
    elif case == "b0-negative-in-mask":
        dwi[mask > 0, 0] = -1.0
    else:  # the signal rises with b: a negative ADC, clipped to 0, in most voxels
        dwi = dwi[..., ::-1].copy()
    files = {"dwi": save(dwi, tmp_path / "case" / "dwi.nii.gz"),
             "mask": save(mask, tmp_path / "case" / "mask.nii.gz")}
    out = tmp_path / "out" / "adc.nii.gz"
    before = tree_fingerprint(tmp_path / "case")
    code, lines = run_cli(capsys, "adc", "--dwi", files["dwi"], "--bval", images["bval"],
                          "--bvec", images["bvec"], "--out", out,
                          *(["--mask", files["mask"]] if "mask" in case else []))
    assert_one_line(code, lines, f"{files[named]}: ", problem)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert tree_fingerprint(tmp_path / "case") == before


def test_an_image_of_fewer_than_3_voxels_along_an_axis_is_refused(capsys, dataset, tmp_path):
    """Issue 26: a one-slice T1 passed validate; register and predict then failed in ITK."""
    t1 = save(ellipsoid()[:, :, 4:5], dataset / "sub-01/anat/sub-01_T1w.nii.gz")
    problem = "shape 12 x 14 x 1: 1 voxel along axis 3 (at least 3 along each spatial axis)"
    code, lines = run_cli(capsys, "validate", "--bids", dataset)
    assert code == 1
    assert lines[0] == f"error: sub-01: {t1.name}: {problem}"
    out = tmp_path / "out" / "o.nii.gz"
    code, lines = run_cli(capsys, "predict", "--t1", t1, "--model", tmp_path / "m.pt",
                          "--out", out)
    assert_one_line(code, lines, f"{t1}: ", problem)
    assert not out.parent.exists()


def test_one_image_as_both_nii_and_nii_gz_is_refused(capsys, dataset):
    t2 = dataset / "sub-02/anat/sub-02_T2w.nii.gz"
    nib.save(nib.load(str(t2)), str(t2.with_name("sub-02_T2w.nii")))
    code, lines = run_cli(capsys, "validate", "--bids", dataset)
    assert code == 1
    assert lines[0] == ("error: sub-02: sub-02_T2w.nii.gz: sub-02_T2w.nii exists too (one image "
                        "in two files); keep one")


@pytest.mark.parametrize("option, values, dtype, shown", [
    ("--mask", (0.0, 0.5), np.float32, "0.5"),
    ("--tumor-mask", (0.0, 0.5), np.float32, "0.5"),
    ("--tumor-mask", (0, 2), np.int16, "2"),
    ("--mask", (0.0, 0.999), np.float64, "0.999"),
])
def test_metrics_refuses_a_mask_that_is_not_binary(option, values, dtype, shown, capsys,
                                                   tmp_path):
    """Issue 26: a 0.5-valued mask was accepted and scored."""
    pred = save(ellipsoid() / 1000, tmp_path / "pred.nii.gz")
    target = save(ellipsoid(seed=1) / 1000, tmp_path / "target.nii.gz")
    inside = ellipsoid() > 500
    good = save(inside.astype(np.uint8), tmp_path / "brain.nii.gz")
    bad = save(np.where(inside, values[1], values[0]).astype(dtype), tmp_path / "bad.nii.gz")
    masks = {"--mask": good, "--tumor-mask": good, option: bad}
    code, lines = run_cli(capsys, "metrics", "--pred", pred, "--target", target,
                          *(arg for pair in masks.items() for arg in pair))
    assert (code, lines) == (1, [f"error: {bad}: not a binary mask (values other than 0 and 1: "
                                 f"{shown})"])


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
def test_metrics_takes_a_0_1_mask_of_any_integer_or_float_type(dtype, capsys, tmp_path):
    pred = save(ellipsoid() / 1000, tmp_path / "pred.nii.gz")
    target = save(ellipsoid(seed=1) / 1000, tmp_path / "target.nii.gz")
    mask = save((ellipsoid() > 500).astype(dtype), tmp_path / "brain.nii.gz")
    code, lines = run_cli(capsys, "metrics", "--pred", pred, "--target", target, "--mask", mask,
                          "--tumor-mask", mask)
    assert (code, lines) == (0, [])


# ---------------------------------------------------------------- one line, never a traceback


@pytest.mark.parametrize("content, problem", [
    (b"participant_id\tset\nsub-01\tA\n\xff\xfe\tB\n", "not UTF-8 text (byte 0xff at offset 28)"),
    (b"", "empty file (no header row)"),
    (b"participant_id\tset\nsub-01\tA\nsub-02\tB\textra\n", "row 2 (line 3) has 3 fields, the "
                                                            "header 2"),
    (b"participant_id\tset\nsub-01\tA\nsub-02\n", "row 2 (line 3) has 1 fields, the header 2"),
    (b"participant_id\tset\nsub-01\tA\n\tB\n", "row 2 (line 3) has no participant_id"),
    (b"participant_id\tset\nsub-01\tA\nsub-02\tB\nsub-01\tB\n",
     "sub-01 is listed twice (rows 1 and 3); give each participant one row"),
    (b"participant_id\tset\nsub-01\tA\n01\tA\n",
     "sub-01 is listed twice (rows 1 and 2); give each participant one row"),
    (b"participant_id\tset\nsub-01\tn/a\nsub-01\tB\n",
     "sub-01 is listed twice (rows 1 and 2); give each participant one row"),
])
def test_bad_participants_tsv_is_one_line(content, problem, capsys, dataset):
    tsv = dataset / "participants.tsv"
    tsv.write_bytes(content)
    code, lines = run_cli(capsys, "validate", "--bids", dataset)
    assert code == 1
    assert lines == [f"error: {tsv}: {problem}"]


def test_a_declared_set_b_participant_without_a_tumor_mask_is_refused(capsys, dataset,
                                                                       tmp_path):
    """Issue 26: a participant that participants.tsv puts in Set B but that has no tumor mask
    was accepted and scored on the brain alone. Refused by ``cesynth validate`` and by the
    workflow's per-subject validation; a participant with a mask in another session is Set B
    through that mask (the tumor-mask rule) and stays accepted."""
    from cesynth import ingest, ingest_report

    add_subject(dataset, "03", seed=3)
    add_subject(dataset, "04", session="pre", seed=4)
    add_subject(dataset, "04", session="post", seed=5, tumor_mask=True)
    (dataset / "participants.tsv").write_text("participant_id\tset\nsub-01\tA\nsub-02\tB\n"
                                              "sub-03\tB\nsub-04\tB\n")
    problem = ("sub-03: sub-03_desc-tumor_mask.nii.gz: missing (participants.tsv puts sub-03 in "
               "Set B, which is scored in its expert tumor mask)")
    before = tree_fingerprint(dataset)
    code, lines = run_cli(capsys, "validate", "--bids", dataset, "--out", tmp_path / "v.tsv")
    assert (code, lines) == (1, [f"error: {problem}", f"error: {dataset}: 1 of 5 subjects "
                                                      "excluded"])
    assert read_tsv(tmp_path / "v.tsv").set_index("scan_id")["status"].to_dict() == {
        "01": "included", "02": "included", "03": "excluded", "04_ses-post": "included",
        "04_ses-pre": "included"}
    scan = {s.scan_id: s for s in ingest.discover_bids(dataset)}["03"]  # the workflow's job
    inputs = {"t1w": scan.t1w, "cet1w": scan.cet1w, "t2w": scan.t2w, "dwi": scan.dwi,
              "bval": scan.bval, "bvec": scan.bvec}
    report = tmp_path / "qc" / "sub-03.json"
    with pytest.raises(InputError) as raised:
        ingest_report.validate_and_report(ingest.scan_from_rule_inputs("03", inputs, scan.set),
                                          report)
    assert str(raised.value) == problem
    assert not report.exists() and ingest_report.excluded_report_path(report).is_file()
    assert tree_fingerprint(dataset) == before


@pytest.mark.parametrize("case, problem", [
    ("brainmask-folder", "output must end in .nii or .nii.gz"),
    ("brainmask-folder-named-nii", "output is a folder; give a file name"),
    ("brainmask-suffix", "output must end in .nii or .nii.gz"),
    ("register-xfm-suffix", "output must end in .mat"),
    ("validate-suffix", "output must end in .tsv"),
    ("adc-read-only", "is not writable"),
    ("brainmask-read-only", "is not writable"),
    ("import-out-is-a-file", "output is a file; give a folder"),
])
def test_unusable_out_is_refused_before_the_work(case, problem, capsys, dataset, images,
                                                 tmp_path):
    folder = tmp_path / "results"
    (folder / "m.nii.gz").mkdir(parents=True)
    read_only = Path("/proc/cesynth-no-such-folder")  # no one may create files here, not root
    mask = ["brainmask", "--image", images["t1"], "--method", "nonzero", "--out"]
    args, out = {
        "brainmask-folder": (mask, folder),
        "brainmask-folder-named-nii": (mask, folder / "m.nii.gz"),
        "brainmask-suffix": (mask, folder / "m.mgz"),
        "register-xfm-suffix": (["register", "--fixed", images["fixed"], "--moving",
                                 images["moving"], "--out", folder / "o.nii.gz", "--xfm"],
                                folder / "x.txt"),
        "validate-suffix": (["validate", "--bids", dataset, "--out"], folder / "v.csv"),
        "adc-read-only": (["adc", "--dwi", images["dwi"], "--bval", images["bval"], "--bvec",
                           images["bvec"], "--out"], read_only / "adc.nii.gz"),
        "brainmask-read-only": (mask, read_only / "m.nii.gz"),
        "import-out-is-a-file": (["import", "--layout", "brats", dataset, "--out"],
                                 images["t1"]),
    }[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, lines = run_cli(capsys, *args, out)
    assert_one_line(code, lines, str(out), problem)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_folder_without_write_permission_is_refused(capsys, images, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, lines = run_cli(capsys, "brainmask", "--image", images["t1"], "--method", "nonzero",
                          "--out", locked / "m.nii.gz")
    assert_one_line(code, lines, str(locked / "m.nii.gz"), f"folder {locked} is not writable")


@pytest.mark.parametrize("args, message", [
    (["brainmask", "--image", "x.nii.gz", "--out", "m.nii.gz", "--threads", "0"],
     "argument --threads: 0 is below the minimum 1"),
    (["register", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--out", "o.nii.gz", "--xfm",
      "x.mat", "--seed", "-1"], "argument --seed: -1 is below the minimum 0"),
    (["phantom", "--out", "p", "--subjects", "0"], "argument --subjects: 0 is below the minimum 1"),
    (["phantom", "--out", "p", "--subjects", "2", "--voxel-mm", "-3"],
     "argument --voxel-mm: -3 is outside (0.4, 6]"),
    (["validate", "--bids", "b", "--test-fraction", "1.5"],
     "argument --test-fraction: 1.5 is outside [0, 1)"),
    (["predict", "--t1", "t.nii.gz", "--model", "m.pt", "--out", "o.nii.gz", "--model-grid",
      "32", "0", "32"], "argument --model-grid: 0 is below the minimum 8"),
])
def test_numbers_out_of_range_are_one_line_usage_errors(args, message, capsys):
    code, lines = run_cli(capsys, *args)
    assert code == 2
    assert lines == [f"error: cesynth {args[0]}: {message}"]


def test_fractions_summing_to_one_or_more_are_one_line(capsys, dataset):
    code, lines = run_cli(capsys, "validate", "--bids", dataset, "--validation-fraction", "0.6",
                          "--test-fraction", "0.5")
    assert_one_line(code, lines, "--validation-fraction/--test-fraction", "sum below 1")


def test_an_unexpected_failure_is_one_line(capsys, images, monkeypatch, tmp_path):
    from cesynth import brainmask

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(brainmask, "brain_mask_file", broken)
    code, lines = run_cli(capsys, "brainmask", "--image", images["t1"], "--out",
                          tmp_path / "m.nii.gz")
    assert code == 1
    assert lines == ["error: cesynth brainmask: RuntimeError: a bug over two lines (-v shows the "
                     "traceback)"]


@pytest.mark.parametrize("content, what", [
    ('{"scan_id": "03", "participant": "0', "malformed JSON"),
    ("", "malformed JSON"),
    ('["03"]', "not a scan report"),
])
def test_status_counts_a_corrupt_ingest_record_as_failed(content, what, capsys, tmp_path):
    """Issue 26: a truncated qc/ingest/sub-XX.json (the validation's output exists) was counted
    as done."""
    from cesynth import ingest_report

    results = tmp_path / "results"
    ingest_report.write_scan_report({"scan_id": "01", "participant": "01", "set": "A",
                                     "status": "included", "modalities": ["T1w", "ceT1w"],
                                     "files": {}}, results / "qc" / "ingest" / "sub-01.json")
    record = results / "qc" / "ingest" / "sub-03.json"
    record.write_text(content)
    code, lines = run_cli(capsys, "status", "--results", results, "--check")
    # 2 scans x 9 stages (cesynth.status.STAGES)
    assert (code, lines) == (1, [f"error: {results}: 1 of 18 scan stages failed"])
    table = read_tsv(results / "qc" / "status.tsv").set_index(["scan_id", "stage"])
    assert table.loc[("03", "ingest"), "state"] == "failed"
    assert table.loc[("03", "ingest"), "reason"] == (f"corrupt record qc/ingest/sub-03.json "
                                                     f"({what}); remove it to validate the "
                                                     "scan again")
    assert table.loc[("03", "brainmask"), "state"] == "not run"
    assert table.loc[("01", "ingest"), "state"] == "done"


# Snakemake prints this on every run of the workflow, before the Snakefile is read, because
# profiles/default exists (README, "Cluster"); the error itself is the one line after it.
SNAKEMAKE_PROFILE_NOTICE = ("Using workflow specific profile profiles/default for setting default "
                            "command line arguments.")


@pytest.mark.parametrize("value, message", [
    ("demo={subjects: 0}", "demo.subjects: 0 is less than the minimum of 1"),
    ("sets={test_fraction: 1.5}", "sets.test_fraction: 1.5 is greater than or equal to the "
                                  "maximum of 1"),
])
def test_config_value_out_of_range_on_the_command_line_is_one_line(value, message, tmp_path):
    result = snakemake(tmp_path, "--dry-run", "--config", value, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [SNAKEMAKE_PROFILE_NOTICE,
                                                  f"error: config: {message}"]


def test_config_numbers_on_the_command_line_are_typed_by_the_schema(tmp_path):
    """Snakemake passes nested ``--config`` values as strings; a valid one is accepted."""
    result = snakemake(tmp_path, "--dry-run", "--quiet", "rules", "--config",
                       "demo={subjects: 3, set_b_subjects: 1}", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "make_demo_subject" in result.stdout


def test_validate_reports_every_subject(capsys, dataset, tmp_path):
    (dataset / "sub-0_3" / "anat").mkdir(parents=True)  # a label that is not alphanumeric
    add_subject(dataset, "04", session="1", seed=4)
    add_subject(dataset, "04", seed=5)  # sessions and session-less data mixed
    code, lines = run_cli(capsys, "validate", "--bids", dataset, "--out", tmp_path / "v.tsv")
    assert code == 1
    assert lines == ["error: sub-04: has both ses-* folders and session-less anat/dwi",
                     "error: sub-0_3: BIDS label is not alphanumeric",
                     f"error: {dataset}: 2 of 4 subjects excluded"]
    table = read_tsv(tmp_path / "v.tsv").set_index("scan_id")
    assert table["status"].to_dict() == {"01": "included", "02": "included", "04": "excluded",
                                         "0_3": "excluded"}


def test_validate_keeps_going_after_an_unforeseen_failure(capsys, dataset, monkeypatch):
    from cesynth import ingest_report

    checked = ingest_report.validate_scan

    def fails_on_01(scan, **options):
        if scan.scan_id == "01":
            raise MemoryError("out of memory reading sub-01")
        return checked(scan, **options)

    monkeypatch.setattr(ingest_report, "validate_scan", fails_on_01)
    code, lines = run_cli(capsys, "validate", "--bids", dataset)
    assert lines == ["error: sub-01: MemoryError: out of memory reading sub-01",
                     f"error: {dataset}: 1 of 2 subjects excluded"]


# ---------------------------------------------------------------- dicom2bids, SIGTERM


def _dicom_cohort(root: Path) -> Path:
    """P1: a T1 series (converts); P2: a T2 and a FLAIR, no T1 (fails)."""
    from helpers.dicom_writer import write_series_from_volume
    from pydicom.uid import generate_uid

    volume = np.rint(ellipsoid() + 50)
    t2 = {"RepetitionTime": 4000.0, "EchoTime": 100.0}  # roles come from the tags first
    flair = {"RepetitionTime": 9000.0, "EchoTime": 120.0, "InversionTime": 2500.0}
    for label, series in (("P1", [("T1 MPRAGE pre", {})]),
                          ("P2", [("Ax T2 FSE", t2), ("FLAIR", flair)])):
        study = generate_uid()
        for number, (description, tags) in enumerate(series, start=2):
            write_series_from_volume(volume, AFFINE, root / label / f"s{number}",
                                     series_description=description, series_number=number,
                                     study_uid=study, tags=tags)
    return root


@pytest.mark.parametrize("keep_going", [False, True])
def test_dicom2bids_is_all_or_nothing_unless_asked_to_keep_going(keep_going, tmp_path):
    from cesynth.dicom import find_dcm2niix

    find_dcm2niix()
    dicom = _dicom_cohort(tmp_path / "dicom")
    out = tmp_path / "bids"
    result = subprocess.run([CESYNTH, "dicom2bids", "--dicom", str(dicom), "--out", str(out),
                             *(["--keep-going"] if keep_going else [])],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    failure = ("error: sub-P2: no pre-contrast T1 series (series: 2 (Ax T2 FSE): T2; 3 (FLAIR): "
               "FLAIR); pin one with --series T1w=<SeriesNumber> or config ingest.dicom_series: "
               "{P2: {T1w: <SeriesNumber>}}")
    summary, *errors = result.stderr.strip().splitlines()  # P1's roles, then the one line
    assert summary.startswith("sub-P1: T1w=2;")
    if keep_going:
        assert errors == [failure, f"error: {dicom}: 1 of 2 subjects skipped"]
        assert sorted(p.name for p in out.iterdir()) == ["dataset_description.json", "derivatives",
                                                         "sub-P1"]  # derivatives: the series table
        assert (out / "sub-P1/anat/sub-P1_T1w.nii.gz").is_file()
    else:
        assert errors == [failure]
        assert not out.exists()  # P1 converted first, but nothing lands when P2 fails


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out" / "image.nii.gz"
    script = ("import sys, time\nfrom cesynth.io import atomic_path\n"
              f"with atomic_path({str(out)!r}) as tmp:\n"
              "    tmp.write_bytes(b'half an image')\n"
              "    print('writing', flush=True)\n"
              "    time.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    assert len(list(out.parent.iterdir())) == 1  # the hidden temporary file
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == EXIT_TERMINATED
    assert list(out.parent.iterdir()) == []


def test_sigterm_stops_a_command_in_one_line_without_hidden_files(tmp_path):
    out = tmp_path / "bids"
    process = subprocess.Popen([CESYNTH, "phantom", "--out", str(out), "--subjects", "4",
                                "--voxel-mm", "4"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.is_file() for p in out.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_TERMINATED, stderr
    assert stderr.strip().splitlines() == ["error: cesynth phantom: terminated (SIGTERM)"]
    assert [p for p in out.rglob(".*")] == []


def _dicom_t1(root: Path, label: str, seed: int = 0) -> Path:
    """``root/<label>``: one patient's T1 series in a study of its own."""
    from helpers.dicom_writer import write_series_from_volume
    from pydicom.uid import generate_uid

    write_series_from_volume(np.rint(ellipsoid(seed=seed) + 50), AFFINE, root / label / "s2",
                             series_description="T1 MPRAGE pre", series_number=2,
                             study_uid=generate_uid())
    return root


def test_dicom2bids_refuses_a_subject_holding_another_patients_data(capsys, tmp_path):
    """Issue 26: a second DICOM folder ``01`` (another patient) replaced sub-01's images."""
    first = _dicom_t1(tmp_path / "first", "01", seed=1)
    out = tmp_path / "bids"
    assert run_cli(capsys, "dicom2bids", "--dicom", first, "--out", out)[0] == 0
    other = _dicom_t1(tmp_path / "other", "01", seed=2)
    before, source = tree_fingerprint(out), tree_fingerprint(other)
    code, lines = run_cli(capsys, "dicom2bids", "--dicom", other, "--out", out)
    assert_one_line(code, lines, f"{out / 'sub-01'}: ", "another DICOM study",
                    "refusing to mix two patients")
    assert (tree_fingerprint(out), tree_fingerprint(other)) == (before, source)
    assert run_cli(capsys, "dicom2bids", "--dicom", first, "--out", out)[0] == 0  # a re-run


def test_dicom2bids_refuses_a_dataset_it_did_not_write(capsys, dataset):
    """The same check as ``cesynth import``: only a missing or empty folder, or an earlier
    ``cesynth dicom2bids`` dataset."""
    dicom = _dicom_t1(dataset.parent / "dicom", "01")
    before = tree_fingerprint(dataset)
    code, lines = run_cli(capsys, "dicom2bids", "--dicom", dicom, "--out", dataset)
    assert_one_line(code, lines, f"{dataset}: ", "not written by cesynth dicom2bids")
    assert tree_fingerprint(dataset) == before
