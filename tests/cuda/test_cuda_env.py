"""The CUDA bank's environment: no GPU, numpy without ``row_stack``, real-target compilation.

Each check runs in a fresh interpreter because numba-cuda fixes its mode (simulator or
driver) at first import, and this session runs the simulator (see conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda not installed")

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, *, simulator: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_ENABLE_CUDASIM": "1" if simulator else "0"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _has_gpu() -> bool:
    probe = _python("from numba import cuda; print(cuda.is_available())")
    return probe.stdout.strip().endswith("True")


def test_cuda_device_without_gpu_is_a_clear_error():
    if _has_gpu():
        pytest.skip("a CUDA GPU is present")
    result = _python("""
        import streamlstm as sl
        model = sl.random_model(3, [4], output_size=3)
        assert type(model.bank(8, device="auto")).__name__ == "Bank"
        try:
            model.bank(8, device="cuda")
        except sl.CudaUnavailableError as exc:
            print("ERROR:", exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "ERROR: no CUDA GPU is available" in result.stdout


def test_numpy_without_row_stack_gets_the_shim():
    """numpy >= 2.5 has no ``row_stack``; numba-cuda 0.30.4's array typing needs it."""
    broken = _python("""
        import numpy as np
        if hasattr(np, "row_stack"):  # numpy >= 2.5 has none to remove
            del np.row_stack
        import numba.cuda.np.arrayobj
    """)
    if broken.returncode == 0:
        pytest.skip("this numba-cuda no longer needs np.row_stack")
    assert "row_stack" in broken.stderr
    shimmed = _python("""
        import numpy as np
        if hasattr(np, "row_stack"):
            del np.row_stack
        from streamlstm.cuda._compat import import_cuda
        import_cuda()
        import numba.cuda.np.arrayobj
        assert np.row_stack is np.vstack
        print("loaded")
    """)
    assert shimmed.returncode == 0, shimmed.stderr
    assert shimmed.stdout.strip() == "loaded"


def test_step_kernel_compiles_for_a_real_gpu():
    """The simulator runs Python, so compile the real kernel to sm_90 PTX as well.

    Compiled without ``np.row_stack`` (as on numpy >= 2.5), relying on the shim.

    Needs libNVVM and NVRTC (CUDA toolkit or the nvidia-cuda-nvrtc wheel) but no GPU;
    numba-cuda asks the current device for its compute capability when compiling
    device functions, so we stand in an sm_90 device for that question only.
    """
    result = _python("""
        import numpy as np, numba
        if hasattr(np, "row_stack"):
            del np.row_stack  # compile as numpy >= 2.5 would have it, through the shim
        from streamlstm.cuda._compat import import_cuda
        cuda = import_cuda()
        import numba.cuda.dispatcher as dispatcher
        class Hopper:
            compute_capability = (9, 0)
        dispatcher.get_current_device = lambda: Hopper()
        from streamlstm.model import random_model
        from streamlstm.packing import CUDA, pack
        from streamlstm.cuda.kernels import step_kernel
        from streamlstm.cuda.tiles import tile_kernel
        for kind, dtype in (("lstm", np.float32), ("gru", np.float64)):
            model = random_model(3, [8, 6], kind=kind, output_size=2, dtype=dtype)
            pk = pack(model, CUDA)
            T = numba.from_dtype(model.dtype)
            sig = (T[::1], numba.int32[::1], numba.int64, numba.int64, numba.int64,
                   numba.int64)
            for k in (step_kernel(pk.layout, model.dtype, pk.params.size),
                      tile_kernel(pk.layout, model.dtype, pk.params.size)):
                ptx, _ = cuda.compile_ptx(k.kernel.py_func, sig, cc=(9, 0))
                assert ".entry" in ptx
        from streamlstm.cuda.kernels import state_kernels
        moves = state_kernels()
        F, I, i64 = numba.float32[::1], numba.int64[::1], numba.int64
        rows2d = numba.float32[:, ::1]
        for kernel, sig in ((moves.gather, (F, i64, i64, I, rows2d)),
                            (moves.scatter, (F, i64, i64, I, rows2d)),
                            (moves.zero_rows, (F, i64, i64, i64, I)),
                            (moves.fill, (F, i64, i64, i64)),
                            (moves.copy_states, (F, i64, i64, F, i64, i64, i64, i64))):
            cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
        print("compiled")
    """)
    if "libnvrtc" in result.stderr or "libnvvm" in result.stderr.lower():
        pytest.skip("NVRTC/libNVVM not installed: cannot compile for a real GPU here")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "compiled"


def test_window_kernel_compiles_for_a_real_gpu():
    """The GPU window kernel to sm_90 PTX (no GPU needed), as the step kernels above: a
    unidirectional LSTM classifier in float32, and in float64 a bidirectional GRU encoder
    feeding a plain-RNN decoder, every step out, and a bidirectional RNN read from its
    final state."""
    result = _python("""
        import dataclasses
        import numpy as np, numba
        from streamlstm.cuda._compat import import_cuda
        cuda = import_cuda()
        import numba.cuda.dispatcher as dispatcher
        class Hopper:
            compute_capability = (9, 0)
        dispatcher.get_current_device = lambda: Hopper()
        from streamlstm.model import Model, dense_layer, random_model, rnn_layer
        from streamlstm.window_spec import WindowSpec
        from streamlstm.cuda.window_tiles import window_kernel
        rng = np.random.default_rng(0)
        def rnn(width, activation):
            return rnn_layer(rng.normal(0, 0.3, (5, width)), rng.normal(0, 0.3, (5, 5)),
                             activation=activation, dtype=np.float64)
        gru = random_model(3, [4], kind="gru", dtype=np.float64).layers[0]
        bi_gru = dataclasses.replace(gru, backward=gru)
        cases = [
            (random_model(3, [16], output_size=4), WindowSpec(32, 8, "probabilities")),
            (Model(layers=(bi_gru, rnn(8, "tanh"))), WindowSpec(16, 4, "every",
                                                               encoder_layers=1)),
            (Model(layers=(dataclasses.replace(rnn(3, "relu"), backward=rnn(3, "relu")),),
                   head=(dense_layer(rng.normal(0, 0.3, (2, 10)), dtype=np.float64),)),
             WindowSpec(8, 8, "log_probabilities", final_state=True)),
        ]
        for model, spec in cases:
            k = window_kernel(model, spec)
            T = numba.from_dtype(model.dtype)[::1]
            sig = (T, T, T, T, numba.int32[::1], numba.int64, numba.int64)
            ptx, _ = cuda.compile_ptx(k.kernel.py_func, sig, cc=(9, 0))
            assert ".entry" in ptx
        print("compiled")
    """)
    if "libnvrtc" in result.stderr or "libnvvm" in result.stderr.lower():
        pytest.skip("NVRTC/libNVVM not installed: cannot compile for a real GPU here")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "compiled"


def test_benchmark_runs_end_to_end_on_the_simulator(tmp_path):
    """``bench_cuda.py --simulate`` walks every code path the GPU run takes, tiny and slow."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_cuda.py"),
            "--simulate",
            "--json",
            str(out),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["simulated"] is True
    assert [(row["n"], row["kernel"]) for row in record["rows"]] == [
        (1, "tiled"),
        (1, "per-stream"),
        (8, "tiled"),
        (8, "per-stream"),
    ]
    assert record["device"]["launch_floor_ms"] > 0
    assert all(
        row["bank_e2e_ms"] > 0 and row["block_e2e_ms_per_step"] > 0 for row in record["rows"]
    )


def test_without_numba_cuda_installed_import_still_works():
    result = _python("""
        import sys
        sys.modules["numba.cuda"] = None  # what an install without numba-cuda looks like
        import streamlstm as sl
        import streamlstm.cuda
        assert not streamlstm.cuda.is_available()
        try:
            sl.random_model(3, [4]).bank(8, device="cuda")
        except sl.CudaUnavailableError as exc:
            print("ERROR:", exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "ERROR: numba-cuda is not installed" in result.stdout
