"""mismatch_jax.sweep"""
