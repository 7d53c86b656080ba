"""mismatch_jax.agents"""
