"""The packaged HRNet backbone (``posewarper_jax.weights``): its files are the ones its
provenance records (SHA-256), it fits the ``small`` model that ``configs/sparse.py:packaged``
builds and replaces pre-training there, and the variant refuses the models it does not fit."""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import pytest

from posewarper_jax import experiment, job, training, weights
from posewarper_jax.convert import load_converted

CONFIG_FILE = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "sparse.py")


def _get_config(arg):
    spec = importlib.util.spec_from_file_location("sparse_config_weights", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_packaged_files_match_their_recorded_digests():
    record = weights.provenance("hrnet_small_stills")
    assert record["variant"] == "small" and record["steps"] > 0
    assert "python -m posewarper_jax.main" in record["command"]
    assert weights.file_digests(weights.path("hrnet_small_stills")) == record["sha256"]
    with pytest.raises(ValueError, match="no packaged weights named 'w48'"):
        weights.path("w48")


def test_packaged_backbone_fits_the_small_model_and_replaces_pretraining():
    c = _get_config("packaged")
    assert c.model.pretrained == weights.path("hrnet_small_stills")
    s = experiment.settings(c)  # validates: model.pretrained exists
    assert not s.pretraining and not experiment.pretraining(c)
    model = experiment.make_model(s)
    init = training.init_variables(model, s.input.image_size, s.seed)
    loaded = job.load_pretrained(init, c.model.pretrained)
    stored, meta = load_converted(c.model.pretrained)
    assert meta["variant"] == "small"
    same = jax.tree.map(np.array_equal, loaded["params"]["backbone"], stored["params"])
    assert all(jax.tree.leaves(same))
    same = jax.tree.map(np.array_equal, loaded["batch_stats"]["backbone"], stored["batch_stats"])
    assert all(jax.tree.leaves(same))
    # The head keeps its initialisation: the checkpoint holds a backbone only.
    same = jax.tree.map(np.array_equal, loaded["params"]["head"], init["params"]["head"])
    assert all(jax.tree.leaves(same))


@pytest.mark.parametrize(
    "arg, what",
    [("packaged,runlocal", "HRNet 'tiny'"), ("packaged,backbone=w32", "HRNet 'w32'"),
     ("packaged,scratch", "scratch")],
)  # fmt: skip
def test_packaged_refuses_what_it_does_not_fit(arg, what):
    with pytest.raises(ValueError, match=f"packaged holds HRNet 'small' weights, not for {what}"):
        _get_config(arg)
