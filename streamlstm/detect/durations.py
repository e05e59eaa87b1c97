"""Durations in detector and calibration options, each named with its unit.

Every duration is given either in model steps (``<name>_steps``) or in seconds
(``<name>_s``), never both:

* ``warmup_steps`` / ``warmup_s``: after a sensor's first sample (or a reset), nothing
  alerts for this long while the recurrent state settles;
* ``debounce_steps`` / ``debounce_s``: this many scored steps in a row above the
  threshold start an alert (at least 1);
* ``quiet_steps`` / ``quiet_s``: the score must stay below the end threshold this long
  after its first sample there before the alert ends (0: that first sample ends it).

A model step is one sample, or one hop of a feature front end or a window model; seconds
and steps convert through the model's ``sample_rate`` (an error when it has none). The
old names ``warmup`` and ``debounce`` (steps) and ``quiet_time`` (seconds) are still
accepted, with a :class:`DeprecationWarning`. Calibration stores the resolved values under
those old keys (``warmup``/``debounce`` in steps, ``quiet_time`` in seconds), which is
the schema, not an option name, and raises no warning.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..model import Model
from .features import FeatureSpec

#: Option name with its unit -> (stored key, unit): the stored keys are the schema's.
UNIT_NAMES: dict[str, tuple[str, str]] = {
    "warmup_steps": ("warmup", "steps"),
    "warmup_s": ("warmup", "s"),
    "debounce_steps": ("debounce", "steps"),
    "debounce_s": ("debounce", "s"),
    "quiet_steps": ("quiet_time", "steps"),
    "quiet_s": ("quiet_time", "s"),
}
#: Deprecated option name -> its replacement (same unit as before).
DEPRECATED: dict[str, str] = {
    "warmup": "warmup_steps",
    "debounce": "debounce_steps",
    "quiet_time": "quiet_s",
}
#: The stored keys, with the unit each is stored in.
STORED_UNIT = {"warmup": "steps", "debounce": "steps", "quiet_time": "s"}


def step_seconds(model: Model) -> float | None:
    """Seconds per model step (``None`` without a sample rate): a sample, or the hop of
    the model's feature front end or window."""
    if not model.sample_rate:
        return None
    features = FeatureSpec.from_metadata(model.metadata)
    hop = (
        model.window.hop
        if model.window is not None
        else features.hop
        if features is not None
        else 1
    )
    return hop / float(model.sample_rate)


def _stored_value(key: str, value: Any, unit: str, period: float | None, name: str) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(number) and number >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if unit == "steps" and number != int(number):
        raise ConfigError(f"{name} must be a whole number of steps, got {value!r}")
    if unit == STORED_UNIT[key]:
        return int(number) if unit == "steps" else number
    if period is None:
        raise ConfigError(
            f"{name} is converted through the model's sample rate, and the "
            "model has none (set model.replace(sample_rate=...), or give the "
            f"duration in {'seconds' if unit == 's' else 'steps'} instead)"
        )
    if key == "quiet_time":
        # k steps below: the k-th step after the first sample below ends the alert; half a
        # step of slack so that jitter in the timestamps cannot add a step.
        return 0.0 if number == 0 else (number - 0.5) * period
    # Seconds to whole steps, rounded up (a tiny tolerance for float division).
    return math.ceil(number / period - 1e-9)


def resolve_durations(
    given: Mapping[str, Any], period: float | None, *, stacklevel: int = 2
) -> dict[str, Any]:
    """``given`` options with every duration under its stored key, in its stored unit;
    other options pass through. ``period``: seconds per model step (:func:`step_seconds`;
    ``None``: no sample rate, so no conversion). Deprecated names warn; two names for one
    duration, or a conversion without a sample rate, are a
    :class:`~streamlstm.errors.ConfigError`.
    ``stacklevel``: the deprecation warning's, counted from the caller of this function
    (1: that caller, 2: its caller)."""
    out: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, value in given.items():
        if name in DEPRECATED:
            if value is not None:
                warnings.warn(
                    f"option {name!r} is deprecated: use {DEPRECATED[name]!r} (or "
                    f"its {'seconds' if name != 'quiet_time' else 'steps'} form); "
                    "every duration now names its unit",
                    DeprecationWarning,
                    stacklevel=stacklevel + 1,
                )
            key, converted = name, value
        elif name in UNIT_NAMES:
            key, unit = UNIT_NAMES[name]
            converted = None if value is None else _stored_value(key, value, unit, period, name)
        else:
            out[name] = value
            continue
        if value is None:
            continue
        if key in source:
            raise ConfigError(
                f"options {source[key]!r} and {name!r} give the same duration; give one"
            )
        source[key] = name
        out[key] = converted
    return out


def with_units(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse naming of :func:`resolve_durations`: stored duration keys back to
    their option names with units (``warmup`` -> ``warmup_steps``, ``quiet_time`` ->
    ``quiet_s``), other options unchanged; for passing resolved options on."""
    return {DEPRECATED.get(k, k): v for k, v in resolved.items()}


_HELP = {
    "warmup": "after a sensor's first sample or a reset, nothing alerts for",
    "debounce": "an alert starts after the score is above the threshold for",
    "quiet_time": "an alert ends after the score is below the end threshold for",
}


def add_duration_arguments(
    parser: argparse.ArgumentParser, defaults: Any, *, step_note: str = "", from_model: bool = True
) -> None:
    """``--warmup-steps``/``--warmup-s`` and the others on a command line (``defaults``:
    an object with the stored ``warmup``, ``debounce`` and ``quiet_time`` defaults), plus
    the deprecated ``--warmup``, ``--debounce`` and ``--quiet-time``. ``step_note`` follows
    "model steps" in the help (what a step is for the command's other models);
    ``from_model``: whether an unset duration comes from the model's calibration."""
    for name, (key, unit) in UNIT_NAMES.items():
        default = getattr(defaults, key)
        shown = f"{default} {'steps' if STORED_UNIT[key] == 'steps' else 's'}"
        steps = unit == "steps"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int if steps else float,
            default=None,
            metavar="N" if steps else "S",
            help=f"{_HELP[key]} this many "
            f"{'model steps' + step_note if steps else 'seconds'} "
            + (
                f"(default: the model's calibration, else {shown})"
                if from_model
                else f"(default: {shown})"
            ),
        )
    for old, new in DEPRECATED.items():
        parser.add_argument(
            f"--{old.replace('_', '-')}",
            type=int if STORED_UNIT[old] == "steps" else float,
            default=None,
            help=f"deprecated: use --{new.replace('_', '-')}",
        )


def duration_arguments(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The durations given on a command line built by :func:`add_duration_arguments`; a
    deprecated flag gets a one-line notice on stderr (``command`` names the command)."""
    names = (*UNIT_NAMES, *DEPRECATED)
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    for old in set(given) & set(DEPRECATED):
        print(
            f"{command}: --{old.replace('_', '-')} is deprecated, use "
            f"--{DEPRECATED[old].replace('_', '-')}",
            file=sys.stderr,
        )
    return given
