"""The bank protocol: the CPU Bank and the GPU CudaBank both satisfy it, signatures included."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import streamlstm as sl
from streamlstm.bank import Bank
from streamlstm.banks import StreamBank

MODEL = sl.random_model(3, [8], output_size=2, seed=6)
SPECIAL = ("__len__", "__contains__")


def _members() -> tuple[set[str], dict[str, inspect.Signature], set[str]]:
    """The protocol's attributes, its methods' signatures, and its properties."""
    attributes = set(StreamBank.__annotations__)
    methods, properties = {}, set()
    for name, value in vars(StreamBank).items():
        if name.startswith("_") and name not in SPECIAL:
            continue
        if isinstance(value, property):
            properties.add(name)
        elif inspect.isfunction(value):
            methods[name] = inspect.signature(value)
    return attributes, methods, properties


def _mismatches(cls: type, instance: object) -> list[str]:
    """How ``cls`` (and ``instance``) differ from the protocol: missing members, a method
    whose parameters (names, kinds, defaults) differ, a property that is not one."""
    attributes, methods, properties = _members()
    problems = [f"attribute {a}" for a in sorted(attributes) if not hasattr(instance, a)]
    problems += [
        f"property {p}"
        for p in sorted(properties)
        if not isinstance(inspect.getattr_static(cls, p, None), property)
    ]
    for name, want in methods.items():
        have = inspect.getattr_static(cls, name, None)
        if not inspect.isfunction(have):
            problems.append(f"method {name}")
            continue
        shape = [(p.name, p.kind, p.default) for p in want.parameters.values()]
        if [
            (p.name, p.kind, p.default) for p in inspect.signature(have).parameters.values()
        ] != shape:
            problems.append(f"signature of {name}")
    return problems


def test_protocol_lists_the_shared_api():
    attributes, methods, properties = _members()
    assert {"model", "last_status"} <= attributes
    assert {
        "step",
        "step_rows",
        "run",
        "rows",
        "row",
        "forget",
        "reset",
        "state",
        "state_vector",
        "set_state",
        "set_state_vector",
        "export_state",
        "import_state",
        "rejected",
        *SPECIAL,
    } <= set(methods)
    assert {"capacity", "sensors"} <= properties


def test_the_cpu_bank_satisfies_the_protocol():
    bank = MODEL.bank(4)
    assert isinstance(bank, StreamBank)
    assert _mismatches(Bank, bank) == []


def test_a_stream_does_not():
    """The check can fail: a stream's state is a property and its rejected an int."""
    stream = MODEL.stream()
    assert not isinstance(stream, StreamBank)
    assert {"method state", "method rejected", "signature of run", "method rows"} <= set(
        _mismatches(sl.Stream, stream)
    )


@pytest.mark.cuda
def test_the_gpu_bank_satisfies_the_protocol():
    cuda_bank = pytest.importorskip("streamlstm.cuda.bank", reason="numba-cuda not installed")
    from streamlstm.cuda import is_available

    if not is_available():
        pytest.skip("no CUDA GPU and the simulator is off (NUMBA_ENABLE_CUDASIM=0)")
    bank = MODEL.bank(4, device="cuda")
    assert isinstance(bank, StreamBank)
    assert _mismatches(cuda_bank.CudaBank, bank) == []
    # Shared code runs on either: the same calls, the same answers (to float32 rounding).
    xs = np.random.default_rng(0).normal(size=(2, 3, 3)).astype(np.float32)
    cpu = MODEL.bank(4)
    np.testing.assert_allclose(bank.run(["a", "b"], xs), cpu.run(["a", "b"], xs), atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_refused_block_run_leaves_no_sensor_behind(device):
    bank = MODEL.bank(4, device=device)
    bank.step(["a"], np.zeros((1, 3), np.float32))
    xs = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(sl.ShapeError, match="must be distinct"):
        bank.run(["new", "new"], xs)
    with pytest.raises(sl.ShapeError, match=r"expected shape \(3, T, 3\)"):
        bank.run(["new", "b", "c"], xs)
    with pytest.raises(sl.ShapeError, match="cannot convert"):
        bank.run(["new", "b"], [["x"]])
    assert bank.sensors == ["a"]
    assert bank.run(["new", "a"], xs).shape == (2, 5, 2) and bank.sensors == ["a", "new"]
