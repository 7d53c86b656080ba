"""mismatch_jax.planning"""
