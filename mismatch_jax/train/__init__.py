"""mismatch_jax.train"""
