"""Tests for the training cache (cesynth.cache), patch sampler and validation volumes (.data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cesynth.cache import cache_subject
from cesynth.data import (
    Augmentation,
    CachedSubject,
    EpochSampler,
    PatchDataset,
    ValidationVolumes,
    make_loader,
    slab_enhancement,
)
from cesynth.io import InputError, save_nifti, write_json
from cesynth.normalise import to_slice_major

GRID = (16, 20, 12)  # RAS (x, y, z): slice-major (12, 20, 16)
FOREGROUND = (3, 8)
AFFINE = np.diag([1.5, 1.2, 2.0, 1.0])


def _write_subject(root, name: str, seed: int, modalities=("T1w", "T2w", "adc", "ceT1w")):
    """Model-grid images, mask and sidecar of one subject; returns (paths, mask, sidecar, data)."""
    rng = np.random.default_rng(seed)
    paths, data = {}, {}
    for modality in modalities:
        data[modality] = rng.random(GRID, dtype=np.float32)
        paths[modality] = save_nifti(
            data[modality], AFFINE, root / f"{name}_space-model_desc-norm_{modality}.nii.gz")
    mask = np.zeros(GRID, dtype=np.uint8)
    mask[3:13, 4:16, FOREGROUND[0]:FOREGROUND[1] + 1] = 1
    mask_path = save_nifti(mask, AFFINE, root / f"{name}_space-model_desc-brain_mask.nii.gz",
                           dtype=np.uint8)
    sidecar = write_json({"foreground_slices": list(FOREGROUND)},
                         root / f"{name}_space-model_desc-brain_mask.json")
    data["mask"] = mask
    return paths, mask_path, sidecar, data


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """Two cached subjects; the second lacks T2."""
    root = tmp_path_factory.mktemp("images")
    out = tmp_path_factory.mktemp("cache")
    subjects = []
    for index, modalities in enumerate([("T1w", "T2w", "adc", "ceT1w"),
                                        ("T1w", "adc", "ceT1w")]):
        paths, mask_path, sidecar, data = _write_subject(root, f"sub-{index:02d}", index,
                                                         modalities)
        json_path = cache_subject(paths, mask_path, sidecar, out)
        subjects.append((json_path, data))
    return subjects


def _dataset(cached, **options) -> PatchDataset:
    return PatchDataset([path for path, _ in cached], **options)


def _batches(loader) -> list[dict[str, torch.Tensor]]:
    """Copies of all batches (worker loaders reuse their shared buffers)."""
    return [{key: value.clone() for key, value in batch.items()} for batch in loader]


# ---------------------------------------------------------------- cache


def test_cache_round_trip(cached):
    json_path, data = cached[0]
    meta = json.loads(json_path.read_text())
    assert json_path.name == "sub-00_cache.json"
    assert meta["foreground_slices"] == list(FOREGROUND)
    assert meta["modalities"] == ["T1w", "T2w", "adc"] and meta["missing"] == []
    arrays = CachedSubject.read(json_path).open()
    assert isinstance(arrays["inputs"], np.memmap)
    assert arrays["inputs"].shape == (3, 12, 20, 16) and arrays["inputs"].dtype == np.float32
    assert arrays["target"].shape == (1, 12, 20, 16) and arrays["target"].dtype == np.float32
    assert arrays["mask"].shape == (1, 12, 20, 16) and arrays["mask"].dtype == np.uint8
    for channel, modality in enumerate(("T1w", "T2w", "adc")):
        np.testing.assert_array_equal(arrays["inputs"][channel], to_slice_major(data[modality]))
    np.testing.assert_array_equal(arrays["target"][0], to_slice_major(data["ceT1w"]))
    np.testing.assert_array_equal(arrays["mask"][0], to_slice_major(data["mask"]))


def test_missing_t2_is_zero_filled_and_recorded(cached):
    json_path, data = cached[1]
    assert json.loads(json_path.read_text())["missing"] == ["T2w"]
    inputs = CachedSubject.read(json_path).open()["inputs"]
    assert not inputs[1].any()
    np.testing.assert_array_equal(inputs[2], to_slice_major(data["adc"]))


def test_missing_file_names_it(tmp_path):
    paths, mask_path, sidecar, _ = _write_subject(tmp_path, "sub-09", 9)
    paths["adc"] = tmp_path / "sub-09_nothere_adc.nii.gz"
    with pytest.raises(InputError, match="sub-09_nothere_adc.nii.gz"):
        cache_subject(paths, mask_path, sidecar, tmp_path / "cache")
    assert not list(tmp_path.glob("cache/*"))  # checked before anything is written


def test_missing_cache_array_names_it(cached, tmp_path):
    json_path, _ = cached[0]
    meta = json.loads(json_path.read_text())
    meta["files"]["target"] = "gone_target.npy"
    broken = write_json(meta, json_path.parent / "sub-99_cache.json")
    try:
        with pytest.raises(InputError, match="gone_target.npy"):
            PatchDataset([broken])
    finally:
        broken.unlink()


# ---------------------------------------------------------------- patches


def test_patches_have_the_right_shapes_and_stay_in_the_foreground(cached):
    dataset = _dataset(cached, patches_per_subject=20)
    assert len(dataset) == 40
    starts = set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            patch = dataset[index]
            assert patch["inputs"].shape == (3, 3, 20, 16)
            assert patch["target"].shape == patch["mask"].shape == (1, 3, 20, 16)
            assert patch["inputs"].dtype == torch.float32 and patch["mask"].dtype == torch.uint8
            assert FOREGROUND[0] <= patch["start"] <= FOREGROUND[1] - 2
            assert patch["mask"].flatten(1).any(dim=1).all()  # every slice holds brain
            starts.add(patch["start"])
    assert starts == set(range(FOREGROUND[0], FOREGROUND[1] - 1))  # the whole range is used


def test_patch_content_matches_the_cache(cached):
    dataset = _dataset(cached, patches_per_subject=2)
    patch = dataset[1]
    json_path, data = cached[patch["subject"]]
    window = slice(patch["start"], patch["start"] + 3)
    expected = to_slice_major(data["ceT1w"])[window]
    np.testing.assert_array_equal(patch["target"][0].numpy(), expected)


def test_loader_is_deterministic_for_seed_and_epoch(cached):
    first = _batches(make_loader(_dataset(cached, patches_per_subject=6, seed=5), epoch=2))
    again = _batches(make_loader(_dataset(cached, patches_per_subject=6, seed=5), epoch=2))
    assert len(first) == 4 and first[0]["inputs"].shape == (3, 3, 3, 20, 16)
    for one, two in zip(first, again, strict=True):
        for key in one:
            assert torch.equal(one[key], two[key])


def test_workers_give_the_same_batches(cached):
    dataset = _dataset(cached, patches_per_subject=3, seed=1,
                       augmentation=Augmentation(flip_prob=0.5, jitter=0.1))
    serial = _batches(make_loader(dataset, batch_size=2, workers=0, epoch=4))
    parallel = _batches(make_loader(dataset, batch_size=2, workers=2, epoch=4))
    for one, two in zip(serial, parallel, strict=True):
        assert torch.equal(one["inputs"], two["inputs"])
        assert torch.equal(one["start"], two["start"])


def test_worker_batches_stay_intact_until_the_next_is_drawn(cached):
    dataset = _dataset(cached, patches_per_subject=20, seed=2)
    serial = _batches(make_loader(dataset, batch_size=2, workers=0, epoch=1))
    previous = None
    loader = make_loader(dataset, batch_size=2, workers=2, epoch=1)
    assert len(loader) == len(serial) == 20  # more batches than the ring has slots
    for number, batch in enumerate(loader):
        if previous is not None:  # the loop still holds the last batch, as a trainer might
            assert torch.equal(previous["inputs"], serial[number - 1]["inputs"])
        assert torch.equal(batch["target"], serial[number]["target"])
        previous = batch


def test_worker_loader_keeps_a_last_short_batch(cached):
    dataset = _dataset(cached, patches_per_subject=5, seed=2)
    kept = _batches(make_loader(dataset, batch_size=4, workers=1, epoch=0))
    dropped = _batches(make_loader(dataset, batch_size=4, workers=1, epoch=0, drop_last=True))
    assert [len(b["index"]) for b in kept] == [4, 4, 2]
    assert [b["inputs"].shape[0] for b in dropped] == [4, 4]


def test_subjects_on_different_grids_cannot_be_batched(tmp_path, cached):
    root = tmp_path / "images"
    root.mkdir()
    paths, mask_path, sidecar, _ = _write_subject(root, "sub-09", 9)
    odd = {m: save_nifti(np.zeros((16, 24, 12), np.float32), AFFINE, root / f"odd_{m}.nii.gz")
           for m in paths}
    odd_mask = save_nifti(np.ones((16, 24, 12), np.uint8), AFFINE, root / "odd_mask.nii.gz",
                          dtype=np.uint8)
    odd_json = cache_subject(odd, odd_mask, sidecar, tmp_path / "cache", subject="sub-09")
    with pytest.raises(InputError, match="sub-09_cache.json.*differ from sub-00"):
        PatchDataset([cached[0][0], odd_json])


def test_different_epochs_differ(cached):
    dataset = _dataset(cached, patches_per_subject=6, seed=5)
    epoch0 = _batches(make_loader(dataset, epoch=0))
    epoch1 = _batches(make_loader(dataset, epoch=1))
    starts0 = torch.cat([b["start"] for b in epoch0])
    starts1 = torch.cat([b["start"] for b in epoch1])
    order0 = torch.cat([b["subject"] for b in epoch0])
    assert not torch.equal(starts0, starts1)
    assert torch.bincount(order0).tolist() == [6, 6]  # each subject its share of patches


def test_flip_is_applied_to_inputs_target_and_mask_together(cached):
    plain = _dataset(cached, patches_per_subject=4, seed=3)
    flipped = _dataset(cached, patches_per_subject=4, seed=3,
                       augmentation=Augmentation(flip_prob=1.0, jitter=0.0))
    for index in range(len(plain)):
        a, b = plain[index], flipped[index]
        assert a["start"] == b["start"]
        for key in ("inputs", "target", "mask", "t1"):
            assert torch.equal(b[key], torch.flip(a[key], dims=[-1]))


def test_jitter_scales_inputs_per_channel_only(cached):
    plain = _dataset(cached, seed=3)
    jittered = _dataset(cached, seed=3, augmentation=Augmentation(flip_prob=0.0, jitter=0.1))
    a, b = plain[0], jittered[0]
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["mask"], b["mask"])
    for channel in range(3):
        ratio = b["inputs"][channel] / a["inputs"][channel].clamp_min(1e-3)
        present = a["inputs"][channel] > 1e-3
        factor = ratio[present]
        assert torch.allclose(factor, factor[0], rtol=1e-5)
        assert 0.9 <= float(factor[0]) <= 1.1 and float(factor[0]) != 1.0


def test_the_local_loss_reference_t1_is_never_jittered(cached):
    """The enhancement mask Y - X_T1 > delta must not change with each augmentation draw."""
    plain = _dataset(cached, seed=3)
    for seed in (3, 4):
        jittered = _dataset(cached, seed=seed,
                            augmentation=Augmentation(flip_prob=0.0, jitter=0.1))
        for index in range(len(plain)):
            a, b = plain[index], jittered[index]
            if a["start"] != b["start"]:
                continue
            assert torch.equal(b["t1"], a["inputs"][:1])
            assert not torch.equal(b["inputs"][:1], a["inputs"][:1])


def test_sharding_gives_disjoint_equal_shares():
    shards = [EpochSampler(10, seed=2, epoch=1, rank=rank, world_size=3).indices()
              for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    flat = [i for shard in shards for i in shard]
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))


def test_sharded_loaders_do_not_overlap(cached):
    dataset = _dataset(cached, patches_per_subject=6)
    seen = []
    for rank in range(2):
        loader = make_loader(dataset, batch_size=2, epoch=0, rank=rank, world_size=2)
        seen.append(torch.cat([batch["index"] for batch in loader]).tolist())
    assert len(seen[0]) == len(seen[1]) == 6
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(12))


def test_bad_rank_is_rejected():
    with pytest.raises(InputError):
        EpochSampler(10, rank=2, world_size=2)


# ---------------------------------------------------------------- validation


def test_validation_volumes_hold_the_foreground_slices(cached):
    volumes = ValidationVolumes([path for path, _ in cached])
    assert len(volumes) == 2
    first = next(iter(volumes))
    n_slices = FOREGROUND[1] - FOREGROUND[0] + 1
    assert first.subject == "sub-00" and first.first == FOREGROUND[0]
    assert first.inputs.shape == (3, n_slices, 20, 16)
    assert first.target.shape == first.mask.shape == (1, n_slices, 20, 16)
    window = slice(FOREGROUND[0], FOREGROUND[1] + 1)
    expected = to_slice_major(cached[0][1]["T1w"])[window]
    np.testing.assert_array_equal(first.inputs[0], expected)


# ---------------------------------------------------------------- sampling through enhancement


def test_slab_enhancement_weighs_enhancement_beyond_delta_only():
    t1 = np.zeros((8, 4, 4))
    target = t1 + 0.05  # a uniform brightening below delta counts for nothing
    target[5, 1, 1] = 0.6
    mask = np.ones_like(t1)
    per_slab = slab_enhancement(target, t1, mask, delta=0.1)
    assert per_slab.shape == (6,)
    np.testing.assert_allclose(per_slab, [0, 0, 0, 0.5, 0.5, 0.5])
    mask[5] = 0  # outside the brain it does not count either
    assert not slab_enhancement(target, t1, mask, delta=0.1).any()


def _subject_enhancing_at(root, out, name: str, enhancing_slice: int):
    """A cached subject whose CE-T1 equals its T1 except one enhancing spot in one slice."""
    rng = np.random.default_rng(3)
    t1 = rng.random(GRID, dtype=np.float32)
    ce = t1.copy()
    ce[8, 10, enhancing_slice] += 0.8
    images = {"T1w": t1, "T2w": t1, "adc": t1, "ceT1w": ce}
    paths = {modality: save_nifti(image, AFFINE, root / f"{name}_{modality}.nii.gz")
             for modality, image in images.items()}
    mask = np.zeros(GRID, dtype=np.uint8)
    mask[3:13, 4:16, FOREGROUND[0]:FOREGROUND[1] + 1] = 1
    mask_path = save_nifti(mask, AFFINE, root / f"{name}_mask.nii.gz", dtype=np.uint8)
    sidecar = write_json({"foreground_slices": list(FOREGROUND)}, root / f"{name}_mask.json")
    return cache_subject(paths, mask_path, sidecar, out)


def test_enhancing_share_draws_slabs_through_the_enhancement(tmp_path):
    cache = _subject_enhancing_at(tmp_path, tmp_path / "cache", "sub-01", enhancing_slice=6)
    always = PatchDataset([cache], patches_per_subject=60, enhancing_share=1.0)
    starts = {always.patch_location(i)[1] for i in range(len(always))}
    assert starts == {4, 5, 6}  # every slab that holds slice 6, none other
    half = PatchDataset([cache], patches_per_subject=200, enhancing_share=0.5)
    through = np.mean([4 <= half.patch_location(i)[1] <= 6 for i in range(len(half))])
    uniform = PatchDataset([cache], patches_per_subject=200)
    through_uniform = np.mean([4 <= uniform.patch_location(i)[1] <= 6 for i in range(200)])
    assert through_uniform < 0.8 < through  # 3 of 4 slabs uniformly; half of the rest added


def test_a_subject_without_enhancement_is_sampled_uniformly(tmp_path):
    rng_free = _subject_enhancing_at(tmp_path, tmp_path / "cache", "sub-01", enhancing_slice=0)
    dataset = PatchDataset([rng_free], patches_per_subject=40, enhancing_share=1.0)
    assert dataset.slab_weights == [None]  # slice 0 is outside the foreground slices
    starts = {dataset.patch_location(i)[1] for i in range(len(dataset))}
    assert starts == set(range(FOREGROUND[0], FOREGROUND[1] - 1))
