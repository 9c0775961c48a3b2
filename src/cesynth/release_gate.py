"""The release gate: whether a newly registered version becomes the registry's champion.

After evaluation the release rule registers every version (:mod:`cesynth.release`); the alias
:data:`CHAMPION_ALIAS` moves to it only when :func:`gate_decision` passes it against the
configured floor and the current champion's score.

Promoting a version is a selection, so the gate reads the *validation* split, never a reported
set: the mean brain PSNR on the validation subjects of exactly the weights released, measured
when training validated the epoch that wrote the checkpoint (:func:`validation_brain_psnr`; the
same figure that picks ``checkpoint_best``). The Set A test and Set B scores are logged and
tagged with the version and reported in its model card, but no decision reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cesynth.release import registry_client

CHAMPION_ALIAS = "champion"
"""The registry alias of the version a release gate passed last (``models:/<name>@champion``)."""
GATE_SCORE = "validation_brain_psnr"
"""The score the gate reads: mean brain PSNR (dB) of the released weights on the validation
split (:func:`validation_brain_psnr`), logged with the version's scores."""
GATE_TAG = "gate"
"""Version tag with the gate's outcome: ``passed`` or ``failed: <reason>``."""
GATE_REASON_TAG = "gate_reason"
"""Version tag with the gate's full reasoning, passed or not."""


@dataclass(frozen=True)
class ReleaseGates:
    """What a new version must reach to become the champion (config ``release.gates``).

    Attributes:
        min_val_brain_psnr: floor (dB) of its validation brain PSNR.
        tolerance_db: how far (dB) below the current champion's validation brain PSNR it may
            score and still take over.
        require_score: a version without a validation brain PSNR (trained without validation
            subjects) fails; False waives the floor for it (it still cannot displace a champion
            that has the score).
    """

    min_val_brain_psnr: float
    tolerance_db: float
    require_score: bool = True

    @classmethod
    def from_config(cls, gates: Mapping[str, Any]) -> ReleaseGates:
        """The gates of the config's ``release.gates`` mapping (schema defaults filled)."""
        return cls(min_val_brain_psnr=float(gates["min_val_brain_psnr"]),
                   tolerance_db=float(gates["tolerance_db"]),
                   require_score=bool(gates.get("require_score", True)))


@dataclass(frozen=True)
class Champion:
    """The registered version the champion alias points to, with its logged scores."""

    version: int
    scores: Mapping[str, float]


@dataclass(frozen=True)
class GateDecision:
    """The release gate's outcome for one new version.

    Attributes:
        passed: the version becomes the champion.
        reason: why, in one line (the floor, the champion compared with).
        score: the version's validation brain PSNR (None: no validation subjects).
        champion_version: the champion before this release (None: there was none).
        champion_score: that champion's validation brain PSNR (None: unknown or no champion).
        min_val_brain_psnr, tolerance_db, require_score: the gates applied.
    """

    passed: bool
    reason: str
    score: float | None
    champion_version: int | None
    champion_score: float | None
    min_val_brain_psnr: float
    tolerance_db: float
    require_score: bool

    @property
    def tag(self) -> str:
        """The :data:`GATE_TAG` value: ``passed`` or ``failed: <reason>``."""
        return "passed" if self.passed else f"failed: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tag": self.tag}


def gate_decision(scores: Mapping[str, float], champion: Champion | None,
                  gates: ReleaseGates) -> GateDecision:
    """Decide whether a new version becomes the champion.

    The rule, on the validation brain PSNR (:data:`GATE_SCORE`) ``s`` of the new version and
    ``c`` of the current champion:

    1. no ``s`` (trained without validation subjects): fails when ``gates.require_score``, else
       the floor is waived;
    2. ``s < gates.min_val_brain_psnr``: fails (the floor);
    3. no champion, or a champion without ``c``: passes;
    4. a champion with ``c`` and no ``s``: fails (nothing to compare);
    5. ``s < c - gates.tolerance_db``: fails (worse than the champion beyond the tolerance);
       otherwise passes.

    Args:
        scores: the new version's scores, holding :data:`GATE_SCORE` when it has one (other
            keys, such as the reported test scores, are ignored).
        champion: the current champion (:func:`read_champion`), None if there is none.
        gates: the configured gates.

    Returns:
        The decision with its one-line reason.
    """
    score = _finite(scores.get(GATE_SCORE))
    old = champion.version if champion is not None else None
    old_score = _finite(champion.scores.get(GATE_SCORE)) if champion is not None else None
    floor, tolerance = gates.min_val_brain_psnr, gates.tolerance_db

    def decided(passed: bool, reason: str) -> GateDecision:
        return GateDecision(passed=passed, reason=reason, score=score, champion_version=old,
                            champion_score=old_score, min_val_brain_psnr=floor,
                            tolerance_db=tolerance, require_score=gates.require_score)

    if score is None:
        if gates.require_score:
            return decided(False, "no validation brain PSNR (trained without validation "
                                  "subjects)")
        first = ("no validation brain PSNR; the floor is waived "
                 "(release.gates.require_score: false)")
    elif score < floor:
        return decided(False, f"validation brain PSNR {score:.2f} dB is below the floor "
                              f"{floor:g} dB")
    else:
        first = f"validation brain PSNR {score:.2f} dB >= floor {floor:g} dB"
    if old is None:
        return decided(True, f"{first}; no champion yet")
    if old_score is None:
        return decided(True, f"{first}; champion v{old} has no validation brain PSNR to "
                             "compare with")
    if score is None:
        return decided(False, f"no validation brain PSNR to compare with champion v{old} "
                              f"({old_score:.2f} dB)")
    if score < old_score - tolerance:
        return decided(False, f"validation brain PSNR {score:.2f} dB is {old_score - score:.2f} "
                              f"dB below champion v{old} ({old_score:.2f} dB), more than the "
                              f"tolerance {tolerance:g} dB")
    return decided(True, f"{first}; not worse than champion v{old} ({old_score:.2f} dB) beyond "
                         f"the tolerance {tolerance:g} dB")


def validation_brain_psnr(checkpoint: Mapping[str, Any]) -> float | None:
    """The mean brain PSNR (dB) of a checkpoint's weights on the validation split.

    Training validates at the end of every epoch and writes a checkpoint (latest, best, final)
    only after appending that epoch's record, so the last epoch record of the checkpoint's
    history scores exactly the weights it holds.

    Args:
        checkpoint: a checkpoint dict (:func:`cesynth.checkpoint.read_checkpoint`).

    Returns:
        The PSNR, or None when the run had no validation subjects (or no finished epoch).
    """
    epochs = (checkpoint.get("history") or {}).get("epochs") or []
    return _finite(epochs[-1].get("psnr")) if epochs else None


def read_champion(registered_name: str, *, tracking_uri: str | None = None) -> Champion | None:
    """The version the :data:`CHAMPION_ALIAS` alias points to, with its scores.

    The scores are the metrics of the run that logged the version (:func:`register_release`
    logs them at full precision); a score only in the version's tags (6 significant digits) is
    taken from there.

    Args:
        registered_name: the registered model.
        tracking_uri: the MLflow store; default MLflow's.

    Returns:
        The champion, or None when the model is unregistered or has no champion.
    """
    from mlflow.exceptions import MlflowException

    client = registry_client(tracking_uri)
    try:
        aliases = dict(client.get_registered_model(registered_name).aliases or {})
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if CHAMPION_ALIAS not in aliases:
        return None
    version = client.get_model_version(registered_name, str(aliases[CHAMPION_ALIAS]))
    scores: dict[str, float] = {}
    for key, text in (version.tags or {}).items():
        value = _finite(text)
        if (key.startswith("set") or key == GATE_SCORE) and value is not None:
            scores[key] = value
    if version.run_id:
        metrics = client.get_run(version.run_id).data.metrics
        scores |= {key: float(v) for key, v in metrics.items() if _finite(v) is not None}
    return Champion(version=int(version.version), scores=scores)


def apply_gate(registered_name: str, version: int | str, decision: GateDecision, *,
               tracking_uri: str | None = None) -> None:
    """Tag the version with the decision (:data:`GATE_TAG`, :data:`GATE_REASON_TAG`) and, when
    it passed, point :data:`CHAMPION_ALIAS` at it; otherwise the champion stays as it is."""
    client = registry_client(tracking_uri)
    client.set_model_version_tag(registered_name, str(version), GATE_TAG, decision.tag)
    client.set_model_version_tag(registered_name, str(version), GATE_REASON_TAG, decision.reason)
    if decision.passed:
        client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, str(version))


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


__all__ = ["CHAMPION_ALIAS", "GATE_REASON_TAG", "GATE_SCORE", "GATE_TAG", "Champion",
           "GateDecision", "ReleaseGates", "apply_gate", "gate_decision", "read_champion",
           "validation_brain_psnr"]
