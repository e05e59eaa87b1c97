"""The execution backends the conformance suite runs every weight loader through.

A backend turns a :class:`~streamlstm.model.Model` into a :class:`Runner`: something that
advances ONE stream by one sample and exposes its flat state. To add a backend (e.g. the
CUDA simulator), append a :class:`Backend` to :data:`BACKENDS`, with ``unavailable``
returning why it cannot run here (the suite then skips it with that reason)::

    BACKENDS.append(Backend("cuda-sim", make=CudaSimRunner, unavailable=_no_cuda_sim))

Every loader x backend pair then goes through the same checks in test_conformance.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np

from streamlstm.model import Model


class Runner(Protocol):
    """One stream of a model on some backend."""

    def step(self, x: np.ndarray) -> np.ndarray:
        """Advance by one ``(D,)`` sample; return the ``(O,)`` prediction (a copy)."""

    def state(self) -> np.ndarray:
        """A copy of the flat ``(S,)`` state (each layer's ``h`` then ``c``, in order)."""

    def set_state(self, vector: np.ndarray) -> None:
        """Overwrite the state with a vector from :meth:`state` (maybe of another runner)."""

    def reset(self) -> None:
        """Back to the zero state."""


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    make: Callable[[Model], Runner]
    #: Returns a reason when the backend cannot run on this machine, else None.
    unavailable: Callable[[], str | None] = lambda: None
    #: Feed it only this many first samples of a case (None: all of them), except the
    #: long-run cases of test_conformance.py (see LONG_RUN there).
    steps: int | None = None
    #: False: it runs one source of each framework model (SIMULATED in
    #: test_conformance.py), into whose packed weights every other source of that model
    #: loads, bit for bit; True: every source.
    every_source: bool = True


class StreamRunner:
    """The CPU :class:`~streamlstm.stream.Stream`, one ``step`` per sample."""

    def __init__(self, model: Model) -> None:
        self._stream = model.stream()

    def step(self, x: np.ndarray) -> np.ndarray:
        return self._stream.step(x)

    def state(self) -> np.ndarray:
        return self._stream.state_vector

    def set_state(self, vector: np.ndarray) -> None:
        self._stream.state_vector = vector

    def reset(self) -> None:
        self._stream.reset()


class BankRunner:
    """The CPU :class:`~streamlstm.bank.Bank`: the stream under test shares every
    micro-batch with two decoy sensors fed their own samples, so a kernel that mixed
    rows up would show as a mismatch."""

    PROBE = "probe"

    def __init__(self, model: Model) -> None:
        self._bank = model.bank(capacity=2, threads=1)
        self._rng = np.random.default_rng(7)
        self._width = model.input_size
        self._sensors = ["decoy-a", self.PROBE, "decoy-b"]

    def step(self, x: np.ndarray) -> np.ndarray:
        decoys = self._rng.normal(0.0, 1.0, (2, self._width)).astype(x.dtype)
        batch = np.stack([decoys[0], x, decoys[1]])
        return self._bank.step(self._sensors, batch)[1].copy()

    def state(self) -> np.ndarray:
        return self._bank.state_vector(self.PROBE)

    def set_state(self, vector: np.ndarray) -> None:
        self._bank.set_state_vector(self.PROBE, vector)

    def reset(self) -> None:
        self._bank.reset(self.PROBE)


class CudaBankRunner(BankRunner):
    """The GPU :class:`~streamlstm.cuda.bank.CudaBank` (on the simulator in CI), with the
    same decoy sensors as :class:`BankRunner`; its state is read back in the CPU layout.

    The simulator runs each launch in Python, so one launch per sample (1200 per case)
    would take most of CI's budget. :meth:`run` therefore steps the first
    :data:`STEPWISE` samples one launch each (the per-sample path) and the rest in one
    block-mode launch, which carries the same state through the same kernel.

    The per-stream kernel runs here: on the simulator the tiled kernel computes all 32
    streams of its tile for these 3 sensors, 6-7x the Python work per step, which at 1200
    steps per case would take CI's budget. ``tests/cuda/test_cuda_bank.py`` checks the tiled
    kernel against the CPU bank, which these cases check against the frameworks.
    """

    STEPWISE = 8

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        from streamlstm.cuda.bank import CudaBank

        self._bank = CudaBank(model, capacity=2, kernel="per-stream")

    def run(self, xs: np.ndarray) -> np.ndarray:
        head = [self.step(x) for x in xs[: self.STEPWISE]]
        rest = xs[self.STEPWISE :]
        if not len(rest):
            return np.stack(head)
        decoys = self._rng.normal(0.0, 1.0, (2, len(rest), self._width)).astype(xs.dtype)
        block = self._bank.run(self._sensors, np.stack([decoys[0], rest, decoys[1]]))
        return np.concatenate([np.stack(head), block[1]])


def _no_cuda() -> str | None:
    from streamlstm import cuda

    return None if cuda.is_available() else "no CUDA device or simulator (numba-cuda)"


#: Samples per case on the CUDA simulator, which runs every CUDA thread's step in Python:
#: enough for the state to carry through hundreds of steps; the CPU backends check each
#: case's whole length against its framework.
SIMULATOR_STEPS = 240

BACKENDS: list[Backend] = [
    Backend("cpu-stream", StreamRunner),
    Backend("cpu-bank", BankRunner),
    Backend(
        "cuda-sim",
        CudaBankRunner,
        unavailable=_no_cuda,
        steps=SIMULATOR_STEPS,
        every_source=False,
    ),
]
