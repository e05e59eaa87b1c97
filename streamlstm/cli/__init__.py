"""The ``streamlstm`` command line: one module of this package per subcommand, each imported
only when its subcommand runs (``fleet status`` lives with the fleet)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

DESCRIPTION = """\
Run LSTM/GRU networks one sample at a time on live sensor streams and raise calibrated,
debounced anomaly alerts."""

EPILOG = """\
examples:
  streamlstm run                               the demo: shipped model and recording, no broker
  streamlstm run --config site.toml            the daemon for your sensors
  streamlstm check-config site.toml            validate a site configuration
  streamlstm convert fan.pt fan.npz --sample-rate 200
  streamlstm inspect fan.npz
  streamlstm calibrate --model fan.npz --data normal.csv --out site.npz
  streamlstm warmup --config site.toml         compile the kernels ahead of the first run

exit codes: 0 success; 1 a runtime failure; 2 a usage error, a bad configuration or a file
that cannot be loaded (the reason is on stderr); 130 interrupted (Ctrl-C).
"""

#: subcommand -> (module that implements it, one-line help). Each module provides
#: ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("streamlstm.cli.run", "run the daemon (no config: the built-in demo)"),
    "check-config": ("streamlstm.cli.check_config", "validate a site config and exit"),
    "step": ("streamlstm.cli.step", "load a model and step samples from a CSV or stdin"),
    "convert": ("streamlstm.cli.convert", "convert any supported weight file to native .npz"),
    "inspect": ("streamlstm.cli.inspect", "describe a weight file"),
    "calibrate": ("streamlstm.cli.calibrate", "calibrate a model on normal data"),
    "train": ("streamlstm.cli.train", "train a next-step predictor (needs the torch extra)"),
    "warmup": ("streamlstm.cli.warmup", "compile the kernels now, into the on-disk cache"),
    "fleet": ("streamlstm.fleet.status", "inspect a fleet of workers on NATS (fleet status)"),
}


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="streamlstm",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamlstm {__version__}")
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Subcommand help: each option's default shown, descriptions and epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default in (None, False, argparse.SUPPRESS)
            or "default" in text
            or action.option_strings == []
            or (isinstance(default, list) and not default)
        ):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Options before any subcommand mean ``run``: ``streamlstm --config x``.
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run", *argv]
    wanted = argv[0] if argv else None
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(
            name, help=help_text, description=help_text, formatter_class=_HelpFormatter
        )
        if name == wanted:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                parser.exit(2, f"streamlstm {name}: not available in this build\n")
            module.add_arguments(sub)
            sub.set_defaults(handler=module.run)
    if wanted is None:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        # The reader went away (`streamlstm inspect x | head`): stop quietly, as filters do,
        # and keep the interpreter's final flush from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"streamlstm {wanted}: interrupted", file=sys.stderr)
        return 130
