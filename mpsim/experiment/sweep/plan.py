"""The plan of a sweep: the scenario with its overrides, the axes, and one :class:`Point` per grid
point and seed index, each with the seed it runs with; validated before anything runs."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mpsim.experiment import scenario
from mpsim.experiment.sweep.grid import GridAxis, SweepError, parse_grid
from mpsim.sim.seeds import derive_seed

#: Seeds are cut to 63 bits: int64 in Parquet, pandas and every JSON reader.
SEED_MASK = (1 << 63) - 1
#: Every combination of grid values is loaded once before the sweep starts when there are at most
#: this many (a few ms each); in a bigger grid a combination that does not load fails as its points run.
CHECK_COMBINATIONS = 1000
#: Each value of an axis of at most this many is load-checked alone before the sweep starts; a longer
#: axis has its first and last :data:`CHECK_AXIS_ENDS` values and its smallest and largest numbers
#: checked (a range's bounds are where a schema limit bites), the rest fail as their points run.
CHECK_AXIS_VALUES = 200
CHECK_AXIS_ENDS = 20
#: The most points one sweep may have (grid points x seeds), checked from the axis lengths before
#: any point is built: a plan holds every point in memory (a few hundred bytes each).
MAX_POINTS = 1_000_000
#: Where a sweep's points run: the simulator, or the kernel in network namespaces (docs/kernel-world.md).
WORLDS = ("model", "kernel")


@dataclass(frozen=True)
class Point:
    """One run of the sweep: a grid point (index and values) and a seed index, with its seed."""

    point_id: str
    grid_index: int
    seed_index: int
    seed: int
    overrides: tuple[str, ...]  # the grid point's KEY=VALUE, applied after the sweep's --set
    values: tuple[tuple[str, Any], ...]  # (key, column value) per axis


@dataclass(frozen=True)
class PointTask:
    """What a worker needs to run a point: everything by value, so remote workers need no files."""

    point_id: str
    scenario_text: str
    scenario_name: str
    scenario_source: str
    overrides: tuple[str, ...]  # the sweep's --set, the grid point's values, then seed=<the point's seed>
    variants: tuple[str, ...]  # () = every variant
    # The kernel world's options (mpsim run --on kernel); the model's points ignore them.
    proxy_cmd: str | None = None
    skip_unbuildable: bool = False


@dataclass(frozen=True)
class PointOutcome:
    """A finished point: its two record tables, or the error it raised."""

    point_id: str
    connections: pd.DataFrame | None
    transfers: pd.DataFrame | None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    elapsed_s: float | None = None


def point_seed(root_seed: int, grid_index: int, seed_index: int) -> int:
    """The root seed of point (grid_index, seed_index) of a sweep seeded with ``root_seed``."""
    return derive_seed(root_seed, grid_index, f"sweep.seed{seed_index}") & SEED_MASK


@dataclass
class SweepPlan:
    """A validated sweep: the scenario as loaded with the --set overrides, the grid, the seeds."""

    loaded: scenario.LoadedScenario
    axes: tuple[GridAxis, ...]
    seeds: int
    root_seed: int
    variants: tuple[str, ...]
    points: list[Point] = field(default_factory=list)
    world: str = "model"  # one of WORLDS
    proxy_cmd: str | None = None  # --on kernel: a third-party proxy in place of the scenario's
    skip_unbuildable: bool = False  # --on kernel: run a grid point's buildable variants only
    #: --on kernel --skip-unbuildable: per grid point id (g001), the variants left out and why.
    kernel_skipped: dict[str, list[str]] = field(default_factory=dict)
    #: --on kernel: per grid point id, per variant it runs, the sysctls per role its runs set
    #: (:func:`mpsim.experiment.kernel_world.kernel_sysctls`; the model reads the same values).
    kernel_settings: dict[str, dict[str, dict[str, dict[str, str]]]] = field(default_factory=dict)

    @property
    def grid_keys(self) -> list[str]:
        return [axis.key for axis in self.axes]

    @property
    def grid_points(self) -> int:
        return math.prod(len(axis.texts) for axis in self.axes)

    def identity(self) -> dict[str, Any]:
        """What makes two sweeps the same one (the seed count is not in it: more seeds extend a sweep).
        The world and the kernel's proxy are in it for a kernel sweep only, so that a model sweep's
        hash is the one sweeps had before the kernel world (their directories still resume)."""
        identity = {"scenario": {"name": self.loaded.name, "text": self.loaded.text},
                    "overrides": list(self.loaded.overrides), "root_seed": self.root_seed,
                    "grid": [{"key": axis.key, "values": list(axis.texts)} for axis in self.axes],
                    "variants": list(self.variants)}
        if self.world != "model":
            identity |= {"world": self.world, "proxy_cmd": self.proxy_cmd}
        return identity

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode("utf-8")).hexdigest()

    def task(self, point: Point) -> PointTask:
        loaded = self.loaded
        return PointTask(point.point_id, loaded.text, loaded.name, loaded.source,
                         (*loaded.overrides, *point.overrides, f"seed={point.seed}"), self.variants,
                         self.proxy_cmd, self.skip_unbuildable)


def plan_sweep(scenario_name: str, grid: Sequence[str], *, seeds: int = 1, root_seed: int | None = None,
               overrides: Sequence[str] = (), variants: Sequence[str] = (), world: str = "model",
               proxy_cmd: str | None = None, skip_unbuildable: bool = False) -> SweepPlan:
    """Load and validate a sweep: the scenario with ``overrides``, every grid key and value alone,
    then every combination (in the kernel world: every grid point's every variant checked with
    :func:`mpsim.experiment.kernel_world.unbuildable`); raises SweepError or ScenarioError naming
    what is wrong."""
    if world not in WORLDS:
        raise SweepError(f"--on {world}: expected one of {', '.join(WORLDS)}")
    if world == "model" and (proxy_cmd is not None or skip_unbuildable):
        raise SweepError("--proxy-cmd and --skip-unbuildable go with --on kernel")
    if type(seeds) is not int or seeds < 1:
        raise SweepError(f"--seeds {seeds}: expected an integer >= 1")
    if seeds > MAX_POINTS:
        raise SweepError(f"--seeds {seeds}: more than {MAX_POINTS} points in one sweep (the most one sweep may "
                         "run); split it into several sweeps, each with its own --out and --seed")
    if root_seed is not None and (type(root_seed) is not int or root_seed < 0):
        raise SweepError(f"--seed {root_seed}: expected an integer >= 0")
    loaded = scenario.load(scenario_name, overrides)
    for name in variants:
        if name not in loaded.variants:
            raise SweepError(f"--variant {name}: scenario {loaded.name} has variants {', '.join(loaded.variants)}")
    axes = tuple(parse_grid(text) for text in grid)
    total = math.prod(len(axis.texts) for axis in axes) * seeds  # from the lengths: nothing built yet
    if total > MAX_POINTS:
        sizes = " x ".join([*(f"{len(axis.texts)} ({axis.key})" for axis in axes), f"{seeds} seeds"])
        raise SweepError(f"the sweep would run {total} points ({sizes}), more than {MAX_POINTS} (the most one "
                         "sweep may run); use fewer values or seeds, or split it into several sweeps "
                         "(each with its own --out)")
    set_keys = {text.partition("=")[0].strip() for text in overrides}
    seen: set[str] = set()
    for axis in axes:
        if axis.key == "seed":
            raise SweepError("--grid seed: the sweep derives each point's seed; give the root seed with --seed "
                             "and the number of seeds per grid point with --seeds")
        if axis.key in seen:
            raise SweepError(f"--grid {axis.key}: the key is given twice; list all its values in one --grid")
        if axis.key in set_keys:
            raise SweepError(f"--grid {axis.key}: the key is also given by --set; drop one of them")
        seen.add(axis.key)
        for i in _values_to_check(axis):  # key and value alone first: the error names this --grid
            _check_load(loaded, [f"{axis.key}={axis.texts[i]}"], f"--grid {axis.key}={axis.texts[i]}")
    plan = SweepPlan(loaded, axes, seeds, loaded.base.seed if root_seed is None else root_seed, tuple(variants),
                     world=world, proxy_cmd=proxy_cmd, skip_unbuildable=skip_unbuildable)
    width = max(3, len(str(plan.grid_points - 1)))
    combinations = list(itertools.product(*(range(len(axis.texts)) for axis in axes)))
    for grid_index, combination in enumerate(combinations):
        point_overrides = tuple(f"{axis.key}={axis.texts[i]}" for axis, i in zip(axes, combination))
        # Keys that are fine alone may clash (duration_s and the times within it); a load takes a few ms.
        if len(axes) > 1 and len(combinations) <= CHECK_COMBINATIONS:
            _check_load(loaded, list(point_overrides), "--grid point " + " ".join(point_overrides))
        values = tuple((axis.key, axis.values[i]) for axis, i in zip(axes, combination))
        for seed_index in range(seeds):
            plan.points.append(Point(f"g{grid_index:0{width}d}-s{seed_index:03d}", grid_index, seed_index,
                                     point_seed(plan.root_seed, grid_index, seed_index), point_overrides, values))
    if world == "kernel":
        check_kernel_buildable(plan)
    return plan


def grid_point_id(plan: SweepPlan, grid_index: int) -> str:
    """``g001``: the grid point's part of its points' ids."""
    return f"g{grid_index:0{max(3, len(str(plan.grid_points - 1)))}d}"


def check_kernel_buildable(plan: SweepPlan) -> None:
    """Every grid point's variants, loaded as its points will load them, checked against what the
    kernel world can build: the first element it cannot is refused naming the grid point, the
    variant and the element (with ``skip_unbuildable``: only a grid point with no buildable variant
    is refused; the others' left-out variants go into ``plan.kernel_skipped``). A load takes a few ms,
    a kernel point seconds: every grid point is checked, whatever the grid's size."""
    from mpsim.experiment import kernel_world

    loaded = plan.loaded
    if plan.proxy_cmd is not None and kernel_world.proxy_cmd_problems(plan.proxy_cmd):
        raise SweepError(kernel_world.proxy_cmd_problems(plan.proxy_cmd)[0])
    proxied = False
    seen: set[int] = set()
    for point in plan.points:
        if point.grid_index in seen:
            continue
        seen.add(point.grid_index)
        where = f"--on kernel: grid point {grid_point_id(plan, point.grid_index)}" + (
            f" ({' '.join(point.overrides)})" if point.overrides else "")
        try:
            # the seed does not change what is built: the middlebox mix draws only among listed rules
            variants = scenario.load_text(loaded.text, name=loaded.name, source=loaded.source,
                                          overrides=(*loaded.overrides, *point.overrides), path=loaded.path).variants
        except scenario.ScenarioError as err:  # a big grid's combination not loaded before: named here
            raise SweepError(f"{where}: {err.key + ': ' if err.key else ''}{err.message}") from None
        names = plan.variants or tuple(variants)
        skipped, unbuilt, settings = [], 0, {}
        for name in names:
            problems = kernel_world.unbuildable(variants[name], proxy_cmd=plan.proxy_cmd)
            if problems and not plan.skip_unbuildable:
                raise SweepError(f"{where}: cannot build variant {name!r}: {problems[0]}"
                                 + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
            skipped += [f"{name}: {line}" for line in problems]
            unbuilt += bool(problems)
            if not problems:
                settings[name] = kernel_world.kernel_sysctls(variants[name])
                proxied |= kernel_world.uses_proxy(variants[name])
        if unbuilt == len(names):
            raise SweepError(f"{where}: no variant can be built in the kernel: {skipped[0]}"
                             + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""))
        if skipped:
            plan.kernel_skipped[grid_point_id(plan, point.grid_index)] = skipped
        plan.kernel_settings[grid_point_id(plan, point.grid_index)] = settings
    if plan.proxy_cmd is not None and not proxied:
        raise SweepError(f"--proxy-cmd: no grid point of scenario {loaded.name} runs through a proxy "
                         "(converter.enabled = false or a direct client.scheme): nothing would run it")


def _values_to_check(axis: GridAxis) -> list[int]:
    """The indices of the values of ``axis`` to load-check before the sweep (see CHECK_AXIS_VALUES):
    a few ms each, so that a long axis does not keep the user waiting minutes without output."""
    count = len(axis.texts)
    if count <= CHECK_AXIS_VALUES:
        return list(range(count))
    picks = {*range(CHECK_AXIS_ENDS), *range(count - CHECK_AXIS_ENDS, count)}
    numbers = [i for i, v in enumerate(axis.values) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers:
        picks |= {min(numbers, key=axis.values.__getitem__), max(numbers, key=axis.values.__getitem__)}
    return sorted(picks)


def _check_load(loaded: scenario.LoadedScenario, extra: list[str], source: str) -> None:
    # The scenario with the sweep's --set alone has loaded: whatever fails now is the grid's doing.
    try:
        scenario.load_text(loaded.text, name=loaded.name, source=loaded.source,
                           overrides=(*loaded.overrides, *extra), path=loaded.path)
    except scenario.ScenarioError as err:
        variant = re.search(r" \(variant [^)]*\)$", err.source)
        where = source + (variant.group(0) if variant else "")
        raise SweepError(f"{where}: {err.key}: {err.message}" if err.key else f"{where}: {err.message}") from None

