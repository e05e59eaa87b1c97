"""The ``streamlstm`` command line; each subcommand's module is imported only when used."""

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
    "run": ("streamlstm.daemon.cli", "run the daemon (no config: the built-in demo)"),
    "check-config": ("streamlstm.daemon.check", "validate a site config and exit"),
    "step": ("streamlstm.step_cli", "load a model and step samples from a CSV or stdin"),
    "convert": ("streamlstm.formats.cli", "convert any supported weight file to native .npz"),
    "inspect": ("streamlstm.formats.inspect_cli", "describe a weight file"),
    "calibrate": ("streamlstm.detect.cli_calibrate", "calibrate a model on normal data"),
    "train": ("streamlstm.train.cli", "train a next-step predictor (needs the torch extra)"),
    "warmup": ("streamlstm.warmup_cli", "compile the kernels now, into the on-disk cache"),
    "fleet": ("streamlstm.fleet.status", "inspect a fleet of workers on NATS (fleet status)"),
}


def _parser() -> argparse.ArgumentParser:
    from . import __version__

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


if __name__ == "__main__":
    sys.exit(main())
