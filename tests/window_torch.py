"""Reference window networks in real PyTorch, shared by the window parity tests on the CPU
(``windows/``) and the GPU simulator (``cuda/``). Import after ``pytest.importorskip("torch")``."""

from __future__ import annotations

import numpy as np
import torch

nn = torch.nn

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-9}
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}


class WindowNet(nn.Module):
    """A recurrent module (batch_first) and a Linear head on the last step or every step."""

    def __init__(
        self,
        cell: str,
        layers: int,
        bidirectional: bool,
        output: str,
        input_size: int = 3,
        hidden: int = 20,
        classes: int = 4,
        final_state: bool = False,
    ) -> None:
        super().__init__()
        self.final_state = final_state
        extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
        self.rnn = CELLS[cell](
            input_size, hidden, layers, batch_first=True, bidirectional=bidirectional, **extra
        )
        width = hidden * (2 if bidirectional else 1)
        self.fc = nn.Linear(width, input_size if output == "every" else classes)
        self.output = output

    def forward(self, x):
        out, h_n = self.rnn(x)
        if self.output == "every":
            return self.fc(out)
        if self.final_state:  # the top layer's h_n: forward, then backward if present
            h_n = h_n[0] if isinstance(h_n, tuple) else h_n
            top = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.rnn.bidirectional else h_n[-1]
            y = self.fc(top)
        else:
            y = self.fc(out[:, -1, :])
        if self.output == "probabilities":
            return torch.softmax(y, dim=-1)
        if self.output == "log_probabilities":
            return torch.log_softmax(y, dim=-1)
        return y


def torch_windows(net: nn.Module, windows: np.ndarray) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: torch's pool spins otherwise
    try:
        with torch.inference_mode():
            dtype = next(net.parameters()).dtype
            return net(torch.from_numpy(np.ascontiguousarray(windows)).to(dtype)).numpy()
    finally:
        torch.set_num_threads(threads)


def check_close(ours: np.ndarray, ref: np.ndarray, dtype) -> None:
    assert ours.shape == ref.shape
    scale = max(1.0, float(np.max(np.abs(ref))))
    error = float(np.max(np.abs(ours - ref)))
    assert error <= TOLERANCE[dtype] * scale, f"max error {error:.3g} at scale {scale:.3g}"
