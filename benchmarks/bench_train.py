"""Wall time of :func:`streamlstm.train.train` on 400 rows x 8 channels (the issue's case).

    PYTHONPATH=. python benchmarks/bench_train.py [--repeat 3] [--threads 1]

Synthetic normal data (8 sines of different periods plus noise, 1 Hz); the first run
also compiles the detector's kernels, so the figure is the best of the later runs.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from streamlstm.train import train


def rows(count: int = 400, width: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(count)[:, None]
    return np.sin(2 * np.pi * t / (20 + 7 * np.arange(width))) + 0.1 * rng.normal(
        size=(count, width)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    data = rows()
    times = []
    for _ in range(args.repeat + 1):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 400 rows cannot support 1 false alarm/day
            result = train(data, sample_rate=1.0, threads=args.threads, progress=False)
        times.append(time.perf_counter() - started)
    print(
        f"train() on 400 x 8: best {min(times[1:]):.2f} s, runs "
        f"{', '.join(f'{t:.2f}' for t in times)} s (first compiles); epochs "
        f"{result.epochs}, folds' best {result.best_epochs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
