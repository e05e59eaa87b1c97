"""The README's window-model example, end to end on real bearing vibration (CWRU, 12 kHz).

Trains the seed-style ``SimpleLSTM`` classifier (``nn.LSTM`` -> ``out[:, -1, :]`` ->
``Linear``) in PyTorch on 128-sample windows of the drive-end and fan-end accelerometers
(normal vs inner-race, ball and outer-race faults of 0.007 in), converts it with
``streamlstm convert --window 128 --hop 32 --output probabilities --classes ...``, then
streams a splice of held-out recordings (normal -> inner -> normal -> ball -> outer)
through :class:`streamlstm.detect.WindowDetector` and prints the class-change alerts.

Each recording is split in time: the first 60 % trains, the next 20 % chooses the epoch
(validation), the last 20 % is the test splice. Reported next to a simple baseline (a
nearest-centroid classifier on each window's RMS and kurtosis per channel), with the
false-alarm count on the normal test stretches.

The data (no licence stated; see its README) is read from ``../shared/data`` relative to
the repository root and never copied. Run from the repository root:
``python benchmarks/cwru_classifier.py`` (torch on one thread; about a minute of training).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cwru-bearing-12k-subset"
CLASSES = ("normal", "inner", "ball", "outer")
FILES = {
    "normal": "normal.npz",
    "inner": "ir_007.npz",
    "ball": "ball_007.npz",
    "outer": "or6_007.npz",
}
RATE = 12_000.0
WINDOW, HOP, TRAIN_HOP = 128, 32, 64


def recordings() -> dict[str, np.ndarray]:
    out = {}
    for name, file in FILES.items():
        with np.load(DATA / file, allow_pickle=False) as data:
            out[name] = np.stack([data["de"], data["fe"]], axis=1).astype(np.float32)
    return out


def splits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return x[:a], x[a:b], x[b:]


def windows(x: np.ndarray, hop: int) -> np.ndarray:
    starts = np.arange(0, len(x) - WINDOW + 1, hop)
    return np.stack([x[s : s + WINDOW] for s in starts])


def labelled(parts: dict[str, np.ndarray], hop: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for k, name in enumerate(CLASSES):
        w = windows(parts[name], hop)
        xs.append(w)
        ys.append(np.full(len(w), k))
    return np.concatenate(xs), np.concatenate(ys)


def features(w: np.ndarray) -> np.ndarray:
    """Per window and channel: RMS and kurtosis (the classic bearing features)."""
    centred = w - w.mean(axis=1, keepdims=True)
    var = (centred**2).mean(axis=1)
    kurt = (centred**4).mean(axis=1) / np.maximum(var, 1e-12) ** 2
    return np.concatenate([np.sqrt(var), kurt], axis=1)


def recalls(guess: np.ndarray, truth: np.ndarray) -> str:
    """Accuracy, then the share of each class's test windows classified as that class."""
    per_class = ", ".join(
        f"{name} {np.mean(guess[truth == k] == k):.3f}" for k, name in enumerate(CLASSES)
    )
    return f"{np.mean(guess == truth):.3f} ({per_class})"


def centroid_baseline(train: tuple, test: tuple) -> np.ndarray:
    f_train, f_test = features(train[0]), features(test[0])
    mean, std = f_train.mean(axis=0), f_train.std(axis=0)
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    centroids = np.stack([f_train[train[1] == k].mean(axis=0) for k in range(len(CLASSES))])
    return np.argmin(((f_test[:, None] - centroids[None]) ** 2).sum(axis=2), axis=1)


def train(
    train_set: tuple,
    valid_set: tuple,
    mean: np.ndarray,
    std: np.ndarray,
    epochs: int,
    hidden: int,
    seed: int,
):
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(seed)

    class SimpleLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(2, hidden, batch_first=True)
            self.fc = nn.Linear(hidden, len(CLASSES))

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1, :])

    net = SimpleLSTM()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = torch.from_numpy((train_set[0] - mean) / std)
    y = torch.from_numpy(train_set[1])
    xv = torch.from_numpy((valid_set[0] - mean) / std)
    best, best_state = -1.0, None
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        for batch in order.split(64):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
        net.eval()
        with torch.no_grad():
            accuracy = float((net(xv).argmax(1).numpy() == valid_set[1]).mean())
        print(f"  epoch {epoch + 1}: validation accuracy {accuracy:.3f}")
        if accuracy > best:
            best, best_state = accuracy, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-probability", type=float, default=0.9)
    parser.add_argument("--consecutive", type=int, default=3)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"no data at {DATA} (see the README of the CWRU subset)", file=sys.stderr)
        return 2
    import torch

    import streamlstm
    from streamlstm.cli import main as cli
    from streamlstm.detect import WindowDetector

    data = {name: splits(x) for name, x in recordings().items()}
    parts = [{name: s[i] for name, s in data.items()} for i in range(3)]
    train_set, valid_set, test_set = (labelled(p, TRAIN_HOP) for p in parts)
    mean = train_set[0].reshape(-1, 2).mean(axis=0)
    std = train_set[0].reshape(-1, 2).std(axis=0)
    print(
        f"windows: {len(train_set[1])} train, {len(valid_set[1])} validation, "
        f"{len(test_set[1])} test (W={WINDOW}, 2 channels, 12 kHz)"
    )
    started = time.perf_counter()
    net, valid_accuracy = train(
        train_set, valid_set, mean, std, args.epochs, args.hidden, args.seed
    )
    print(
        f"trained in {time.perf_counter() - started:.0f} s (torch, 1 thread); best "
        f"validation accuracy {valid_accuracy:.3f}"
    )

    with tempfile.TemporaryDirectory() as folder:
        weights, native = Path(folder) / "bearing.pt", Path(folder) / "bearing.npz"
        torch.save(net.state_dict(), weights)
        command = [
            "convert",
            str(weights),
            str(native),
            "--window",
            str(WINDOW),
            "--hop",
            str(HOP),
            "--output",
            "probabilities",
            "--classes",
            ",".join(CLASSES),
            "--input-mean",
            ",".join(map(str, mean)),
            "--input-std",
            ",".join(map(str, std)),
            "--sample-rate",
            str(RATE),
        ]
        print("streamlstm " + " ".join(c if "/" not in c else Path(c).name for c in command))
        if cli(command) != 0:
            return 1
        model = streamlstm.load(native)
    print(f"model: {model.window.describe()}")

    ours = streamlstm.windows.evaluate_windows(model, test_set[0]).argmax(axis=1)
    print(
        f"test windows, accuracy (recall per class):\n  SimpleLSTM       "
        f"{recalls(ours, test_set[1])}\n  RMS+kurtosis NC  "
        f"{recalls(centroid_baseline(train_set, test_set), test_set[1])}"
    )

    # The held-out splice, streamed as one sensor in 10 ms micro-batches.
    order = ["normal", "inner", "normal", "ball", "outer"]
    normal_test = data["normal"][2]
    half = len(normal_test) // 2
    pieces = {"normal": [normal_test[:half], normal_test[half:]]}
    stream = []
    for name in order:
        stream.append(pieces["normal"].pop(0) if name == "normal" else data[name][2])
    boundaries = np.cumsum([0] + [len(p) for p in stream]) / RATE
    samples = np.concatenate(stream)
    times = np.arange(len(samples)) / RATE
    print(
        "splice: "
        + ", ".join(
            f"{name} {a:.2f}-{b:.2f} s"
            for name, a, b in zip(order, boundaries[:-1], boundaries[1:], strict=True)
        )
    )
    detector = WindowDetector(
        model,
        normal_class="normal",
        min_probability=args.min_probability,
        consecutive=args.consecutive,
    )
    events = []
    for start in range(0, len(samples), 120):
        events += detector.update(
            ["bearing"] * len(samples[start : start + 120]),
            samples[start : start + 120],
            times[start : start + 120],
        )
    for e in events:
        print(f"  t={e.t:6.3f} s  {e.kind:<5}  {e.label:<6}  p={e.score:.3f}")
    normal_spans = [
        (boundaries[i], boundaries[i + 1]) for i, n in enumerate(order) if n == "normal"
    ]
    false_alarms = sum(
        1 for e in events if e.kind == "start" and any(a <= e.t < b for a, b in normal_spans)
    )
    normal_seconds = sum(b - a for a, b in normal_spans)
    print(
        f"false alarms on the normal stretches: {false_alarms} in {normal_seconds:.2f} s "
        f"(min_probability {args.min_probability}, consecutive {args.consecutive})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
