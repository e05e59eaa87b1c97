"""PyTorch reference networks and helpers shared by the torch-facing tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn


class RecurrentNet(nn.Module):
    """``nn.LSTM``/``nn.GRU`` (batch_first) followed by an optional head, like a user's model."""

    def __init__(
        self,
        kind: str,
        input_size: int,
        hidden: int,
        layers: int,
        *,
        bias: bool = True,
        proj_size: int = 0,
        head: str = "none",
        out: int = 3,
    ) -> None:
        super().__init__()
        extra = {"proj_size": proj_size} if kind == "lstm" else {}
        cell = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cell(input_size, hidden, layers, bias=bias, batch_first=True, **extra)
        width = proj_size or hidden
        if head == "fc":
            self.fc = nn.Linear(width, out)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(width, 16), nn.Tanh(), nn.Linear(16, out))
        self.head_kind = head

    def forward(self, x):
        y, _ = self.rnn(x)
        if self.head_kind == "fc":
            return self.fc(y)
        if self.head_kind == "mlp":
            return self.head(y)
        return y


def make_net(
    kind: str,
    layers: int,
    hidden: int,
    *,
    bias: bool = True,
    proj: int = 0,
    head: str = "none",
    dtype=np.float32,
    seed: int = 0,
    input_size: int = 3,
):
    torch.manual_seed(seed)
    net = RecurrentNet(kind, input_size, hidden, layers, bias=bias, proj_size=proj, head=head)
    return net.double() if dtype == np.float64 else net.float()


def reference(net, xs: np.ndarray) -> np.ndarray:
    """Torch outputs for ``xs`` ``(B, T, D)`` (or ``(T, D)``), state carried over the whole run."""
    single = xs.ndim == 2
    batch = xs[None] if single else xs
    dtype = next(net.parameters()).dtype
    # One thread: on a shared 2-core machine torch's thread pool spins and is 10-40x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            ys = net(torch.from_numpy(np.ascontiguousarray(batch)).to(dtype)).numpy()
    finally:
        torch.set_num_threads(threads)
    return ys[0] if single else ys


def save_state_dict(net, directory: Path, stem: str = "net") -> tuple[Path, Path]:
    """The net's state_dict as ``.pt`` (torch.save) and ``.safetensors`` (safetensors library)."""
    from safetensors.torch import save_file

    pt = directory / f"{stem}.pt"
    st = directory / f"{stem}.safetensors"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    torch.save(state, pt)
    save_file(state, str(st))
    return pt, st


def load_options(head: str) -> dict:
    return {"head_activation": "tanh"} if head == "mlp" else {}
