"""Stream and Bank state semantics: bit-exact equivalences, snapshots, bad samples, shapes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import streamlstm as sl
from streamlstm import kernels
from streamlstm.banks import BankState
from streamlstm.errors import InvalidSampleError, ShapeError
from streamlstm.kernels import layout as L

MODELS = {
    "lstm-f32": lambda: sl.random_model(3, [16, 8], output_size=2, seed=1),
    "gru-f64": lambda: sl.random_model(
        3, [12], kind="gru", output_size=3, seed=2, dtype=np.float64
    ),
}


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


def samples(model, n, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, model.input_size)).astype(model.dtype)


@pytest.mark.parametrize("threads", [1, 2])
def test_bank_equals_separate_streams_bit_exact(model, threads):
    rng = np.random.default_rng(3)
    sensors = [f"s{i}" for i in range(40)] + list(range(40))  # str and int ids side by side
    streams = {s: model.stream() for s in sensors}
    bank = model.bank(capacity=8, threads=threads)
    for batch in range(12):
        ids = [sensors[i] for i in rng.integers(0, len(sensors), 150)]  # repeats within a batch
        xs = samples(model, len(ids), seed=batch)
        got = bank.step(ids, xs)
        want = np.stack([streams[s].step(x) for s, x in zip(ids, xs, strict=True)])
        np.testing.assert_array_equal(got, want)
    for s in bank.sensors:
        np.testing.assert_array_equal(bank.state_vector(s), streams[s].state_vector)
    assert bank.capacity >= len(bank) and bank.capacity >= 64  # grew from 8


def test_batches_of_a_few_sensors_and_of_many_carry_one_state_bit_exact(model):
    """Batches spanning fewer rows than a tile (stepped in order, without the tiled
    kernel) and batches of all sensors (tiled) advance the same rows alike, NaN included."""
    rng = np.random.default_rng(5)
    sensors = list(range(10))  # rows 0..9, in order of first sight
    streams = {s: model.stream(on_invalid="skip") for s in sensors}
    bank = model.bank(capacity=16)
    bank.step(sensors, samples(model, 10, seed=99))
    for s, x in zip(sensors, samples(model, 10, seed=99), strict=True):
        streams[s].step(x)
    for batch in range(16):
        if batch % 2:
            first = int(rng.integers(0, 8))
            ids = [first + int(i) for i in rng.integers(0, 3, 7)]  # 3 rows at most
            assert max(bank.rows(ids)) - min(bank.rows(ids)) < kernels.TILE_STREAMS - 1
        else:
            ids = [int(i) for i in rng.integers(0, 10, 30)]
        xs = samples(model, len(ids), seed=batch)
        xs[rng.integers(0, len(ids))] = np.nan
        got = bank.step(ids, xs)
        want = np.stack([streams[s].step(x) for s, x in zip(ids, xs, strict=True)])
        np.testing.assert_array_equal(got, want)
    for s in sensors:
        np.testing.assert_array_equal(bank.state_vector(s), streams[s].state_vector)
        assert bank.rejected(s) == streams[s].rejected


def test_export_import_round_trip_bit_exact(model):
    bank = model.bank(capacity=4)
    ids = [i % 7 for i in range(70)]
    bank.step(ids, samples(model, 70))
    snapshot = bank.export_state()
    later = samples(model, 70, seed=9)
    want = bank.step(ids, later)

    restored = model.bank(capacity=2)
    restored.import_state(snapshot)
    np.testing.assert_array_equal(restored.step(ids, later), want)
    for s in bank.sensors:
        np.testing.assert_array_equal(restored.state_vector(s), bank.state_vector(s))

    bad = dataclasses.replace(snapshot, states=snapshot.states[:, :-1])
    with pytest.raises(ShapeError):
        restored.import_state(bad)
    nan = dataclasses.replace(snapshot, states=np.full_like(snapshot.states, np.nan))
    with pytest.raises(ShapeError, match="non-finite"):
        restored.import_state(nan)


def test_bank_state_stored_as_a_tree_restores_bit_exact_and_checks_its_version(model):
    bank = model.bank(capacity=4)
    bank.step(["a", 7, "b"], samples(model, 3))
    tree = bank.export_state().to_tree()
    assert (tree["version"], tree["state_size"]) == (1, model.state_size)
    # Through JSON, as a user may store it; a tree from before BankState had no version.
    text = json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in tree.items()})
    for stored in (json.loads(text), {k: v for k, v in tree.items() if k != "version"}):
        restored = model.bank(capacity=1)
        restored.import_state(BankState.from_tree(stored))
        assert restored.sensors == ["a", 7, "b"]
        for s in bank.sensors:
            np.testing.assert_array_equal(restored.state_vector(s), bank.state_vector(s))
    with pytest.raises(ShapeError, match="unsupported version 2"):
        BankState.from_tree({**tree, "version": 2})
    with pytest.raises(ShapeError, match="appears twice"):
        BankState.from_tree({**tree, "sensors": ["a", "a", "b"]})
    with pytest.raises(ShapeError, match="3 sensors for states of shape"):
        BankState.from_tree({**tree, "states": tree["states"][:2]})


def test_per_sensor_state_read_write(model):
    bank = model.bank()
    stream = model.stream()
    xs = samples(model, 30)
    stream.run(xs)
    h, c = stream.state
    bank.set_state("a", h, c)
    later = samples(model, 10, seed=4)
    np.testing.assert_array_equal(bank.step(["a"] * 10, later), stream.run(later))
    for got, want in zip(bank.state("a"), stream.state, strict=True):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_forget_then_reuse_starts_fresh(model):
    bank = model.bank(capacity=2)
    xs = samples(model, 20)
    bank.step(["a"] * 10 + ["b"] * 10, xs)
    row_a = bank.row("a")
    bank.forget("a")
    assert "a" not in bank and len(bank) == 1
    fresh = model.stream()
    got = bank.step(["c"] * 5, xs[:5])  # reuses a's row
    assert bank.row("c") == row_a
    np.testing.assert_array_equal(got, fresh.run(xs[:5]))
    with pytest.raises(KeyError):
        bank.forget("a")


def test_growth_keeps_existing_states(model):
    bank = model.bank(capacity=1)
    bank.step(["first"] * 5, samples(model, 5))
    before = bank.state_vector("first")
    bank.step(list(range(100)), samples(model, 100, seed=1))
    assert bank.capacity >= 101
    np.testing.assert_array_equal(bank.state_vector("first"), before)


def test_reset_equals_fresh_state(model):
    xs = samples(model, 50)
    stream = model.stream()
    stream.run(samples(model, 20, seed=5))
    stream.reset()
    np.testing.assert_array_equal(stream.run(xs), model.stream().run(xs))

    bank = model.bank()
    bank.step(["a", "b"], samples(model, 2, seed=6))
    bank.reset("a")
    np.testing.assert_array_equal(bank.state_vector("a"), np.zeros(model.state_size))
    assert bank.state_vector("b").any()
    bank.reset()
    np.testing.assert_array_equal(bank.step(["b"] * 50, xs), model.stream().run(xs))


def test_step_and_run_agree_bit_exact(model):
    xs = samples(model, 300)
    stream = model.stream()
    np.testing.assert_array_equal(np.stack([stream.step(x) for x in xs]), model.stream().run(xs))


def test_copy_is_independent(model):
    stream = model.stream()
    stream.run(samples(model, 10))
    twin = stream.copy()
    xs = samples(model, 10, seed=2)
    np.testing.assert_array_equal(stream.run(xs), twin.run(xs))
    stream.reset()
    assert twin.state_vector.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_stream_raise_leaves_state_untouched(model, bad):
    stream = model.stream()
    stream.run(samples(model, 10))
    before = stream.state_vector
    x = samples(model, 1)[0]
    x[-1] = bad
    with pytest.raises(InvalidSampleError, match="state unchanged"):
        stream.step(x)
    np.testing.assert_array_equal(stream.state_vector, before)
    assert stream.rejected == 1


def test_stream_skip_counts_and_continues(model):
    stream = model.stream(on_invalid="skip")
    reference = model.stream()
    xs = samples(model, 40)
    bad = xs.copy()
    bad[[3, 17, 30], 0] = np.nan
    got = stream.run(bad)
    assert stream.rejected == 3
    assert np.isnan(got[[3, 17, 30]]).all()
    want = reference.run(np.delete(xs, [3, 17, 30], axis=0))
    np.testing.assert_array_equal(np.delete(got, [3, 17, 30], axis=0), want)
    assert np.isnan(stream.step(bad[3])).all() and stream.rejected == 4


def test_stream_run_raise_consumes_good_samples_then_raises(model):
    stream = model.stream()
    xs = samples(model, 20)
    bad = xs.copy()
    bad[5, 1] = np.inf
    with pytest.raises(InvalidSampleError, match="1 sample"):
        stream.run(bad)
    reference = model.stream()
    reference.run(np.delete(xs, 5, axis=0))
    np.testing.assert_array_equal(stream.state_vector, reference.state_vector)


@pytest.mark.parametrize("threads", [1, 2])
def test_bank_bad_sample_counted_and_skipped_others_unaffected(model, threads):
    bank = model.bank(threads=threads)
    clean = model.bank(threads=threads)
    ids = [i % 40 for i in range(100)]  # 40 sensors: more than one parallel task takes
    xs = samples(model, 100)
    bad = xs.copy()
    bad[[4, 27, 44], 2] = np.nan  # sensor 4 twice, sensor 27 once
    got = bank.step(ids, bad)
    assert bank.rejected(4) == 2 and bank.rejected(27) == 1
    assert sum(bank.rejected(s) for s in range(40)) == 3
    assert list(np.flatnonzero(bank.last_status != L.OK)) == [4, 27, 44]
    assert (bank.last_status[[4, 27, 44]] == L.REJECTED_SAMPLE).all()
    assert np.isnan(got[[4, 27, 44]]).all()
    keep = np.setdiff1d(np.arange(100), [4, 27, 44])
    want = clean.step([ids[i] for i in keep], xs[keep])
    np.testing.assert_array_equal(got[keep], want)
    for s in range(40):
        np.testing.assert_array_equal(bank.state_vector(s), clean.state_vector(s))
        assert np.isfinite(bank.state_vector(s)).all()


def test_overflow_never_reaches_state():
    model = sl.random_model(2, [4], output_size=1, scale=1.0)
    # The head's second layer computes 3e38 * 1 + 3e38, past float32's 3.4e38.
    huge = model.replace(
        head=(
            sl.model.dense_layer(np.zeros((1, 4)), np.ones(1)),
            sl.model.dense_layer(np.full((1, 1), 3e38), np.full(1, 3e38)),
        )
    )
    stream = huge.stream(on_invalid="skip")
    assert np.isnan(stream.step(np.ones(2, np.float32))).all()
    assert stream.rejected == 1
    assert not stream.state_vector.any()


def test_wrong_shapes_and_dtypes(model):
    stream = model.stream()
    with pytest.raises(ShapeError, match=r"expected shape \(3,\), got \(4,\)"):
        stream.step(np.zeros(4))
    with pytest.raises(ShapeError, match=r"expected shape \(3,\), got \(1, 3\)"):
        stream.step(np.zeros((1, 3)))
    with pytest.raises(ShapeError, match="cannot convert"):
        stream.step(np.array(["a", "b", "c"]))
    with pytest.raises(ShapeError, match="cannot convert"):
        stream.step([object(), 1, 2])
    with pytest.raises(ShapeError, match=r"expected shape \(n, 3\)"):
        stream.run(np.zeros((5, 2)))
    bank = model.bank()
    with pytest.raises(ShapeError, match=r"expected shape \(n, 3\)"):
        bank.step(["a"], np.zeros((1, 2)))
    with pytest.raises(ShapeError, match=r"rows: expected shape \(2,\)"):
        bank.step(["a"], np.zeros((2, 3)))
    with pytest.raises(ShapeError):
        stream.state = ((np.zeros(5),) * len(model.layers), (np.zeros(5),) * len(model.layers))
    with pytest.raises(ShapeError, match="non-finite"):
        stream.state_vector = np.full(model.state_size, np.nan)
    # A sample of another float dtype is converted, not refused.
    np.testing.assert_array_equal(
        stream.step(np.ones(3, np.float16)), model.stream().step(np.ones(3, model.dtype))
    )


def test_out_argument_avoids_allocation(model):
    stream = model.stream()
    out = np.empty(model.output_size, model.dtype)
    result = stream.step(samples(model, 1)[0], out=out)
    assert result is out


def test_writing_state_of_new_sensors_into_a_full_bank_grows_it(model):
    """Regression: the row lookup grows the state array, so it must happen before indexing."""
    bank = model.bank(capacity=1)
    bank.step(["a"], samples(model, 1))
    vector = np.arange(model.state_size, dtype=model.dtype) / 100
    bank.set_state_vector("b", vector)
    np.testing.assert_array_equal(bank.state_vector("b"), vector)
    stream = model.stream()
    stream.run(samples(model, 5))
    bank.set_state("c", *stream.state)
    np.testing.assert_array_equal(bank.state_vector("c"), stream.state_vector)
    snapshot = BankState(["d", "e", "f"], np.stack([vector] * 3))
    bank.import_state(snapshot)
    for s in ("d", "e", "f"):
        np.testing.assert_array_equal(bank.state_vector(s), vector)


def test_step_takes_any_layout_of_sample_and_returns_independent_results(model):
    """Strided, read-only, misaligned, float16 and list samples give the results of plain
    ones (they are copied into the kernel's own argument type), and every result is a
    fresh array."""
    xs = samples(model, 6, seed=4)
    xs[4] = xs[4].astype(np.float16)  # exactly representable in float16
    readonly = xs[1].copy()
    readonly.flags.writeable = False
    strided = np.repeat(xs[2], 2)[::2]
    raw = np.zeros(3 * model.dtype.itemsize + 1, np.uint8)
    misaligned = np.frombuffer(raw.data, model.dtype, 3, offset=1)
    misaligned[:] = xs[3]
    assert not misaligned.flags.aligned and not strided.flags.c_contiguous
    variants = [xs[0].tolist(), readonly, strided, misaligned, xs[4].astype(np.float16), xs[5]]
    plain, other = model.stream(), model.stream()
    expected = [plain.step(x) for x in xs]
    got = [other.step(v) for v in variants]
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)
    assert len({id(g) for g in got}) == len(got)
    np.testing.assert_array_equal(other.state_vector, plain.state_vector)


@pytest.mark.parametrize("threads", [1, 2])
def test_bank_run_equals_stepping_bit_exact(model, threads):
    """Block mode: (N, T, D) for distinct sensors gives what T calls of step give, with
    (N, T) statuses and the same rejected counts; sensors not in the block are untouched."""
    n, steps = 70, 5  # 350 samples: past the parallel threshold with 2 threads
    block = np.random.default_rng(8).normal(0, 1, (n, steps, model.input_size)).astype(model.dtype)
    block[3, 2, 0] = np.nan
    sensors = [f"s{i}" for i in range(n)]
    ran, stepped = model.bank(capacity=4, threads=threads), model.bank(capacity=4, threads=threads)
    for bank in (ran, stepped):
        bank.step(["other"], samples(model, 1))
    got = ran.run(sensors, block)
    want = np.stack([stepped.step(sensors, block[:, t]) for t in range(steps)], axis=1)
    assert got.shape == (n, steps, model.output_size)
    np.testing.assert_array_equal(got, want)
    assert ran.last_status.shape == (n, steps)
    assert np.argwhere(ran.last_status != L.OK).tolist() == [[3, 2]]
    assert ran.rejected("s3") == stepped.rejected("s3") == 1
    for s in ran.sensors:
        np.testing.assert_array_equal(ran.state_vector(s), stepped.state_vector(s))


def test_bank_run_refuses_bad_blocks_before_touching_sensors(model):
    bank = model.bank()
    with pytest.raises(ShapeError, match=r"expected shape \(2, T, 3\)"):
        bank.run(["a", "b"], np.zeros((2, 4, 2)))
    with pytest.raises(ShapeError, match=r"expected shape \(2, T, 3\)"):
        bank.run(["a", "b"], np.zeros((4, 3)))
    with pytest.raises(ShapeError, match="cannot convert"):
        bank.run(["a"], [[["x", "y", "z"]]])
    assert len(bank) == 0
    with pytest.raises(ShapeError, match="distinct"):
        bank.run(["a", "a"], np.zeros((2, 4, 3)))
    assert bank.run(["a"], np.zeros((1, 0, 3))).shape == (1, 0, model.output_size)
