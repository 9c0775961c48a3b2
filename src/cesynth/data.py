"""Training data for torch: random 3-slice patches of cached subjects, loaders, validation.

The subjects come from the slice-major ``.npy`` cache of :mod:`cesynth.cache` (written by
:func:`cesynth.cache.cache_subject`), memory-mapped read-only.

Patch sampling is a pure function of ``(seed, epoch, index)``: resuming at an epoch replays the
same patches in the same order, whatever the number of data-loader workers.

The module is a little over 500 lines because it is one concern, the trainer's torch data: the
patch dataset, its epoch sampler, the two loaders and the validation volumes all read the same
cached subjects and share the patch layout (:data:`PATCH_KEYS`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cesynth.cache import ARRAY_NAMES, INPUT_MODALITIES, PATCH_SLICES
from cesynth.integrity import verify
from cesynth.io import InputError, read_json

T1_CHANNEL = INPUT_MODALITIES.index("T1w")
"""Cache input channel of the T1 (caches hold :data:`INPUT_MODALITIES` in order)."""
PATCH_KEYS = (*ARRAY_NAMES, "t1")
"""Arrays of a patch: the cached ones, and the T1 as cached (flipped, never jittered) for the
local loss's enhancement mask, which must not change with the intensity augmentation."""

# ---------------------------------------------------------------- cached subjects


@dataclass(frozen=True)
class CachedSubject:
    """One cached subject: its JSON metadata and the paths of its arrays.

    Args:
        json_path: the ``<subject>_cache.json`` file.
        name: subject label.
        first: first foreground slice (inclusive).
        last: last foreground slice (inclusive).
        arrays: array name (``inputs``, ``target``, ``mask``) -> ``.npy`` path.
    """

    json_path: Path
    name: str
    first: int
    last: int
    arrays: dict[str, Path]

    @classmethod
    def read(cls, json_path: str | Path) -> CachedSubject:
        """Read a cache JSON, checking that its arrays exist.

        Args:
            json_path: a path returned by :func:`cesynth.cache.cache_subject`.

        Returns:
            The subject record.

        Raises:
            InputError: the JSON or one of its arrays is missing, or the JSON is malformed.
        """
        json_path = Path(json_path)
        meta = read_json(json_path)
        try:
            arrays = {key: json_path.parent / meta["files"][key] for key in ARRAY_NAMES}
            first, last = (int(v) for v in meta["foreground_slices"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(json_path, f"malformed cache metadata ({err!r})") from err
        for path in arrays.values():
            if not path.is_file():
                raise InputError(path, "file not found")
            verify(path, checksum=False)  # a truncated array: named, never trained on
        return cls(json_path, str(meta.get("subject", json_path.stem)), first, last, arrays)

    def open(self) -> dict[str, np.ndarray]:
        """Memory-map the arrays read-only (nothing is read until it is indexed)."""
        return {key: np.load(path, mmap_mode="r") for key, path in self.arrays.items()}


# ---------------------------------------------------------------- patches


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation, drawn per patch from the patch's own generator.

    Args:
        flip_prob: probability of a left-right flip (the in-plane X axis) of inputs, target and
            mask together.
        jitter: half-width of a multiplicative intensity factor ``U(1 - jitter, 1 + jitter)``
            drawn per input channel; the target is never changed. No clipping afterwards.
    """

    flip_prob: float = 0.5
    jitter: float = 0.05


def slab_enhancement(target: np.ndarray, t1: np.ndarray, mask: np.ndarray, delta: float,
                     slab_slices: int = PATCH_SLICES) -> np.ndarray:
    """Enhancement held by each slab of ``slab_slices`` consecutive slices.

    A slab's enhancement is ``sum(max(Y - X_T1 - delta, 0))`` inside the brain: by how much the
    target exceeds the T1 beyond the local loss's threshold. Unlike a count of voxels above
    ``delta``, it is not dominated by the many flat-tissue voxels whose equalised intensity moved
    a little (issue 22's finding); lesion slabs, whose enhancement is large, weigh most.

    Args:
        target, t1, mask: slice-major ``(Z, Y, X)`` arrays of one subject.
        delta: threshold on ``Y - X_T1``.
        slab_slices: slices per slab.

    Returns:
        ``(Z - slab_slices + 1,)`` float64 enhancement per slab start.
    """
    excess = np.clip(np.asarray(target, np.float64) - np.asarray(t1, np.float64) - delta, 0, None)
    per_slice = (excess * (np.asarray(mask) > 0)).reshape(excess.shape[0], -1).sum(axis=1)
    return np.convolve(per_slice, np.ones(slab_slices), mode="valid")


class PatchDataset(Dataset):
    """Random 3-slice patches from the foreground slices of cached subjects.

    Index ``i`` belongs to subject ``i % n_subjects``, so each subject gives exactly
    ``patches_per_subject`` patches per epoch; the patch start (and augmentation) come from a
    generator seeded with ``(seed, epoch, i)``. Files are memory-mapped lazily in each process,
    never pickled into workers.

    Args:
        cache_paths: cache JSONs from :func:`cesynth.cache.cache_subject`.
        patches_per_subject: epoch length per subject.
        seed: base seed of patch sampling.
        augmentation: optional random flip and intensity jitter.
        patch_slices: slices per patch (3 in the paper).
        enhancing_share: share of patches whose first slice is drawn with probability
            proportional to the slab's enhancement (:func:`slab_enhancement`); the others, and
            every patch of a subject without enhancement, are drawn uniformly. 0 leaves the
            random stream exactly as uniform sampling draws it.
        delta: the enhancement threshold of :func:`slab_enhancement` (the local loss's).

    Raises:
        InputError: no subjects, a missing cache file, or a subject with fewer foreground
            slices than ``patch_slices``.
    """

    def __init__(
        self,
        cache_paths: Sequence[str | Path],
        *,
        patches_per_subject: int = 1,
        seed: int = 0,
        augmentation: Augmentation | None = None,
        patch_slices: int = PATCH_SLICES,
        enhancing_share: float = 0.0,
        delta: float = 0.1,
    ):
        if not cache_paths:
            raise InputError("PatchDataset", "no cached subjects")
        if patches_per_subject < 1:
            raise InputError("PatchDataset", f"patches_per_subject must be >= 1, "
                             f"got {patches_per_subject}")
        self.subjects = [CachedSubject.read(p) for p in cache_paths]
        for subject in self.subjects:
            if subject.last - subject.first + 1 < patch_slices:
                raise InputError(subject.json_path, f"fewer than {patch_slices} foreground slices")
        self.patches_per_subject = int(patches_per_subject)
        self.seed = int(seed)
        self.epoch = 0
        self.augmentation = augmentation
        self.patch_slices = int(patch_slices)
        self._open: dict[int, dict[str, np.ndarray]] = {}
        self.patch_shapes = self._common_patch_shapes()
        self.enhancing_share = float(enhancing_share)
        self.slab_weights = ([self._slab_weights(i, delta) for i in range(len(self.subjects))]
                             if self.enhancing_share > 0 else [])

    def __len__(self) -> int:
        return len(self.subjects) * self.patches_per_subject

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose patches ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}  # pickling a memmap would copy the whole volume into the worker
        return state

    def patch_location(self, index: int) -> tuple[int, int]:
        """Subject number and first slice of patch ``index`` in the current epoch."""
        subject_id, rng = self._subject_and_rng(index)
        return subject_id, self._start(subject_id, rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Patch ``index`` of the current epoch.

        Returns:
            ``inputs`` float32 ``(C, 3, Y, X)``, ``target`` float32 ``(1, 3, Y, X)``, ``mask``
            uint8 ``(1, 3, Y, X)``, ``t1`` float32 ``(1, 3, Y, X)`` (the T1 without intensity
            jitter), and the ints ``index``, ``subject`` (position in
            ``cache_paths``) and ``start`` (first slice).
        """
        patch = {key: np.empty(shape, dtype) for key, (shape, dtype) in self.patch_shapes.items()}
        subject_id, start = self.write_patch(index, patch)
        out: dict[str, Any] = {key: torch.from_numpy(array) for key, array in patch.items()}
        out["index"], out["subject"], out["start"] = int(index), subject_id, start
        return out

    def write_patch(self, index: int, out: Mapping[str, np.ndarray]) -> tuple[int, int]:
        """Write patch ``index`` of the current epoch into preallocated arrays.

        Args:
            index: patch index.
            out: ``inputs``, ``target``, ``mask`` and ``t1`` arrays of :attr:`patch_shapes`.

        Returns:
            The subject number and the first slice of the patch.
        """
        subject_id, rng = self._subject_and_rng(index)
        start = self._start(subject_id, rng)
        window = slice(start, start + self.patch_slices)
        arrays = self._arrays(subject_id)
        flip, scale = self._draw_augmentation(rng, n_channels=arrays["inputs"].shape[0])
        for key in ARRAY_NAMES:
            source = arrays[key][:, window]
            source = source[..., ::-1] if flip else source
            if key == "inputs" and scale is not None:
                np.multiply(source, scale, out=out[key])  # read, flip and jitter in one pass
            else:
                np.copyto(out[key], source)
            if key == "inputs":
                np.copyto(out["t1"], source[T1_CHANNEL:T1_CHANNEL + 1])
        return subject_id, start

    def _common_patch_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of one patch per array; every subject must share them to be batched."""
        shapes = {}
        for subject_id, subject in enumerate(self.subjects):
            arrays = self._arrays(subject_id)
            found = {key: ((array.shape[0], self.patch_slices, *array.shape[2:]), array.dtype)
                     for key, array in arrays.items()}
            found["t1"] = ((1, *found["inputs"][0][1:]), found["inputs"][1])
            if shapes and found != shapes:
                raise InputError(subject.json_path, f"cached grid or channels differ from "
                                 f"{self.subjects[0].name}: {found} against {shapes}")
            shapes = found
        self._open.clear()  # opened again lazily in the process that reads patches
        return shapes

    def _subject_and_rng(self, index: int) -> tuple[int, np.random.Generator]:
        if not 0 <= index < len(self):
            raise IndexError(f"patch index {index} outside 0..{len(self) - 1}")
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return int(index) % len(self.subjects), rng

    def _start(self, subject_id: int, rng: np.random.Generator) -> int:
        subject = self.subjects[subject_id]
        if self.enhancing_share > 0 and rng.random() < self.enhancing_share:
            weights = self.slab_weights[subject_id]
            if weights is not None:
                return subject.first + int(rng.choice(len(weights), p=weights))
        return int(rng.integers(subject.first, subject.last - self.patch_slices + 2))

    def _slab_weights(self, subject_id: int, delta: float) -> np.ndarray | None:
        """Drawing probabilities of the subject's slab starts (None: no enhancement)."""
        subject, arrays = self.subjects[subject_id], self._arrays(subject_id)
        window = slice(subject.first, subject.last + 1)
        per_slab = slab_enhancement(arrays["target"][0, window],
                                    arrays["inputs"][T1_CHANNEL, window],
                                    arrays["mask"][0, window], delta, self.patch_slices)
        self._open.clear()
        total = per_slab.sum()
        return per_slab / total if total > 0 else None

    def _arrays(self, subject_id: int) -> dict[str, np.ndarray]:
        if subject_id not in self._open:
            self._open[subject_id] = self.subjects[subject_id].open()
        return self._open[subject_id]

    def _draw_augmentation(self, rng: np.random.Generator, n_channels: int
                           ) -> tuple[bool, np.ndarray | None]:
        """Flip or not, and the per-channel intensity factors (``None``: no jitter)."""
        aug = self.augmentation
        if aug is None:
            return False, None
        flip = bool(rng.random() < aug.flip_prob)
        factors = rng.uniform(1 - aug.jitter, 1 + aug.jitter, size=n_channels)
        if aug.jitter <= 0:
            return flip, None
        return flip, factors.astype(np.float32)[:, None, None, None]


class EpochSampler(Sampler[int]):
    """Seeded per-epoch order of patch indices, sharded across ranks like ``DistributedSampler``.

    The order is a permutation drawn from ``(seed, epoch)``; rank ``r`` of ``world_size`` takes
    every ``world_size``-th index from position ``r``. The tail that does not divide evenly is
    dropped, so ranks are disjoint and all take the same number of steps.

    Args:
        n_items: dataset length.
        seed: base seed.
        epoch: the epoch.
        rank: this process's rank.
        world_size: number of processes.
        shuffle: permute (True) or keep the index order.
    """

    def __init__(self, n_items: int, *, seed: int = 0, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError("sampler", f"need 0 <= rank < world_size, got {rank}, {world_size}")
        if n_items < world_size:
            raise InputError("sampler", f"{n_items} patches cannot feed {world_size} ranks")
        self.n_items, self.seed, self.epoch = n_items, seed, epoch
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    def indices(self) -> list[int]:
        """This rank's indices for the epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items)
        else:
            order = np.arange(self.n_items)
        usable = len(self) * self.world_size
        return [int(i) for i in order[self.rank:usable:self.world_size]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.n_items // self.world_size


def make_loader(
    dataset: PatchDataset,
    batch_size: int = 3,
    workers: int = 0,
    seed: int | None = None,
    epoch: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterable[dict[str, torch.Tensor]]:
    """A seeded loader over one epoch of ``dataset`` (build a new one each epoch).

    Args:
        dataset: the patch dataset; its epoch is set to ``epoch``.
        batch_size: patches per batch (3 in the paper).
        workers: data-loader worker processes (0 = load in this process).
        seed: order seed; default the dataset's seed.
        epoch: the epoch, which selects both the order and the patches.
        rank: this process's rank when training is distributed.
        world_size: number of processes.
        shuffle: shuffle the patch order.
        drop_last: drop a last incomplete batch.

    Returns:
        The loader of :func:`batch_loader`; its batches depend only on
        ``(seed, epoch, rank, world_size)``.
    """
    seed = dataset.seed if seed is None else int(seed)
    dataset.set_epoch(epoch)
    sampler = EpochSampler(len(dataset), seed=seed, epoch=epoch, rank=rank,
                           world_size=world_size, shuffle=shuffle)
    return batch_loader(dataset, sampler.indices(), batch_size, workers,
                        drop_last=drop_last, worker_seed=seed * 100_003 + epoch)


def batch_loader(
    dataset: PatchDataset,
    indices: Sequence[int],
    batch_size: int,
    workers: int = 0,
    *,
    drop_last: bool = False,
    worker_seed: int = 0,
) -> Iterable[dict[str, torch.Tensor]]:
    """Batches of the patches ``indices``, in order, loaded here or by worker processes.

    With ``workers=0`` a plain ``DataLoader`` reads the memory-mapped patches in this process
    (a few thousand patches/s on the paper grid). With workers, each batch is written straight
    into a ring of shared-memory buffers allocated once (:class:`SharedBatchLoader`): sending a
    freshly allocated 7 MB batch between processes instead costs about 10 ms, which capped
    workers at about 300 patches/s on 2 cores.

    Args:
        dataset: the patch dataset, its epoch already set.
        indices: patch indices in loading order.
        batch_size: patches per batch.
        workers: worker processes.
        drop_last: drop a last incomplete batch.
        worker_seed: base of the workers' seeds (see :func:`seed_worker`).

    Returns:
        An iterable of batches (see :func:`collate_patches`) with ``len``.
    """
    if workers > 0:
        return SharedBatchLoader(dataset, indices, batch_size, workers,
                                 drop_last=drop_last, worker_seed=worker_seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=list(indices), num_workers=0,
                      drop_last=drop_last, collate_fn=collate_patches)


def collate_patches(patches: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack patches into a batch with numpy.

    ``default_collate`` uses ``torch.stack``, whose intra-op threads stall on a busy machine with
    few cores (20-50 ms per batch measured on 2 shared cores against 0.3 ms here).

    Args:
        patches: items of :class:`PatchDataset`.

    Returns:
        ``inputs``, ``target``, ``mask``, ``t1`` with a leading batch axis, and 1D int64 tensors
        ``index``, ``subject`` and ``start``.
    """
    batch: dict[str, torch.Tensor] = {}
    for key in PATCH_KEYS:
        first = patches[0][key]
        stacked = torch.empty((len(patches), *first.shape), dtype=first.dtype)
        np.stack([p[key].numpy() for p in patches], out=stacked.numpy())
        batch[key] = stacked
    return batch | _batch_positions([{k: p[k] for k in POSITION_KEYS} for p in patches])


POSITION_KEYS = ("index", "subject", "start")


def _batch_positions(positions: Sequence[Mapping[str, int]]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor([int(p[key]) for p in positions], dtype=torch.int64)
            for key in POSITION_KEYS}


class SharedBatchLoader:
    """Worker processes write batches into shared-memory slots that are reused, never resent.

    The ring has ``prefetch * workers + 2`` slots per array. Batch ``b`` goes to slot
    ``b % slots``; the ``DataLoader`` keeps at most ``prefetch * workers`` batches in flight
    after the one it hands out, so a batch stays intact until the one after it has been
    drawn. Consume each batch (or copy it) before drawing the next but one, as a training loop
    does.

    Args:
        dataset: the patch dataset, its epoch already set.
        indices: patch indices in loading order.
        batch_size: patches per batch.
        workers: worker processes (>= 1).
        drop_last: drop a last incomplete batch.
        worker_seed: base of the workers' seeds.
        prefetch: batches each worker loads ahead.
    """

    def __init__(self, dataset: PatchDataset, indices: Sequence[int], batch_size: int,
                 workers: int, *, drop_last: bool = False, worker_seed: int = 0,
                 prefetch: int = 2):
        chunks = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
        if drop_last and chunks and len(chunks[-1]) < batch_size:
            chunks.pop()
        slots = prefetch * workers + 2
        self.buffers = {
            key: torch.empty((slots, batch_size, *shape), dtype=_torch_dtype(dtype)).share_memory_()
            for key, (shape, dtype) in dataset.patch_shapes.items()}
        writer = _SlotWriter(dataset, self.buffers)
        self._loader = DataLoader(
            writer, batch_size=None, sampler=list(enumerate(chunks)), num_workers=workers,
            prefetch_factor=prefetch, worker_init_fn=seed_worker, collate_fn=_as_is,
            generator=torch.Generator().manual_seed(worker_seed))

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for filled in self._loader:
            slot, size = filled["slot"], len(filled["positions"])
            batch = {key: buffer[slot, :size] for key, buffer in self.buffers.items()}
            yield batch | _batch_positions(filled["positions"])


class _SlotWriter(Dataset):
    """Item ``(batch_number, indices)``: write those patches into the batch's slot."""

    def __init__(self, dataset: PatchDataset, buffers: Mapping[str, torch.Tensor]):
        self.dataset, self.buffers = dataset, dict(buffers)
        self.slots = next(iter(buffers.values())).shape[0]

    def __getitem__(self, item: tuple[int, list[int]]) -> dict[str, Any]:
        batch_number, indices = item
        slot = batch_number % self.slots
        positions = []
        for row, index in enumerate(indices):
            out = {key: buffer[slot, row].numpy() for key, buffer in self.buffers.items()}
            subject, start = self.dataset.write_patch(index, out)
            positions.append({"index": index, "subject": subject, "start": start})
        return {"slot": slot, "positions": positions}  # small: pickled, not shared


def _as_is(item: Any) -> Any:
    return item


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from torch's per-worker seed.

    Patch sampling does not rely on these (it has its own generators); this keeps any other
    randomness in a worker reproducible too.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


# ---------------------------------------------------------------- validation


@dataclass(frozen=True)
class SubjectVolumes:
    """One subject's foreground slices, slice-major, loaded into memory.

    Args:
        subject: subject label.
        first: first foreground slice in the full volume (to place predictions back).
        inputs: float32 ``(C, F, Y, X)``, ``F`` = number of foreground slices.
        target: float32 ``(1, F, Y, X)``.
        mask: uint8 ``(1, F, Y, X)``.
    """

    subject: str
    first: int
    inputs: np.ndarray
    target: np.ndarray
    mask: np.ndarray


class ValidationVolumes(Sequence[SubjectVolumes]):
    """Whole cached subjects, foreground slices only, for validation and evaluation.

    Args:
        cache_paths: cache JSONs from :func:`cesynth.cache.cache_subject`.

    Raises:
        InputError: a missing cache file.
    """

    def __init__(self, cache_paths: Sequence[str | Path]):
        self.subjects = [CachedSubject.read(p) for p in cache_paths]

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> SubjectVolumes:  # type: ignore[override]
        """Load subject ``index``.

        Returns:
            Its foreground slices (copies, not memory maps).
        """
        subject = self.subjects[index]
        arrays = subject.open()
        window = slice(subject.first, subject.last + 1)
        loaded = {key: np.array(arrays[key][:, window]) for key in ARRAY_NAMES}
        return SubjectVolumes(subject.name, subject.first, **loaded)

    def __iter__(self) -> Iterator[SubjectVolumes]:
        return (self[i] for i in range(len(self)))
