"""``streamlstm run``: the daemon. Without ``--config`` it replays the packaged demo
recording through the default model, prints the alerts, and exits when the recording ends."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from ..daemon import config as config_module
from ..errors import ConfigError, SinkError, SourceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        metavar="SITE.toml",
        help="site configuration (default: the built-in demo)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="overrides [daemon] log_level",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run(args: argparse.Namespace) -> int:
    from ..daemon.engine import Daemon  # heavy imports (numba) only once arguments are fine
    from ..daemon.pipeline import compile_kernels
    from .warmup import compile_interruptibly

    try:
        config = config_module.load(args.config)
    except ConfigError as exc:
        print(f"streamlstm run: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or (config.daemon.log_level if args.config else "warning"))
    if config.fleet is not None:  # one worker of a fleet on NATS JetStream
        try:
            from ..fleet.worker import run_worker
        except ModuleNotFoundError as exc:
            if exc.name != "nats":
                raise
            print(
                "streamlstm run: [fleet] needs nats-py (pip install 'streamlstm[fleet]')",
                file=sys.stderr,
            )
            return 2

        return run_worker(config)
    try:
        daemon = Daemon(config, config_path=args.config)
    except (ConfigError, SourceError, SinkError, OSError) as exc:
        print(f"streamlstm run: {exc}", file=sys.stderr)
        return 2
    if args.config is None:
        print(
            f"streamlstm demo: replaying the shipped fan recording (20 s normal, then 30 s "
            f"with its blade weights moved) through {daemon.loaded.model_id}; "
            "alerts follow",
            file=sys.stderr,
        )
    # Compile (or load) the kernels before taking over SIGINT: Ctrl-C still interrupts a
    # cold compile (exit 130), and the wait is announced.
    compile_interruptibly(
        lambda: compile_kernels(daemon.loaded.model, daemon.config),
        prefix="streamlstm run",
    )
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    code = daemon.run()
    if args.config is None:
        metrics = daemon.metrics
        starts = metrics.value("streamlstm_alerts_total", (("kind", "start"),))
        print(
            f"streamlstm demo: {metrics.value('streamlstm_samples_total'):.0f} samples, "
            f"{starts:.0f} alert(s); run with --config SITE.toml for your own sensors",
            file=sys.stderr,
        )
    return code
