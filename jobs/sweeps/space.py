"""A sweep's search space as Ray Tune's, and a trial's sampled values as the job's ``--set`` overrides."""

from __future__ import annotations

import json
from typing import Any

from jobs.sweeps.settings import Dimension


def param_space(space: dict[str, Dimension]) -> dict[str, Any]:
    """Tune's ``param_space``: the dotted names as flat keys, each with its sampler (or grid)."""
    from ray import tune

    samplers = {"loguniform": lambda d: tune.loguniform(d.low, d.high),
                "uniform": lambda d: tune.uniform(d.low, d.high),
                "randint": lambda d: tune.randint(int(d.low), int(d.high)),
                "choice": lambda d: tune.choice(list(d.values)),
                "grid": lambda d: tune.grid_search(list(d.values))}
    return {name: samplers[dimension.kind](dimension) for name, dimension in space.items()}


def overrides_for(params: dict[str, Any]) -> list[str]:
    """``key=value`` items the job's config loader reads like ``--set`` (JSON is YAML: numbers stay numbers)."""
    return [f"{name}={json.dumps(_plain(value))}" for name, value in sorted(params.items())]


def _plain(value: Any) -> Any:
    """numpy scalars (Tune's samplers return them) as Python numbers."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def check_space_keys(config_class: type, space: dict[str, Dimension], load) -> None:
    """Every dimension names a key of the job's config, of a type its values fit: checked before any trial."""
    probes = {}
    for name, dimension in space.items():
        probes[name] = dimension.values[0] if dimension.values else (
            int(dimension.low) if dimension.kind == "randint" else float(dimension.low))
    load(config_class, None, overrides_for(probes))  # raises ConfigError naming the key
