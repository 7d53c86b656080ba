"""Strict config loading: unknown keys, wrong types and impossible values name the key."""

import dataclasses
from typing import Literal, Optional

import pytest

from mismatch_jax.config_io import ConfigError, from_dict, load_toml, to_dict

pytestmark = pytest.mark.unit  # every test here is in the fast tier


@dataclasses.dataclass(frozen=True)
class Inner:
    population_size: int = 10
    alpha: float = 0.1

    def __post_init__(self):
        if self.population_size < 1:
            raise ValueError(f"population_size must be >= 1, got {self.population_size}")


@dataclasses.dataclass(frozen=True)
class Outer:
    env: str
    kinds: tuple[str, ...] = ("P",)
    mode: Literal["a", "b"] = "a"
    patience: Optional[int] = None
    inner: Inner = Inner()


def test_defaults_and_nesting():
    cfg = from_dict(Outer, {"env": "x", "kinds": ["P", "D"], "inner": {"alpha": 1}})
    assert cfg == Outer(env="x", kinds=("P", "D"), inner=Inner(alpha=1.0))
    assert isinstance(cfg.inner.alpha, float)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"env": "x", "envv": 1}, "unknown key envv"),
        ({"env": "x", "inner": {"populaton_size": 3}}, "inner.populaton_size"),
        ({"env": 3}, "env: expected a string"),
        ({"env": "x", "inner": {"population_size": "5"}}, "inner.population_size: expected an integer"),
        ({"env": "x", "inner": {"population_size": True}}, "expected an integer"),
        ({"env": "x", "mode": "c"}, "mode: must be one of"),
        ({"env": "x", "inner": {"population_size": -4}}, "inner: population_size must be >= 1"),
        ({}, "missing required key env"),
        ({"env": "x", "kinds": "P"}, "kinds: expected a list"),
    ],
)
def test_errors_name_the_key(data, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        from_dict(Outer, data)


def test_unknown_key_lists_allowed():
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"env": "x", "colour": 1})
    assert "allowed keys: env, inner, kinds, mode, patience" in str(info.value)


def test_load_toml_missing_and_bad(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(Outer, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("env = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(Outer, bad)
    good = tmp_path / "good.toml"
    good.write_text('env = "cartpole"\n[inner]\npopulation_size = 4\n')
    assert load_toml(Outer, good).inner.population_size == 4
