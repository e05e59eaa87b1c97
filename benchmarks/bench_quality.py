"""Detection quality on five real datasets: the streamlstm recipe against simple baselines.

One command, every dataset, every method, in the same run::

    PYTHONPATH=. python benchmarks/bench_quality.py --part validation   # design choice
    PYTHONPATH=. python benchmarks/bench_quality.py --part test         # as it comes out
    [--datasets 3w tep nab fan cwru] [--designs delta level] [--json PATH]

Data are read in place from ``../shared/data`` (``STREAMLSTM_SHARED`` overrides). The
protocol (splits, metrics, baselines, the rule that picks a design) is in
``benchmarks/quality/`` and was fixed before any result was looked at; every design run
is recorded in ``benchmarks/quality/results-<part>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality import baselines, metrics, nab, protocol, recipe, tep, threew, vibration  # noqa: E402

LOADERS = {
    "3w": threew.load,
    "tep": tep.load,
    "nab": nab.load,
    "fan": vibration.load_fan,
    "cwru": vibration.load_cwru,
}


def run_method(make, dataset, part: str) -> dict[str, Any]:
    """Fit ``make(fit, period_s)`` per case and score its alarms on every stream."""
    results, streams, notes = [], {}, set()
    started = time.monotonic()
    for case in dataset.part(part):
        method = make(case.fit, dataset.period_s)
        notes.update(getattr(method, "warnings", ()))
        for stream in case.streams:
            alarm = (
                method.alarm(stream.x)
                if hasattr(method, "alarm")
                else baselines.baseline_alarm(method, stream.x)
            )
            result = metrics.score_stream(stream, alarm)
            results.append(result)
            streams[f"{case.name}/{stream.name}"] = metrics.per_stream(result, dataset.period_s)
    return {
        **metrics.summarise(results, dataset.period_s),
        "seconds": time.monotonic() - started,
        "warnings": sorted(notes),
        "streams": streams,
    }


def run(datasets: list[str], designs: list[str], part: str) -> dict[str, Any]:
    report: dict[str, Any] = {"part": part, "designs": designs, "datasets": {}}
    for name in datasets:
        dataset = LOADERS[name]()
        methods: dict[str, Any] = {}
        for design in designs:
            methods[f"lstm-{design}"] = run_method(
                lambda fit, period, d=design: recipe.LstmMethod(fit, period, d), dataset, part
            )
            print(f"{name} lstm-{design}: {_brief(methods[f'lstm-{design}'])}", file=sys.stderr)
        for kind in baselines.BASELINES:
            methods[kind.name] = run_method(lambda fit, period, k=kind: k(fit), dataset, part)
        report["datasets"][name] = methods
    if part == "validation" and len(designs) > 1:
        by_design = {d: {n: report["datasets"][n][f"lstm-{d}"] for n in datasets} for d in designs}
        report["chosen"], report["reason"] = protocol.choose(by_design)
    return report


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return format("-", ">" + pattern.split(".")[0]) if pattern[0].isdigit() else "-"
    return format(value, pattern)


def _brief(s: dict[str, Any]) -> str:
    return (
        f"NAB {_fmt(s['nab_standard'], '.1f')} FAR {_fmt(s['false_alarm_rate'], '.3f')} "
        f"missed {s['missed']}/{s['events']} F1 {_fmt(s['f1'], '.2f')}"
    )


def table(report: dict[str, Any]) -> str:
    lines = [
        f"part: {report['part']}",
        "dataset method                 NAB std  low-FP  low-FN   FAR    false  missed  "
        "delay med(s)     F1",
    ]
    for name, methods in report["datasets"].items():
        for method, s in methods.items():
            lines.append(
                f"{name:7} {method:22} {_fmt(s['nab_standard'], '7.1f')} "
                f"{_fmt(s['nab_low_fp'], '7.1f')} {_fmt(s['nab_low_fn'], '7.1f')} "
                f"{_fmt(s['false_alarm_rate'], '6.3f')} {s['false_alerts']:6d} "
                f"{s['missed']:3d}/{s['events']:<3d} {_fmt(s['delay_median_s'], '12.0f')} "
                f"{_fmt(s['f1'], '6.2f')}"
            )
    if "chosen" in report:
        lines.append(f"chosen: {report['chosen']} ({report['reason']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("validation", "test"), default="validation")
    parser.add_argument("--datasets", nargs="+", choices=list(LOADERS), default=list(LOADERS))
    parser.add_argument(
        "--designs", nargs="+", choices=list(recipe.DESIGNS), default=list(recipe.DESIGNS)
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="default: benchmarks/quality/results-<part>.json"
    )
    args = parser.parse_args(argv)
    report = run(args.datasets, args.designs, args.part)
    print(table(report))
    path = args.json or HERE / "quality" / f"results-{args.part}.json"
    path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
