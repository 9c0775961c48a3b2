"""Real `snakemake` runs on published-cohort inputs: a subject with an ADC map in scanner units
and no DWI, and a dataset declared co-registered and skull-stripped; a changed declaration
reruns what depends on it and nothing else."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from helpers.bids_builder import AFFINE, SHAPE, ellipsoid, make_dataset, save
from helpers.workflow import CESYNTH, dry_run_jobs, snakemake

from cesynth.io import read_json, read_tsv

pytestmark = pytest.mark.slow  # real runs of the workflow


def write_config(tmp_path: Path, bids: Path, **overrides) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"bids_dir": str(bids), "results_dir": str(tmp_path / "out"),
                                      "demo": {"enabled": False}, **overrides}))
    return config


def test_a_phantom_subject_with_an_md_map_in_scanner_units_instead_of_a_dwi(tmp_path):
    bids = tmp_path / "bids"
    subprocess.run([CESYNTH, "phantom", "--out", str(bids), "--subjects", "2", "--set-b", "0",
                    "--voxel-mm", "4"], check=True, capture_output=True)
    dwi = bids / "sub-02" / "dwi"
    fitted = tmp_path / "fitted_adc.nii.gz"
    subprocess.run([CESYNTH, "adc", "--dwi", str(dwi / "sub-02_dwi.nii.gz"), "--bval",
                    str(dwi / "sub-02_dwi.bval"), "--bvec", str(dwi / "sub-02_dwi.bvec"),
                    "--out", str(fitted)], check=True, capture_output=True)
    img = nib.load(fitted)
    save(np.asarray(img.dataobj) * 1e6, dwi / "sub-02_adc.nii.gz", affine=img.affine)
    (dwi / "sub-02_adc.json").write_text(json.dumps({"Description": "MD (FSL DTIFIT)"}))
    for ext in (".nii.gz", ".bval", ".bvec"):
        (dwi / f"sub-02_dwi{ext}").unlink()
    config = write_config(tmp_path, bids)
    out = tmp_path / "out"
    targets = [str(out / "qc" / f"{stage}.tsv") for stage in ("adc", "registration")]
    planned = dry_run_jobs(tmp_path, "--configfile", str(config), "--cores", "2", *targets)
    assert planned["fit_adc"] == 1 and planned["convert_adc_map"] == 1
    snakemake(tmp_path, "--configfile", str(config), "--cores", "2", *targets)
    converted = nib.load(out / "preproc/sub-02/dwi/sub-02_adc.nii.gz")
    assert converted.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(converted.dataobj), np.asarray(img.dataobj),
                               rtol=1e-5, atol=1e-9)
    adc_qc = read_tsv(out / "qc" / "adc.tsv").set_index("scan_id")
    assert adc_qc.loc["01", "source"] == "fitted from DWI"
    assert adc_qc.loc["02", "source"] == "given MD map"
    assert adc_qc.loc["02", "unit"] == "1e-6 mm2/s"
    registration = read_tsv(out / "qc" / "registration.tsv")
    row = registration[(registration["scan_id"] == "02") & (registration["modality"] == "dwi")]
    assert row["method"].tolist() == ["ANTs rigid of the ADC map (capped at 2x its median)"]
    # the map registered itself lands where the phantom's truth says (4 mm voxels)
    assert float(row["truth_mean_displacement_mm"].iloc[0]) < 2.0
    assert (out / "preproc/sub-02/anat/sub-02_space-ceT1w_adc.nii.gz").is_file()
    assert (out / "preproc/sub-02/anat/sub-02_from-dwi_to-ceT1w_xfm.mat").is_file()


def stripped(seed: int) -> np.ndarray:
    inside = ellipsoid(seed=0, scale=1.0) > 0.5
    return np.where(inside, np.maximum(ellipsoid(seed=seed), 1.0), 0).astype(np.float32)


def test_a_dataset_declared_coregistered_and_skull_stripped(tmp_path):
    bids = make_dataset(tmp_path / "bids")
    inside = ellipsoid(seed=0, scale=1.0) > 0.5
    for label in ("01", "02"):
        anat = bids / f"sub-{label}" / "anat"
        for offset, suffix in enumerate(("T1w", "ce-gadolinium_T1w", "T2w")):
            save(stripped(offset + int(label)), anat / f"sub-{label}_{suffix}.nii.gz")
        adc = np.where(inside, 800.0, 0).astype(np.float32)  # 1e-6 mm2/s
        save(adc, bids / f"sub-{label}" / "dwi" / f"sub-{label}_adc.nii.gz")
    save(inside.astype(np.uint8), bids / "sub-01/anat/sub-01_desc-brain_mask.nii.gz")
    declared = {"coregistered": True, "skull_stripped": True}
    config = write_config(tmp_path, bids, ingest=declared, model_grid={"shape": [16, 16, 8]})
    out = tmp_path / "out"
    targets = [str(out / "qc" / f"{stage}.tsv")
               for stage in ("adc", "registration", "brainmask", "normalise")]
    args = ("--configfile", str(config), "--cores", "2", *targets)
    planned = dry_run_jobs(tmp_path, *args)
    assert "register_anat_to_cet1w" not in planned and "register_dwi_to_cet1w" not in planned
    assert planned["coregistered_anat_to_cet1w"] == 4
    assert planned["coregistered_adc_to_cet1w"] == 2
    snakemake(tmp_path, *args)

    registration = read_tsv(out / "qc" / "registration.tsv")
    assert set(registration["method"]) == {"identity (declared co-registered)"}
    ce = nib.load(bids / "sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz")
    copied = nib.load(out / "preproc/sub-01/anat/sub-01_space-ceT1w_T2w.nii.gz")
    assert copied.shape == SHAPE and np.allclose(copied.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(copied.dataobj), stripped(3))
    masks = read_tsv(out / "qc" / "brainmask.tsv").set_index("scan_id")
    assert masks.loc["01", "method"] == "provided" and masks.loc["02", "method"] == "nonzero"
    sidecar = read_json(out / "preproc/sub-02/anat/sub-02_desc-brain_mask.json")
    assert sidecar["RequestedMethod"] == "skull-stripped" and sidecar["Method"] == "nonzero"
    mask = np.asarray(nib.load(out / "preproc/sub-02/anat/sub-02_desc-brain_mask.nii.gz").dataobj)
    assert mask.shape == ce.shape and np.array_equal(mask > 0, inside)
    assert dry_run_jobs(tmp_path, *args) == {}  # nothing to redo

    # a changed declaration reruns what depends on it, nothing else
    undeclared = write_config(tmp_path, bids, ingest={**declared, "coregistered": False},
                              model_grid={"shape": [16, 16, 8]})
    jobs = dry_run_jobs(tmp_path, "--configfile", str(undeclared), "--cores", "2", *targets)
    assert jobs["register_anat_to_cet1w"] == 4 and jobs["register_dwi_to_cet1w"] == 2
    assert not {"validate_subject", "convert_adc_map", "mask_brain"} & set(jobs)
    unstripped = write_config(tmp_path, bids, ingest={**declared, "skull_stripped": False},
                              model_grid={"shape": [16, 16, 8]})
    jobs = dry_run_jobs(tmp_path, "--configfile", str(unstripped), "--cores", "2", *targets)
    assert jobs["mask_brain"] == 2
    assert not {"coregistered_anat_to_cet1w", "coregistered_adc_to_cet1w",
                "convert_adc_map"} & set(jobs)
