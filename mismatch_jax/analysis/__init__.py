"""mismatch_jax.analysis"""
