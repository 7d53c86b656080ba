"""Counting JAX's compile work inside a block, for the no-retrace tests (importable as
``jit_counts``: pytest puts tests/ on sys.path for tests/conftest.py).

``with jit_work() as work:`` counts, through ``jax.monitoring``, every jaxpr trace ("trace"), every
lowering to MLIR ("lower") and every XLA backend compile ("compile") started inside the block,
whatever function they belong to. Pair it with the trainer test's Python trace counter (a list
appended to by the traced function): that one counts traces of one function, this one also sees
lowerings and compiles (a program re-lowered for new input shardings, say). Event names are JAX
internals: a test should check that the first call was seen (``work["trace"] >= 1``) so that a
renamed event cannot make "nothing happened" pass silently, and should build every argument
before the block (an eager op such as ``jnp.ones(2) + 1`` traces and compiles a small program too).
"""

import collections
import contextlib

import jax

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


@contextlib.contextmanager
def jit_work():
    """Yields a Counter {"trace" | "lower" | "compile": count} filled while the block runs."""
    counts = collections.Counter()

    def listener(event, duration, **kwargs):
        if event in EVENTS:
            counts[EVENTS[event]] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
