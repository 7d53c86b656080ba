"""Test-wide settings: shapes are contracts, so implicit rank promotion is an error."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
