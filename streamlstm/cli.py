"""The ``streamlstm`` command: one subcommand per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module that implements it, one-line help). Each module provides
#: ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("streamlstm.daemon.cli", "run the daemon (no config: the built-in demo)"),
    "check-config": ("streamlstm.daemon.check", "validate a site config and exit"),
    "step": ("streamlstm.step_cli", "load a model and step samples from a CSV or stdin"),
    "convert": ("streamlstm.formats.cli", "convert any supported weight file to native .npz"),
    "inspect": ("streamlstm.formats.inspect_cli", "describe a weight file"),
    "calibrate": ("streamlstm.detect.cli_calibrate", "calibrate a model on normal data"),
    "train": ("streamlstm.train.cli", "train a next-step predictor (needs the torch extra)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamlstm", description=__doc__)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"streamlstm {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # No subcommand (nothing, or options only) means ``run``: ``streamlstm --config x``.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]
    wanted = argv[0]
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                parser.exit(2, f"streamlstm {name}: not available in this build\n")
            module.add_arguments(sub)
            sub.set_defaults(handler=module.run)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
