"""Saving and loading one dynamics model (orbax checkpoint + model.json)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.errors import InputError
from mismatch_jax.models import core as models
from mismatch_jax.models.checkpoint import load_model, save_model


def _model():
    cfg = models.ModelConfig(kind="PE", obs_dim=4, action_dim=1, hidden_size=8, num_hidden_layers=1,
                             ensemble_size=2, angle_dims=(1,))
    params = models.init(jax.random.key(0), cfg)
    norm = models.Normalizer(input_mean=jnp.arange(6.0) * 0.1, input_std=jnp.ones(6) * 2.0,
                             target_mean=jnp.zeros(4), target_std=jnp.ones(4) * 0.05)
    return cfg, params, norm


def test_round_trip_is_exact_and_overwrites(tmp_path):
    cfg, params, norm = _model()
    save_model(tmp_path / "m", cfg, jax.tree.map(jnp.zeros_like, params), norm, {"note": "old"})
    path = save_model(tmp_path / "m", cfg, params, norm, {"note": "x"})
    cfg2, params2, norm2 = load_model(path)
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves((params, norm)), jax.tree.leaves((params2, norm2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((path / "model.json").read_text())["meta"] == {"note": "x"}


@pytest.mark.unit
def test_bad_paths_and_mismatched_configs_are_input_errors(tmp_path):
    cfg, params, norm = _model()
    with pytest.raises(InputError, match="model_path: .*no model.json"):
        load_model(tmp_path / "missing")
    path = save_model(tmp_path / "m", cfg, params, norm)
    header = json.loads((path / "model.json").read_text())
    header["model_config"]["hidden_size"] = 16
    (path / "model.json").write_text(json.dumps(header))
    with pytest.raises(InputError, match="do not match its model config"):
        load_model(path)
