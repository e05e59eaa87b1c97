"""Site configs: the example passes, every mistake is refused with its path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamlstm.cli import check_config as check
from streamlstm.daemon.config import load, validate
from streamlstm.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "site.example.toml"


def test_example_config_is_valid_and_complete():
    config = load(EXAMPLE)
    assert [s.kind for s in config.sources] == ["mqtt", "serial"]
    assert [s.kind for s in config.sinks] == ["mqtt", "jsonl"]
    assert config.daemon.backpressure == "drop-oldest"
    assert config.sources[0].topic == "sensors/{sensor}/accel"


def test_no_config_is_the_demo():
    config = load(None)
    assert [s.kind for s in config.sources] == ["demo"]
    assert [s.kind for s in config.sinks] == ["stdout"]
    assert config.daemon.snapshot_path is None


@pytest.mark.parametrize(
    ("raw", "messages"),
    [
        (
            {"daemon": {"queue_frame": 10}},
            ["daemon.queue_frame: unknown key (did you mean 'queue_frames'?)"],
        ),
        ({"deamon": {}}, ["deamon: unknown section"]),
        (
            {"daemon": {"backpressure": "drop"}},
            ["daemon.backpressure: must be one of 'drop-oldest', 'block'"],
        ),
        ({"daemon": {"queue_frames": 0}}, ["daemon.queue_frames: must be >= 1, got 0"]),
        ({"daemon": {"metrics_port": 70000}}, ["daemon.metrics_port: must be a port number"]),
        ({"mqtt": {"port": True}}, ["mqtt.port: expected an integer, got True"]),
        (
            {"mqtt": {"password_file": "a", "password_env": "B"}},
            ["mqtt.password_env: give password_file"],
        ),
        ({"mqtt": {"tls": {"ca": "x"}}}, ["mqtt.tls.ca: unknown key"]),
        (
            {"sources": [{"type": "serial", "baud": "fast", "columns": [1]}]},
            [
                "sources[0].port: missing (required)",
                "sources[0].baud: expected an integer, got 'fast'",
                "sources[0].sensor: set 'sensor'",
            ],
        ),
        (
            {"sources": [{"type": "serial", "port": "/dev/x", "sensor": "a"}]},
            ["sources[0].columns: required for CSV/TSV input"],
        ),
        (
            {"sources": [{"type": "serial", "port": "/dev/x", "sensor": "a", "columns": [-1]}]},
            ["sources[0].columns: must be a non-empty list"],
        ),
        (
            {
                "sources": [
                    {"type": "serial", "port": "/dev/x", "format": "json", "parity": "weird"}
                ]
            },
            ["sources[0].parity: must be one of"],
        ),
        (
            {"sources": [{"type": "mqtt", "topic": "sensors/+/accel"}]},
            ["sources[0].topic: must contain '{sensor}' exactly once"],
        ),
        (
            {"sources": [{"type": "mqtt", "topic": "a/{sensor}", "qos": 3}]},
            ["sources[0].qos: must be one of"],
        ),
        ({"sources": [{"type": "webcam"}]}, ["sources[0].type: must be one of"]),
        (
            {"sources": [{"type": "demo", "name": "a"}, {"type": "demo", "name": "a"}]},
            ["sources: name 'a' is used more than once"],
        ),
        ({"sources": []}, ["sources: at least one source is needed"]),
        ({"sources": {"type": "demo"}}, ["sources: expected an array of tables"]),
        ({"sinks": [{"type": "jsonl"}]}, ["sinks[0].path: missing (required)"]),
        (
            {"sinks": [{"type": "mqtt", "alert_topic": "alerts"}]},
            ["sinks[0].alert_topic: must contain"],
        ),
        ({"sinks": [{"type": "mqtt"}, {"type": "mqtt"}]}, ["sinks: at most one mqtt sink"]),
    ],
)
def test_invalid_configs_are_refused_with_path_specific_messages(raw, messages):
    with pytest.raises(ConfigError) as info:
        validate(raw)
    for message in messages:
        assert message in str(info.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        validate(
            {"daemon": {"log_level": "loud", "batch_wait_ms": -1}, "sinks": [{"type": "jsonl"}]}
        )
    assert str(info.value).count("\n") == 3


def test_file_errors_name_the_file(tmp_path):
    broken = tmp_path / "site.toml"
    broken.write_text("[daemon\nqueue_frames = 1\n")
    with pytest.raises(ConfigError, match=r"site.toml: not valid TOML"):
        load(broken)
    with pytest.raises(ConfigError, match=r"missing.toml: cannot read"):
        load(tmp_path / "missing.toml")


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(
        '[daemon]\nsnapshot_path = "state/s.npz"\n[[sinks]]\ntype = "jsonl"\npath = "a.jsonl"\n'
    )
    config = load(site)
    assert config.daemon.snapshot_path == str(tmp_path / "state" / "s.npz")
    assert config.sinks[0].path == str(tmp_path / "a.jsonl")


def test_check_config_command_refuses_an_invalid_file(tmp_path, capsys):
    site = tmp_path / "site.toml"
    site.write_text('[[sources]]\ntype = "serial"\nport = "/dev/ttyUSB0"\nbaud = "fast"\n')
    parser = __import__("argparse").ArgumentParser()
    check.add_arguments(parser)
    assert check.run(parser.parse_args([str(site)])) == 2
    err = capsys.readouterr().err
    assert "sources[0].baud: expected an integer, got 'fast'" in err
    assert "sources[0].columns: required" in err


def _check(site: Path, *options: str) -> int:
    parser = __import__("argparse").ArgumentParser()
    check.add_arguments(parser)
    return check.run(parser.parse_args([str(site), *options]))


def test_check_config_refuses_a_serial_port_that_does_not_exist(tmp_path, capsys):
    """The README's placeholder port fails; a real (pty) port passes; the option for a
    daemon started before its device is plugged in turns the failure into a warning."""
    leader, follower = os.openpty()
    try:
        site = tmp_path / "site.toml"
        sources = ""
        for port in ("/dev/serial/by-id/usb-...", os.ttyname(follower)):
            sources += (
                f'[[sources]]\ntype = "serial"\nport = "{port}"\ncolumns = [1, 2, 3]\n'
                f'time_column = 0\nsensor = "s{len(sources)}"\n'
            )
        site.write_text(sources)
        assert _check(site) == 2
        err = capsys.readouterr().err
        assert "error: sources[0].port: '/dev/serial/by-id/usb-...' does not exist" in err
        assert "sources[1]" not in err and "--allow-missing-devices" in err
        assert _check(site, "--allow-missing-devices") == 0
        done = capsys.readouterr()
        assert "warning: sources[0].port" in done.err and ": OK (2 source(s)" in done.out
    finally:
        os.close(leader)
        os.close(follower)
