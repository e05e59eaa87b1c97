import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemon_helpers import make_model
from fleet_helpers import Fleet, fleet_signals
from mqtt_helpers import Broker


@pytest.fixture
def broker(tmp_path):
    folder = tmp_path / "broker"
    folder.mkdir()
    running = Broker(folder)
    running.start()
    yield running
    running.stop()


# -- fleet scenarios (issue 14; modules with a model_path of their own override it) ----------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "model.npz")


@pytest.fixture(scope="module")
def signals():
    return fleet_signals()


@pytest.fixture
def fleet(tmp_path, model_path):
    """``fleet(**site)``: a nats-server (and workers started later), closed after the test."""
    made: list[Fleet] = []

    def make(**site: object) -> Fleet:
        made.append(Fleet(tmp_path, model_path, **site))
        return made[-1]

    yield make
    for one in made:
        one.close()
