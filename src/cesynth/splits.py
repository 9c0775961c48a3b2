"""Split the scans into train, validation and test: Set A participants by a stable hash of
their label (or as declared, ``sets.assigned``), Set B always test, all sessions of one
participant on the same side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cesynth.import_layouts import subject_label
from cesynth.ingest import MODALITIES, ScanFiles


@dataclass(frozen=True)
class SplitFractions:
    """Shares of the Set A participants held out for selection and for reporting.

    Args:
        validation: share used for validation (checkpoint selection, early stopping, thresholds).
        test: share reported as the paper's "test set A"; never seen by training or selection.
        assigned: ``(participant label, split)`` pairs declared in place of the hash (a small
            cohort whose validation patients must have lesions); labels as
            :func:`participant_label` gives them.
    """

    validation: float = 0.1
    test: float = 0.2
    assigned: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        shares = (self.validation, self.test)
        if not all(0.0 <= share < 1.0 for share in shares) or sum(shares) >= 1.0:
            raise ValueError(f"split fractions must be in [0, 1) and sum below 1, got "
                             f"validation {self.validation}, test {self.test}")
        unknown = sorted({split for _, split in self.assigned} - set(SPLITS))
        if unknown:
            raise ValueError(f"sets.assigned: unknown splits {unknown}; expected {SPLITS}")

    @classmethod
    def from_config(cls, sets: Mapping[str, Any]) -> SplitFractions:
        """Read the config's ``sets`` mapping (``validation_fraction``, ``test_fraction``,
        ``assigned``)."""
        assigned = tuple(sorted((participant_label(str(name)), str(split))
                                for name, split in (sets.get("assigned") or {}).items()))
        return cls(float(sets["validation_fraction"]), float(sets["test_fraction"]), assigned)


SPLITS = ("train", "validation", "test")


def participant_label(name: str) -> str:
    """A participant as ``sets.assigned`` may name it (``sub-01``, ``01``, or a public case ID
    such as ``Brats18_2013_2_1``) as its BIDS label: letters and digits, as
    :func:`cesynth.import_layouts.subject_label` makes it."""
    return subject_label(name.removeprefix("sub-"))


def check_assigned(fractions: SplitFractions, participants: Mapping[str, str]) -> None:
    """Refuse a declared split that names no participant or puts a Set B one outside test.

    Args:
        fractions: the splits, with ``assigned``.
        participants: participant label -> its set (A or B), of the scans to process.

    Raises:
        ValueError: one line naming the participant.
    """
    for label, split in fractions.assigned:
        if label not in participants:
            raise ValueError(f"sets.assigned: {label}: no such participant (of "
                             f"{len(participants)}); name it by its label or public case ID")
        if participants[label] == "B" and split != "test":
            raise ValueError(f"sets.assigned: {label}: a Set B participant is always test, "
                             f"not {split}")


def participant_split(participant: str, fractions: SplitFractions = SplitFractions()) -> str:
    """Assign a Set A participant to train, validation or test from a hash of its label.

    The SHA-256 of the label gives a position in [0, 1) that is stable across runs and
    machines: [0, validation) is validation, the next ``test`` share is test, the rest train.
    Adding subjects never moves existing ones, and all sessions of one participant land on the
    same side.

    Args:
        participant: the participant label (without ``sub-``).
        fractions: the held-out shares.

    Returns:
        ``"train"``, ``"validation"`` or ``"test"``; the declared one where
        ``fractions.assigned`` names the participant.
    """
    declared = dict(fractions.assigned).get(participant)
    if declared is not None:
        return declared
    digest = hashlib.sha256(participant.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    if position < fractions.validation:
        return "validation"
    if position < fractions.validation + fractions.test:
        return "test"
    return "train"


def scan_split(set_name: str, participant: str,
               fractions: SplitFractions = SplitFractions()) -> str:
    """Return the split of a scan: Set B is ``"test"``; Set A follows :func:`participant_split`."""
    if set_name == "B":
        return "test"
    return participant_split(participant, fractions)


def assign_splits(scans: Iterable[ScanFiles],
                  fractions: SplitFractions = SplitFractions()) -> pd.DataFrame:
    """Tabulate the scans with their split and which inputs they have.

    Args:
        scans: the output of :func:`cesynth.ingest.discover_bids`.
        fractions: the held-out shares of Set A participants.

    Returns:
        One row per scan: scan_id, participant, session, set, split, has_T1w, has_ceT1w,
        has_T2w, has_dwi, has_tumor_mask.
    """
    rows = []
    for scan in scans:
        present = scan.available_modalities()
        row = {"scan_id": scan.scan_id, "participant": scan.participant,
               "session": scan.session, "set": scan.set,
               "split": scan_split(scan.set, scan.participant, fractions)}
        row.update({f"has_{name}": name in present for name in MODALITIES})
        row["has_tumor_mask"] = scan.tumor_mask is not None
        rows.append(row)
    columns = ["scan_id", "participant", "session", "set", "split",
               *(f"has_{name}" for name in MODALITIES), "has_tumor_mask"]
    return pd.DataFrame(rows, columns=columns)
