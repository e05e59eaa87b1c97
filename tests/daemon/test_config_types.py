"""The validated site config is typed and frozen; sources and sinks build from their
sections (``from_config``) or from keywords, and both give the same settings back."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
from mqtt_helpers import free_port

from streamlstm.daemon.config import (
    SINK_KINDS,
    SOURCE_KINDS,
    DetectorConfig,
    SiteConfig,
    TLSConfig,
    keys,
    load,
    section_values,
    validate,
)
from streamlstm.errors import ConfigError
from streamlstm.sinks.jsonl import JSONLSink
from streamlstm.sinks.mqtt import MQTTSink
from streamlstm.sinks.stdout import StdoutSink
from streamlstm.sources.demo import DemoSource
from streamlstm.sources.mqtt import MQTTSource
from streamlstm.sources.replay import ReplaySource
from streamlstm.sources.serial import SerialSource

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
EXAMPLES = [CONTRIB / "site.example.toml", CONTRIB / "fleet" / "worker.example.toml"]


def test_the_config_and_every_section_are_frozen():
    config = validate(
        {
            "detector": {"options": {"threshold": 5.0}},
            "sources": [{"type": "serial", "port": "/dev/x", "columns": [1, 2], "sensor": "a"}],
        }
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.daemon = config.daemon  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.daemon.queue_frames = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sources[0].baud = 9600  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.detector.options["threshold"] = 1.0  # type: ignore[index]
    assert config.sources[0].columns == (1, 2)  # arrays become tuples
    assert dict(config.detector.options) == {"threshold": 5.0}


def test_the_options_table_is_a_copy_of_what_was_given():
    options = {"threshold": 5.0}
    config = validate({"detector": {"options": options}})
    options["threshold"] = 1.0
    assert config.detector.options["threshold"] == 5.0


def test_the_validation_schema_is_the_dataclass_fields():
    for kind in (*SOURCE_KINDS.values(), *SINK_KINDS.values()):
        names = [f.name for f in dataclasses.fields(kind)]
        assert names[0] == "name" and list(keys(kind)) == names[1:]
    assert list(keys(DetectorConfig)) == [f.name for f in dataclasses.fields(DetectorConfig)]


def _sections_of(config: SiteConfig, raw: dict) -> list[tuple[str, object, dict]]:
    """(path, typed section, TOML table) for every table of a parsed file."""
    out: list[tuple[str, object, dict]] = []
    for name in ("daemon", "model", "detector", "mqtt", "fleet"):
        if name in raw:
            out.append((name, getattr(config, name), raw[name]))
    for name in ("sources", "sinks"):
        for index, table in enumerate(raw.get(name, [])):
            out.append((f"{name}[{index}]", getattr(config, name)[index], table))
    return out


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_key_of_the_examples_is_a_field_with_the_files_value(example):
    config = load(example)
    raw = tomllib.loads(example.read_text())
    checked = 0
    for path, section, table in _sections_of(config, raw):
        for key, value in table.items():
            if key == "type":
                assert section.kind == value, path  # type: ignore[attr-defined]
                continue
            assert hasattr(section, key), f"{path}.{key} is no field of {type(section).__name__}"
            got = getattr(section, key)
            if isinstance(value, list):
                value = tuple(value)
            elif isinstance(value, dict):
                got = dict(got)
            assert got == value, f"{path}.{key}"
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_keys_commented_out_in_the_examples_are_fields_too(example):
    config = load(example)
    section: object = None
    entries = {"sources": -1, "sinks": -1}
    found = []
    for line in example.read_text().splitlines():
        header = re.match(r"#?\s*\[(\[?)([\w.]+)\]", line)
        if header:
            name = header.group(2)
            if name in entries:
                entries[name] += 1
                section = getattr(config, name)[entries[name]]
            elif name == "mqtt.tls":
                section = TLSConfig
            elif name == "detector.options":
                section = None  # free-form: the detector's keyword overrides
            else:
                section = getattr(config, name)
            continue
        commented = re.match(r"#\s*(\w+)\s*=", line)
        if commented and section is not None:
            field_names = {f.name for f in dataclasses.fields(section)}  # type: ignore[arg-type]
            assert commented.group(1) in field_names, line
            found.append(commented.group(1))
    assert found  # each example documents some optional keys in comments


BROKER = {"host": "127.0.0.1", "port": 1883, "client_id": "t-types", "keepalive_s": 5}


SOURCE_TABLES = {
    "serial": {
        "port": "/dev/ttyUSB9",
        "baud": 9600,
        "bytesize": 7,
        "parity": "even",
        "stopbits": 2,
        "format": "tsv",
        "sensor": "bench",
        "max_line": 512,
        "reopen_min_s": 0.25,
        "reopen_max_s": 4.0,
        "columns": [3, 1, 2],
        "time_column": 0,
        "sensor_column": 4,
    },
    "mqtt": {
        "topic": "plant/{sensor}/acc",
        "payload": "csv",
        "qos": 1,
        "rate": 200.0,
        "max_samples": 99,
        "ack": "after-step",
        "receive_maximum": 7,
        "columns": [1, 2, 3],
        "time_column": 0,
        "sensor_column": 5,
    },
    "replay": {
        "sensor": "rec",
        "speed": 2.5,
        "rate": 50.0,
        "block": 17,
        "plot": "replay.png",
        "progress": False,
        "columns": [0, 2, 1],
        "time_column": 3,
        "sensor_column": 4,
    },
    "demo": {"speed": 3.0, "block": 33, "progress": True},
}


def _source_section(kind: str, tmp_path: Path):
    table = {"type": kind, "name": f"my-{kind}", **SOURCE_TABLES[kind]}
    if kind == "replay":
        recording = tmp_path / "rec.csv"
        recording.write_text("".join(f"{i},{i},{i},{i / 50},s\n" for i in range(10)))
        table["path"] = str(recording)
    section = validate({"mqtt": BROKER, "sources": [table]}, base=tmp_path)
    return section, section.sources[0]


@pytest.mark.parametrize("kind", list(SOURCE_KINDS))
def test_every_source_kind_round_trips_through_from_config(kind, tmp_path):
    config, section = _source_section(kind, tmp_path)
    # Every key but qos (1 for acks after the step) differs from its default, so a key that
    # from_config dropped would show below.
    defaults = keys(type(section))
    same = [k for k, v in SOURCE_TABLES[kind].items() if defaults[k].default == v]
    assert same == (["qos"] if kind == "mqtt" else [])
    built = {
        "serial": lambda: SerialSource.from_config(section, 3),
        "mqtt": lambda: MQTTSource.from_config(section, 3, config.mqtt, 50.0),
        "replay": lambda: ReplaySource.from_config(section, 3),
        "demo": lambda: DemoSource.from_demo_config(section, 3),
    }[kind]()
    assert built.name == f"my-{kind}"
    values = section_values(section)
    assert {k: getattr(built.settings, k) for k in values} == values
    if kind != "demo":
        assert built.settings == section
    # The same source from keywords (no config at all); positional arguments are refused.
    cls = type(built)
    extra = {"broker": config.mqtt} if kind == "mqtt" else {}
    assert cls(width=3, **extra, **values).settings == built.settings
    with pytest.raises(TypeError):
        cls(section, 3)


def test_a_source_built_from_keywords_alone_has_the_configs_defaults(tmp_path):
    source = SerialSource(port="/dev/ttyUSB0", width=3, columns=(1, 2, 3), sensor="s")
    table = {"type": "serial", "port": "/dev/ttyUSB0", "columns": [1, 2, 3], "sensor": "s"}
    assert source.settings == dataclasses.replace(
        validate({"sources": [table]}).sources[0], name="serial"
    )
    mqtt = MQTTSource(topic="s/{sensor}", width=3)
    assert mqtt.broker == validate({}).mqtt  # localhost:1883, as [mqtt] defaults to


def test_sources_and_sinks_built_in_code_get_the_configs_checks():
    """A keyword constructor checks its settings as validate checks a table: each value
    (type and rule), then across values, every problem named in one ConfigError."""
    port = {"port": "/dev/ttyUSB0", "width": 3}
    with pytest.raises(ConfigError, match=r"serial 'serial'\.columns: required for CSV"):
        SerialSource(**port, sensor="s")
    with pytest.raises(ConfigError, match=r"serial 'bench'\.sensor: set 'sensor'"):
        SerialSource(**port, columns=(1, 2, 3), name="bench")
    with pytest.raises(ConfigError) as caught:
        SerialSource(**port, columns=(1, 2, 3), sensor="s", baud=-1, parity="maybe")
    assert "serial 'serial'.baud: must be > 0, got -1" in str(caught.value)
    assert "serial 'serial'.parity: must be one of" in str(caught.value)
    with pytest.raises(ConfigError, match=r"\.baud: expected an integer, got 'fast'"):
        SerialSource(**port, columns=(1, 2, 3), sensor="s", baud="fast")
    with pytest.raises(ConfigError, match=r"\.reopen_max_s: must be >= reopen_min_s"):
        SerialSource(**port, columns=(1,), sensor="s", reopen_min_s=5.0, reopen_max_s=1.0)
    with pytest.raises(ConfigError, match=r"mqtt 'mqtt'\.topic: must contain '\{sensor\}'"):
        MQTTSource(topic="sensors/all", width=3)
    with pytest.raises(ConfigError, match=r"\.columns: required for CSV"):
        MQTTSource(topic="s/{sensor}", width=3, payload="csv")
    with pytest.raises(ConfigError, match=r"\.ack: 'after-step' needs qos = 1"):
        MQTTSource(topic="s/{sensor}", width=3, ack="after-step", qos=0)
    with pytest.raises(ConfigError, match=r"mqtt 'mqtt'\.state_interval_s: must be > 0"):
        MQTTSink(broker=validate({}).mqtt, state_interval_s=0)
    with pytest.raises(ConfigError, match=r"jsonl 'jsonl'\.path: expected a string, got None"):
        JSONLSink(path=None)


SINK_TABLES = {
    "stdout": {"states": True},
    "jsonl": {"path": "alerts/a.jsonl", "fsync": True},
    "mqtt": {
        "alert_topic": "a/{sensor}/alert",
        "state_topic": "a/{sensor}/state",
        "status_topic": "a/status",
        "state_interval_s": 2.0,
        "spool_dir": "spool",
        "homeassistant": True,
        "discovery_prefix": "ha",
        "host": "127.0.0.1",
        "port": 0,  # replaced by a free port below
        "protocol": "3.1.1",
        "refused_retry_s": 5.0,
    },
}


@pytest.mark.parametrize("kind", list(SINK_KINDS))
def test_every_sink_kind_round_trips_through_from_config(kind, tmp_path):
    table = {"type": kind, "name": f"my-{kind}", **SINK_TABLES[kind]}
    if kind == "mqtt":
        table["port"] = free_port()  # nothing listens: the sink keeps retrying meanwhile
    config = validate({"mqtt": BROKER, "sinks": [table]}, base=tmp_path)
    section = config.sinks[0]
    defaults = keys(type(section))
    assert all(defaults[k].default != table[k] for k in SINK_TABLES[kind])
    if kind == "stdout":
        built = StdoutSink.from_config(section)
        again = StdoutSink(**section_values(section))
    elif kind == "jsonl":
        built = JSONLSink.from_config(section)
        again = JSONLSink(**section_values(section))
    else:
        built = MQTTSink.from_config(section, config.mqtt)
        again = MQTTSink(broker=config.mqtt, **section_values(section))
        # the sink's own host/port replace [mqtt]'s address, nothing else
        assert built.broker == dataclasses.replace(
            config.mqtt, host="127.0.0.1", port=table["port"]
        )
    try:
        assert built.settings == section and again.settings == section
        with pytest.raises(TypeError):
            type(built)(section)
    finally:
        for sink in (built, again):
            if isinstance(sink, MQTTSink):
                sink.close(timeout=0.1)
            else:
                sink.close()


def test_a_stdout_sink_from_its_config_writes_states_when_asked(capsys):
    from streamlstm.sinks import SensorState

    section = validate({"sinks": [{"type": "stdout", "states": True}]}).sinks[0]
    state = SensorState("s1", t=1.0, score=0.5, samples=10)
    StdoutSink.from_config(section).states({"s1": state})
    assert capsys.readouterr().out == "state s1: score 0.5, ok, 10 samples, 0 rejected\n"
    StdoutSink().states({"s1": state})  # states = false, the default
    assert capsys.readouterr().out == ""
