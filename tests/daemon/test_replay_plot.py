"""The replay plot's legend names the signal's channels."""

from __future__ import annotations

import streamlstm as sl
from streamlstm.daemon.pipeline import default_model_path
from streamlstm.daemon.plot import legend_names, sample_channels


def test_the_default_feature_model_names_its_raw_axes():
    """Its own channels name features (x.log_std, ...); the plot shows raw x, y, z."""
    model = sl.load(default_model_path())
    assert model.channels[0] == "x.log_std"
    assert sample_channels(model) == ("x", "y", "z")


def test_a_plain_model_lends_its_channel_names():
    model = sl.random_model(2, [4], output_size=2, seed=0).replace(channels=("p", "q"))
    assert sample_channels(model) == ("p", "q")
    assert legend_names(sample_channels(model), 2) == ["p", "q"]


def test_unnamed_or_mismatched_channels_get_readable_defaults():
    assert legend_names((), 3) == ["x", "y", "z"]
    assert legend_names(("a", "b"), 3) == ["x", "y", "z"]
    assert legend_names((), 2) == ["channel 0", "channel 1"]
