"""Drive a WindowBank like a live source: several sensors interleaved in uneven micro-batches."""

from __future__ import annotations

import itertools

import numpy as np


def stream_windows(
    model,
    spec,
    streams: np.ndarray,
    rng: np.random.Generator,
    *,
    device: str = "cpu",
    batches: int = 40,
) -> tuple[np.ndarray, np.ndarray]:
    """Push ``streams`` ``(sensors, steps, D)`` through ``model.windows(spec=spec,
    device=device)``, sensors interleaved at random in about ``batches`` micro-batches;
    return every completed window's samples ``(N, W, D)`` (cut from ``streams``) and
    output, in completion order.

    Checks on the way that nothing was skipped or failed and that each sensor's windows
    end exactly every ``hop`` samples from its ``length``-th.
    """
    sensors, steps = streams.shape[:2]
    bank = model.windows(capacity=2, spec=spec, device=device)  # grows as sensors arrive
    order = np.repeat(np.arange(sensors), steps)
    rng.shuffle(order)
    position = np.zeros(sensors, np.int64)
    indices = np.empty(order.size, np.int64)
    for i, s in enumerate(order):
        indices[i] = position[s]
        position[s] += 1
    results = []
    cuts = np.unique(np.r_[0, rng.integers(1, order.size, batches), order.size])
    for start, stop in itertools.pairwise(cuts):
        names = [f"s{s}" for s in order[start:stop]]
        out = bank.push(names, streams[order[start:stop], indices[start:stop]])
        assert out.skipped == 0 and out.failed == 0
        for name, end, value in zip(out.sensors, out.end_index, out.values, strict=True):
            results.append((int(name[1:]), int(end), value))
    for s in range(sensors):
        assert bank.sample_count(f"s{s}") == steps
        ends = sorted(end for sensor, end, _ in results if sensor == s)
        assert ends == list(range(spec.length - 1, steps, spec.hop))
    windows = np.stack([streams[s, end - spec.length + 1 : end + 1] for s, end, _ in results])
    return windows, np.stack([value for _, _, value in results])
