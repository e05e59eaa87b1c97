"""The test setup itself: a missing broker fails the run instead of skipping silently."""

import mqtt_helpers
import pytest
from mqtt_helpers import Broker


def test_a_missing_mosquitto_fails_the_test(tmp_path, monkeypatch):
    monkeypatch.setattr(mqtt_helpers, "MOSQUITTO", str(tmp_path / "no-such-mosquitto"))
    monkeypatch.delenv("STREAMLSTM_TESTS_ALLOW_MISSING_TOOLS", raising=False)
    with pytest.raises(pytest.fail.Exception, match="mosquitto is not installed"):
        Broker(tmp_path)


def test_skipping_without_a_broker_needs_an_explicit_opt_out(tmp_path, monkeypatch):
    monkeypatch.setattr(mqtt_helpers, "MOSQUITTO", str(tmp_path / "no-such-mosquitto"))
    monkeypatch.setenv("STREAMLSTM_TESTS_ALLOW_MISSING_TOOLS", "1")
    with pytest.raises(pytest.skip.Exception):
        Broker(tmp_path)


def test_a_missing_nats_server_fails_the_test(tmp_path, monkeypatch):
    import nats_helpers

    monkeypatch.setattr(nats_helpers, "NATS_SERVER", str(tmp_path / "no-such-nats-server"))
    monkeypatch.delenv("STREAMLSTM_TESTS_ALLOW_MISSING_TOOLS", raising=False)
    with pytest.raises(pytest.fail.Exception, match="nats-server is not installed"):
        nats_helpers.NatsServer(tmp_path / "nats", 4)
