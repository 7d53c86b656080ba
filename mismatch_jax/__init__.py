"""mismatch_jax: a JAX experiment engine for objective mismatch in model-based RL."""

__version__ = "0.1.0"
