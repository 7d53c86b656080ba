"""mismatch_jax.data"""
