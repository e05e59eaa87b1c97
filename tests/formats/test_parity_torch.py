"""Parity with torch ``nn.LSTM``/``nn.GRU`` through the real loaders, Stream and Bank.

Every case saves a torch model's state_dict as ``.pt`` and ``.safetensors``, loads both
with :func:`streamlstm.formats.load`, and compares 1000 carried steps (``Stream.step``),
one ``Stream.run`` block, and a ``Bank`` of interleaved sensors (serial and parallel
paths) against torch on the same random inputs. Tolerance: max abs error relative to
the output scale, 1e-5 in float32 and 1e-9 in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from torch_nets import load_options, make_net, reference, save_state_dict

from streamlstm.formats import load

STEPS = 1000
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-9}
HEADS = ("none", "fc", "mlp")


def _cases():
    index = 0
    for kind in ("lstm", "gru"):
        for layers in (1, 2, 3):
            for hidden in (8, 64):
                for bias in (True, False):
                    for proj in (0, hidden // 2) if kind == "lstm" else (0,):
                        for dtype in (np.float32, np.float64):
                            head = HEADS[index % len(HEADS)]
                            index += 1
                            name = (
                                f"{kind}-L{layers}-H{hidden}-{'bias' if bias else 'nobias'}"
                                f"-P{proj}-{head}-{np.dtype(dtype).name}"
                            )
                            yield pytest.param(
                                kind, layers, hidden, bias, proj, head, dtype, id=name
                            )


def assert_close(got: np.ndarray, want: np.ndarray, dtype) -> None:
    assert got.shape == want.shape
    scale = float(np.max(np.abs(want)))
    assert scale > 1e-3, "degenerate reference: outputs are all near zero"
    error = float(np.max(np.abs(got - want)))
    assert error <= TOLERANCE[dtype] * scale, f"max abs error {error:.3g} at scale {scale:.3g}"


def _interleaved_batches(lengths: list[int], batch_size: int, rng) -> list[tuple[list, list]]:
    """Batches of (sensor, time index): sensors in random order, each sensor's samples in order."""
    order = np.concatenate([np.full(n, s) for s, n in enumerate(lengths)])
    rng.shuffle(order)
    cursor = [0] * len(lengths)
    pairs = []
    for sensor in order:
        pairs.append((int(sensor), cursor[sensor]))
        cursor[sensor] += 1
    return [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]


@pytest.mark.parametrize(
    ("kind", "layers", "hidden", "bias", "proj", "head", "dtype"), list(_cases())
)
def test_parity_with_torch(tmp_path, kind, layers, hidden, bias, proj, head, dtype):
    rng = np.random.default_rng(layers * 100 + hidden)
    net = make_net(
        kind, layers, hidden, bias=bias, proj=proj, head=head, dtype=dtype, seed=layers + hidden
    )
    pt, st = save_state_dict(net, tmp_path)
    model = load(pt, dtype=dtype, **load_options(head))
    from_safetensors = load(st, dtype=dtype, **load_options(head))
    assert model.describe() == from_safetensors.describe()
    for a, b in zip(model._arrays(), from_safetensors._arrays(), strict=True):
        np.testing.assert_array_equal(a, b)

    xs = rng.normal(0, 1, (STEPS, 3)).astype(dtype)
    want = reference(net, xs)

    stream = model.stream()
    stepped = np.stack([stream.step(x) for x in xs])
    assert_close(stepped, want, dtype)
    assert_close(from_safetensors.stream().run(xs), want, dtype)

    # A bank of sensors with different lengths, interleaved, several samples per sensor
    # per batch: the serial path (small batches) and the parallel one (>= 64 samples of
    # more sensors than one parallel task takes, 2 threads).
    lengths = [300, 220, 300, 150, 270] * 8
    sensor_xs = rng.normal(0, 1, (len(lengths), max(lengths), 3)).astype(dtype)
    sensor_want = reference(net, sensor_xs)
    for batch_size, threads in ((24, 1), (128, 2)):
        bank = model.bank(capacity=2, threads=threads)
        got = np.full(sensor_want.shape, np.nan, dtype)
        for batch in _interleaved_batches(lengths, batch_size, rng):
            ids = [f"sensor-{s}" for s, _ in batch]
            samples = np.stack([sensor_xs[s, t] for s, t in batch])
            outs = bank.step(ids, samples)
            for (s, t), y in zip(batch, outs, strict=True):
                got[s, t] = y
        for s, n in enumerate(lengths):
            assert_close(got[s, :n], sensor_want[s, :n], dtype)
