"""``streamlstm check-config``: validate a site config (and load its model) without starting."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..daemon import config as config_module
from ..daemon.config import SerialSourceConfig, SourceConfig
from ..errors import ConfigError, SourceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="SITE.toml", help="the site configuration to check")
    parser.add_argument(
        "--allow-missing-devices",
        action="store_true",
        help="a serial port that does not exist yet is a warning, not an error (for a "
        "daemon started before its USB device is plugged in: it keeps reopening the "
        "port, reopen_min_s..reopen_max_s apart)",
    )


def missing_serial_ports(sources: Sequence[SourceConfig]) -> list[str]:
    """One message per serial source whose ``port`` names no existing device file."""
    return [
        f"sources[{index}].port: {source.port!r} does not exist (no such device: "
        "fix the path, e.g. one from `ls /dev/serial/by-id/`, or plug the device in)"
        for index, source in enumerate(sources)
        if isinstance(source, SerialSourceConfig) and not os.path.exists(source.port)
    ]


def run(args: argparse.Namespace) -> int:
    from ..daemon.pipeline import load_model, make_detector, sample_width
    from ..daemon.registry import build_sources

    try:
        config = config_module.load(args.config)
        loaded = load_model(config.model.path)
        pipeline = make_detector(loaded.model, config.detector)
        build_sources(
            config, sample_width(pipeline, loaded.model)
        )  # opens recordings, not ports or brokers
    except (ConfigError, SourceError) as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    missing = missing_serial_ports(config.sources)
    for problem in missing:
        prefix = "warning" if args.allow_missing_devices else "error"
        print(f"{args.config}: {prefix}: {problem}", file=sys.stderr)
    if missing and not args.allow_missing_devices:
        print(
            f"{args.config}: {len(missing)} serial port(s) missing; pass "
            "--allow-missing-devices if the daemon should start without them",
            file=sys.stderr,
        )
        return 2
    print(
        f"{args.config}: OK ({len(config.sources)} source(s), {len(config.sinks)} sink(s), "
        f"model {loaded.model_id} from {loaded.path}, sha256 {loaded.sha256[:12]})"
    )
    return 0
