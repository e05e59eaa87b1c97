"""``streamlstm check-config``: validate a site config (and load its model) without starting."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError, SourceError
from . import config as config_module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="SITE.toml", help="the site configuration to check")


def run(args: argparse.Namespace) -> int:
    from .engine import build_sources
    from .pipeline import load_model, make_detector, sample_width

    try:
        config = config_module.load(args.config)
        loaded = load_model(config["model"]["path"])
        pipeline = make_detector(loaded.model, config["detector"])
        build_sources(
            config, sample_width(pipeline, loaded.model)
        )  # opens recordings, not ports or brokers
    except (ConfigError, SourceError) as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    print(
        f"{args.config}: OK ({len(config['sources'])} source(s), {len(config['sinks'])} sink(s), "
        f"model {loaded.model_id} from {loaded.path}, sha256 {loaded.sha256[:12]})"
    )
    return 0
