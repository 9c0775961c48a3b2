"""Experiments: the named training runs, the sweeps declared in config, and what they share.

A config names experiments by hand (``experiments: {default: {}, t1only: {modalities: [T1w]}}``)
and declares sweeps as grids over training settings (``sweeps: {delta: {delta: [0.01, 0.05]}}``).
:func:`expand` turns both into one table of experiments with resolved settings:

* every grid point of a sweep becomes an experiment named ``<sweep>-<value>`` (several keys:
  ``<sweep>-<key><value>-...``), with the sweep's base experiment's settings and the point's
  values on top; a point whose settings equal an existing experiment's *is* that experiment
  (the reference model is not trained twice when a grid passes through it);
* the sweep key ``stage2: [l1, l3]`` sets the last stage's loss weights (l2 = l1, as in the
  paper's sensitivity analysis), every other key is a ``train`` setting;
* :func:`trunk_id` names the training of every stage but the last: experiments that differ only
  in their last stage share it, so a loss-weight sweep trains stage 1 once and fine-tunes each
  point from the same checkpoint;
* declared seeds (``evaluation.seeds: [0, 1, 2]``) train every configuration once per seed: the
  first seed keeps the configuration's name (and replaces ``train.seed``), every other seed is
  a run of its own named ``<configuration>-seed<N>`` (:func:`seed_name`) with its own trunk (the
  seed is part of the identity). Seeds are declared, never chosen: the tables average over them.

Settings that only change how a job runs (:data:`cesynth.settings.EXECUTION_SETTINGS`, and the
GPU count) never enter a name, an identity or a trunk, so changing them schedules nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cesynth.settings import EXECUTION_SETTINGS

LAST_STAGE_KEY = "stage2"
"""Sweep key for the last stage's loss weights ``[l1, l3]`` (l2 follows l1)."""
SCHEDULING_SETTINGS = frozenset({"gpus"})
"""Config ``train`` keys that only the scheduler reads."""
CASCADE_TARGETS = ("T2w", "adc")
"""Inputs that a T1 -> input synthesis model can fill (paper Fig. 10f, Fig. 11)."""
CASCADE_PREFIX = "cascade-"
VARIANT_SEPARATOR = "--"
"""Joins an experiment and an input condition in an evaluated model's name."""
FLOORS = ("t1", "regression")
"""Predictions without a deep model: the normalised T1 itself, a voxel-wise regression."""
FLOOR_PREFIX = "floor-"
ZERO_PREFIX = "zero-"
SEED_INFIX = "-seed"
"""Joins a configuration and a further seed in a seed variant's name (``default-seed1``)."""


@dataclass(frozen=True)
class Experiment:
    """One training run.

    Args:
        name: the run's name (``results/train/<name>/``).
        settings: resolved training settings (the config's ``train`` with overrides).
        sweeps: ``(sweep, point)`` pairs of the sweeps this run is a point of.
        seed_of: for a further seed of a configuration, the configuration's name (the run of
            its first seed); None for the first seed.
    """

    name: str
    settings: Mapping[str, Any]
    sweeps: tuple[tuple[str, Mapping[str, Any]], ...] = field(default=())
    seed_of: str | None = None

    @property
    def configuration(self) -> str:
        """The configuration this run trains: its own name, or that of its first seed."""
        return self.seed_of or self.name

    @property
    def target(self) -> str:
        """The synthesized modality (``ceT1w`` unless a cascade model)."""
        return self.settings.get("target", "ceT1w")


def resolve_settings(train: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings of one run: ``train`` with ``overrides``, scheduler keys removed."""
    settings = {**train, **overrides}
    for key in SCHEDULING_SETTINGS:
        settings.pop(key, None)
    return settings


def identity(settings: Mapping[str, Any]) -> str:
    """A hash of the settings that change results (execution-only settings left out)."""
    shaping = {k: v for k, v in settings.items() if k not in EXECUTION_SETTINGS}
    payload = json.dumps(shaping, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def trunk_id(settings: Mapping[str, Any]) -> str | None:
    """Name of the training of every stage but the last (None for a one-stage run).

    Two runs with the same trunk ID start their last stage from the same checkpoint.
    """
    stages = list(settings["stages"])
    if len(stages) < 2:
        return None
    return "t" + identity({**settings, "stages": stages[:-1]})


def trunk_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that train a run's trunk: all stages but the last."""
    return {**settings, "stages": list(settings["stages"])[:-1]}


def apply_point(settings: Mapping[str, Any], point: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with one sweep point's values (``stage2`` sets the last stage's weights)."""
    result = dict(settings)
    for key, value in point.items():
        if key == LAST_STAGE_KEY:
            l1, l3 = value
            stages = [dict(stage) for stage in result["stages"]]
            stages[-1].update(l1=float(l1), l2=float(l1), l3=float(l3))
            result["stages"] = stages
        else:
            result[key] = list(value) if isinstance(value, list | tuple) else value
    return result


def point_name(sweep: str, point: Mapping[str, Any]) -> str:
    """A readable, stable name: ``delta-0p05``, ``inputs-T1wT2w``, ``lossweights-0p1x10``."""
    if len(point) == 1:
        return f"{sweep}-{format_value(next(iter(point.values())))}"
    parts = [f"{key.replace('_', '')}{format_value(value)}" for key, value in point.items()]
    return "-".join([sweep, *parts])


def format_value(value: Any) -> str:
    """A value as letters and digits only (``0.05`` -> ``0p05``, ``[T1w, T2w]`` -> ``T1wT2w``)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        joiner = "x" if all(isinstance(v, int | float) for v in value) else ""
        return joiner.join(format_value(v) for v in value)
    if isinstance(value, int | float):
        return format(value, "g").replace(".", "p").replace("-", "m").replace("+", "")
    return str(value).replace("_", "")


def expand(train: Mapping[str, Any], experiments: Mapping[str, Mapping[str, Any]],
           sweeps: Mapping[str, Mapping[str, Sequence[Any]]], base: str,
           seeds: Sequence[int] = ()) -> dict[str, Experiment]:
    """Every experiment to train: the declared ones and each sweep's grid points, per seed.

    Args:
        train: the config's ``train`` mapping.
        experiments: declared name -> overrides of ``train``.
        sweeps: sweep name -> {setting: [values]}; the grid is the product of the lists. A sweep
            set to None is switched off (a profile on top of another leaves it out this way).
        base: the declared experiment every sweep varies.
        seeds: declared seeds (``evaluation.seeds``); empty: ``train.seed`` alone, as before.
            The first replaces ``train.seed``; each further one adds a run of every
            configuration (:func:`with_seeds`).

    Returns:
        Name -> :class:`Experiment`, declared ones first, then sweep points in grid order, then
        the further seeds' runs (seed by seed, in the same order).

    Raises:
        ValueError: an unknown base, an empty grid, two different points with one name, seeds
            listed twice, or a seed set by an experiment or a sweep while seeds are declared.
    """
    if base not in experiments:
        raise ValueError(f"sweep base experiment {base!r} is not declared in experiments")
    check_seeds(seeds, experiments, switched_on(sweeps))
    train = seeded_train(train, seeds)
    found = {name: Experiment(name, resolve_settings(train, overrides))
             for name, overrides in experiments.items()}
    by_identity = {identity(e.settings): name for name, e in found.items()}
    for sweep, grid in switched_on(sweeps).items():
        for point in grid_points(sweep, grid):
            settings = apply_point(found[base].settings, point)
            name = by_identity.setdefault(identity(settings), point_name(sweep, point))
            if name in found and identity(found[name].settings) != identity(settings):
                raise ValueError(f"sweep {sweep}: point {point} is named {name!r}, "
                                 "which another experiment already uses")
            previous = found.get(name, Experiment(name, settings))
            found[name] = Experiment(name, previous.settings,
                                     previous.sweeps + ((sweep, dict(point)),))
    return with_seeds(found, seeds)


def check_seeds(seeds: Sequence[int], experiments: Mapping[str, Mapping[str, Any]],
                sweeps: Mapping[str, Mapping[str, Sequence[Any]]]) -> None:
    """Refuse declared seeds that would be ambiguous.

    Raises:
        ValueError: a seed listed twice, or seeds declared while an experiment or a sweep sets
            ``seed`` itself (which seed would its runs take?).
    """
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"evaluation.seeds lists a seed twice: {list(seeds)}")
    if not seeds:
        return
    setting = [f"experiment {name}" for name, overrides in experiments.items()
               if "seed" in overrides]
    setting += [f"sweep {name}" for name, grid in sweeps.items() if "seed" in grid]
    if setting:
        raise ValueError(f"evaluation.seeds is declared, and {', '.join(setting)} sets seed "
                         "too: declare seeds in one place")


def seeded_train(train: Mapping[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
    """``train`` with its seed replaced by the first declared seed (unchanged without seeds)."""
    return {**train, "seed": int(seeds[0])} if seeds else dict(train)


def seed_name(configuration: str, seed: int) -> str:
    """The run of a configuration with a further seed: ``default-seed1``."""
    return f"{configuration}{SEED_INFIX}{int(seed)}"


def with_seeds(found: Mapping[str, Experiment], seeds: Sequence[int]) -> dict[str, Experiment]:
    """``found`` (trained with the first seed) and a run of each for every further seed.

    A further seed's run has the configuration's settings with ``seed`` replaced, its sweeps
    (it is a repeat of the same point) and ``seed_of`` set to the configuration's name. Its
    trunk differs from the first seed's, as the seed is part of :func:`identity`.

    Raises:
        ValueError: a seed variant's name is already another experiment's.
    """
    result = dict(found)
    for seed in list(seeds)[1:]:
        for experiment in found.values():
            name = seed_name(experiment.name, seed)
            if name in result:
                raise ValueError(f"seed {seed} of {experiment.name} would be named {name!r}, "
                                 "which another experiment already uses: rename it")
            result[name] = Experiment(name, {**experiment.settings, "seed": int(seed)},
                                      experiment.sweeps, seed_of=experiment.name)
    return result


def seed_variants(found: Mapping[str, Experiment], configuration: str) -> list[str]:
    """The runs of one configuration, its first seed first."""
    return [name for name, e in found.items() if e.configuration == configuration]


def switched_on(sweeps: Mapping[str, Mapping[str, Sequence[Any]] | None]
                ) -> dict[str, Mapping[str, Sequence[Any]]]:
    """The sweeps to run: those not set to None. Config files merge key by key, so a profile
    cannot delete a sweep a base profile declares; it switches it off with ``null``."""
    return {sweep: grid for sweep, grid in sweeps.items() if grid is not None}


def grid_points(sweep: str, grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The points of one sweep's grid (the product of its value lists), in order."""
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise ValueError(f"sweep {sweep} has an empty grid")
    keys = list(grid)
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(grid[k] for k in keys))]


def cascade_experiments(train: Mapping[str, Any], overrides: Mapping[str, Any]
                        ) -> dict[str, Experiment]:
    """The T1 -> T2 and T1 -> ADC models: the T1 alone as input, the local loss off.

    The local loss marks enhancement (``Y - X_T1 > delta``), which only means something for a
    CE-T1 target, so its weight is zero in every stage.
    """
    models = {}
    for target in CASCADE_TARGETS:
        settings = resolve_settings(train, {**overrides, "modalities": ["T1w"],
                                            "target": target})
        settings["stages"] = [{**stage, "l3": 0.0} for stage in settings["stages"]]
        models[CASCADE_PREFIX + target] = Experiment(CASCADE_PREFIX + target, settings)
    return models


def condition_inputs(condition: str) -> tuple[str, tuple[str, ...]]:
    """What an input condition does: ``zero-T2w-adc`` -> (``zero``, (T2w, adc)).

    Raises:
        ValueError: not ``zero-`` or ``cascade-`` followed by input modalities.
    """
    kind, _, rest = condition.partition("-")
    modalities = tuple(rest.split("-")) if rest else ()
    allowed = ("T1w", "T2w", "adc", "FLAIR") if kind == "zero" else CASCADE_TARGETS
    if kind not in ("zero", "cascade") or not modalities or not set(modalities) <= set(allowed):
        raise ValueError(f"unknown input condition {condition!r}: use zero-<inputs> "
                         "(T1w, T2w, adc, FLAIR) or cascade-<inputs> (T2w, adc), joined by '-'")
    return kind, modalities


def variant_name(experiment: str, condition: str) -> str:
    """The evaluated name of an experiment under an input condition."""
    return f"{experiment}{VARIANT_SEPARATOR}{condition}"


def catalog_row(model: str, experiment: Experiment | None, variant: str, reference: str
                ) -> dict[str, Any]:
    """One evaluated model's row of the catalog :mod:`cesynth.paper` selects table rows from.

    ``configuration`` names the configuration the row is a seed of (the evaluated name of its
    first seed): the tables average a configuration's seeds into one row.
    """
    if experiment is None:  # a floor
        return {"model": model, "experiment": model, "variant": "full", "architecture": model,
                "modalities": "T1w+T2w+adc", "l1": None, "l3": None, "delta": None,
                "seed": None, "reference": False, "configuration": model}
    settings = experiment.settings
    last = dict(settings["stages"][-1])
    configuration = (experiment.configuration if variant == "full"
                     else variant_name(experiment.configuration, variant))
    return {"model": model, "experiment": experiment.name, "variant": variant,
            "architecture": settings["model"], "modalities": "+".join(settings["modalities"]),
            "l1": last["l1"], "l3": last["l3"], "delta": settings["delta"],
            "seed": settings["seed"],
            "reference": experiment.name == reference and variant == "full",
            "configuration": configuration}


def sweep_members(found: Mapping[str, Experiment]) -> dict[str, list[dict[str, Any]]]:
    """Sweep name -> its points, each with the experiment that runs it."""
    members: dict[str, list[dict[str, Any]]] = {}
    for experiment in found.values():
        for sweep, point in experiment.sweeps:
            members.setdefault(sweep, []).append({"experiment": experiment.name, **point})
    return members


__all__ = ["SEED_INFIX", "Experiment", "catalog_row", "cascade_experiments", "check_seeds",
           "condition_inputs", "expand", "format_value", "grid_points", "identity",
           "point_name", "resolve_settings", "seed_name", "seed_variants", "seeded_train",
           "sweep_members", "switched_on", "trunk_id", "trunk_settings", "variant_name",
           "with_seeds"]
