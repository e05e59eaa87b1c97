"""Train a next-step LSTM predictor on normal data, calibrate it, return a native Model.

The recipe: split every recording into a training head and a held-out tail
(``val_fraction``); optionally turn raw kHz samples into windowed features
(:mod:`streamlstm.detect.features`); normalise each channel by the training head's mean
and standard deviation (so channels in very different units weigh alike; stored as the
model's ``input_norm``/``output_norm``, the model works in sensor units); fit
``LSTM -> Linear`` to predict the next (normalised) input from windows of ``seq_len``
steps; stop early when the held-out tails' loss has not improved for ``patience``
epochs and keep the best weights; then calibrate the detector on the held-out tails.

Reproducible: every random choice comes from ``seed`` (torch's generator and NumPy's),
with torch's deterministic algorithms on; the same data, seed, torch version and thread
count give the same weights. An epoch is ``windows_per_epoch`` random windows of
``seq_len`` steps, not a full pass: bounded cost on millions of samples, and enough
optimiser steps per epoch on a few hundred.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..detect.calibration import calibrate
from ..detect.features import FeatureSpec, compute_features, feature_names
from ..errors import ConfigError, ShapeError
from ..model import Model, Normalization, dense_layer, lstm_layer
from .progress import Progress, bar

#: A held-out tail's first steps start from a zero state; leave them out of its loss.
VAL_BURN_IN = 10


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The trained, calibrated model and the loss history ``[(epoch, train, held-out), ...]``
    (mean squared error in normalised units); ``best_epoch`` is the one kept."""

    model: Model
    history: list[tuple[int, float, float]]
    best_epoch: int
    seconds: float


class _Predictor(torch.nn.Module):
    def __init__(self, width: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(width, hidden, num_layers=layers, batch_first=True)
        self.head = torch.nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def _as_recordings(data: Any) -> list[np.ndarray]:
    items = [data] if isinstance(data, np.ndarray) else list(data)
    out = []
    for index, item in enumerate(items):
        array = np.asarray(item, dtype=np.float64)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] == 0:
            raise ShapeError(f"recording {index}: expected (T, D), got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ShapeError(f"recording {index}: holds NaN/Inf; train on clean normal data")
        out.append(array)
    if not out or len({a.shape[1] for a in out}) != 1:
        raise ShapeError("training needs one or more recordings with the same channel count")
    return out


def _split(recordings: list[np.ndarray], val_fraction: float, minimum: int
           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    heads, tails = [], []
    for index, rec in enumerate(recordings):
        n_val = round(rec.shape[0] * val_fraction)
        if rec.shape[0] - n_val < minimum or n_val < minimum:
            raise ShapeError(f"recording {index}: {rec.shape[0]} samples is too short to "
                             f"split into training and held-out parts of >= {minimum} each")
        heads.append(rec[:-n_val])
        tails.append(rec[-n_val:])
    return heads, tails


def _normalisation(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    stacked = np.concatenate(parts)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    # A constant channel carries no information; std 1 keeps it at 0 instead of 0/0.
    std = np.where(std > 1e-12 * max(float(np.abs(mean).max()), 1.0), std, 1.0)
    return mean, std


def _export(net: _Predictor, layers: int, mean: np.ndarray, std: np.ndarray,
            **fields: Any) -> Model:
    sd = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    recurrent = tuple(lstm_layer(sd[f"lstm.weight_ih_l{k}"], sd[f"lstm.weight_hh_l{k}"],
                                 sd[f"lstm.bias_ih_l{k}"], sd[f"lstm.bias_hh_l{k}"])
                      for k in range(layers))
    norm = Normalization(mean.astype(np.float32), std.astype(np.float32))
    return Model(layers=recurrent, head=(dense_layer(sd["head.weight"], sd["head.bias"]),),
                 input_norm=norm, output_norm=norm, **fields)


def train(data: Any, *, hidden: int = 32, layers: int = 1, features: Any = None,
          seq_len: int = 64, batch_size: int = 32, epochs: int = 40, lr: float = 3e-3,
          val_fraction: float = 0.2, patience: int = 5, windows_per_epoch: int = 2048,
          seed: int = 0, name: str = "model", channels: Sequence[str] = (),
          sample_rate: float | None = None, calibration: Mapping[str, Any] | None = None,
          progress: bool = True) -> TrainResult:
    """Train and calibrate a next-step predictor on normal ``data``.

    ``data``: a ``(T, D)`` array in sensor units, or a sequence of them (separate
    recordings, never spliced). ``features``: a :class:`FeatureSpec` or its dict (window,
    hop, stats) to train on windowed features of raw high-rate samples instead of the
    samples themselves. ``calibration``: keywords for
    :func:`streamlstm.detect.calibrate` (quantile, margin, alpha, debounce, ...).
    ``progress``: a progress line on stderr. Returns a :class:`TrainResult`; save its
    ``model`` with :func:`streamlstm.formats.save`.
    """
    if not (hidden >= 1 and layers >= 1 and seq_len >= 2 and batch_size >= 1 and epochs >= 1
            and patience >= 1 and windows_per_epoch >= 1 and 0 < val_fraction < 1 and lr > 0):
        raise ConfigError("train: hidden, layers, batch_size, epochs, patience and "
                          "windows_per_epoch must be >= 1, seq_len >= 2, 0 < val_fraction < 1")
    started = time.monotonic()
    spec = None
    if features is not None:
        spec = features if isinstance(features, FeatureSpec) else FeatureSpec.from_metadata(
            {"features": features})
    raw = _as_recordings(data)
    axes = raw[0].shape[1]
    if channels and len(channels) != axes:
        raise ConfigError(f"train: {len(channels)} channel names for {axes} channels")
    minimum = (spec.window + 2 * spec.hop) if spec else 4
    raw_heads, raw_tails = _split(raw, val_fraction, minimum)
    to_inputs = (lambda r: r) if spec is None else (lambda r: compute_features(r, spec))
    heads = [to_inputs(r) for r in raw_heads]
    tails = [to_inputs(r) for r in raw_tails]
    mean, std = _normalisation(heads)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    series = torch.from_numpy(np.concatenate([(h - mean) / std for h in heads]).astype(np.float32))
    window = min(seq_len, min(h.shape[0] for h in heads) - 1)
    starts, offset = [], 0
    for h in heads:
        starts.append(offset + np.arange(0, h.shape[0] - window, max(window // 2, 1)))
        offset += h.shape[0]
    start_index = torch.from_numpy(np.concatenate(starts))
    span = torch.arange(window + 1)
    val = [torch.from_numpy(((t - mean) / std).astype(np.float32))[None] for t in tails]
    burn = [min(VAL_BURN_IN, v.shape[1] // 4) for v in val]

    net = _Predictor(series.shape[1], hidden, layers)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    show = Progress(enabled=progress)
    history: list[tuple[int, float, float]] = []
    best = (float("inf"), 0, {k: v.clone() for k, v in net.state_dict().items()})
    for epoch in range(1, epochs + 1):
        net.train()
        # An epoch is windows_per_epoch windows whatever the data size: a random subset of
        # a long recording, or several shuffled passes over a short one.
        passes = -(-windows_per_epoch // len(start_index))
        picks = torch.cat([torch.randperm(len(start_index), generator=generator)
                           for _ in range(passes)])[:windows_per_epoch]
        order = start_index[picks]
        total, count = 0.0, 0
        for first in range(0, len(order), batch_size):
            batch = series[order[first:first + batch_size, None] + span]
            loss = torch.nn.functional.mse_loss(net(batch[:, :-1]), batch[:, 1:])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * batch.shape[0]
            count += batch.shape[0]
            show.update(f"epoch {epoch}/{epochs} {bar(count, len(order))} "
                        f"loss {total / count:.4f}")
        net.eval()
        with torch.no_grad():
            pairs = list(zip(val, burn, strict=True))
            errors = [torch.nn.functional.mse_loss(net(v[:, :-1])[:, b:], v[:, 1 + b:],
                                                   reduction="sum") for v, b in pairs]
            held_out = float(sum(errors)) / sum((v.shape[1] - 1 - b) * v.shape[2]
                                                for v, b in pairs)
        history.append((epoch, total / count, held_out))
        show.done(f"epoch {epoch}/{epochs}: train {total / count:.4f}  held-out {held_out:.4f}")
        if held_out < best[0]:
            best = (held_out, epoch, {k: v.clone() for k, v in net.state_dict().items()})
        elif epoch - best[1] >= patience:
            break
    net.load_state_dict(best[2])

    input_channels = tuple(channels) or tuple(f"c{k}" for k in range(axes))
    metadata: dict[str, Any] = {"training": {
        "recipe": "streamlstm.train next-step LSTM predictor",
        "torch": torch.__version__, "seed": seed, "hidden": hidden, "layers": layers,
        "seq_len": window, "batch_size": batch_size, "lr": lr, "epochs_run": len(history),
        "best_epoch": best[1], "held_out_mse": best[0], "val_fraction": val_fraction,
        "recordings": len(raw), "samples": int(sum(r.shape[0] for r in raw)),
    }}
    if spec is not None:
        metadata["features"] = spec.as_metadata()
        metadata["sample_channels"] = list(input_channels)
        input_channels = tuple(feature_names(input_channels, spec))
    model = _export(net, layers, mean, std, name=name, channels=input_channels,
                    sample_rate=sample_rate, metadata=metadata)
    options = dict(calibration or {})
    try:
        model = calibrate(model, raw_tails, **options)
        calibrated_on = "held-out tails"
    except ShapeError:
        # Tails too short for the warm-up: calibrate on whole recordings (optimistic).
        model = calibrate(model, raw, **options)
        calibrated_on = "all data (held-out tails too short)"
    metadata["training"]["calibrated_on"] = calibrated_on
    model = model.replace(metadata=metadata)
    return TrainResult(model, history, best[1], time.monotonic() - started)
