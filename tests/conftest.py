"""Test-wide settings: shapes are contracts, so implicit rank promotion is an error; one
persistent XLA compilation cache per test run."""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole run, in a fresh temporary directory: tests that
# build the same program anew (a new closure of the same config: another parametrisation, another
# test file, a CLI subprocess) load it instead of compiling it again. The controller process
# creates it before the xdist workers start; they and every subprocess inherit it through the
# environment (JAX reads JAX_* at import; the CLI's own cache, enable_compilation_cache, reads
# MISMATCH_JAX_CACHE), and the controller removes it at the end. Nothing is read from or left in
# the user's own cache.
_RUN_CACHE = "MISMATCH_JAX_TEST_RUN_CACHE"
_OWNS_CACHE = _RUN_CACHE not in os.environ
if _OWNS_CACHE:
    os.environ[_RUN_CACHE] = tempfile.mkdtemp(prefix="mismatch_jax_test_xla_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_RUN_CACHE]
os.environ["MISMATCH_JAX_CACHE"] = os.environ[_RUN_CACHE]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"  # small programs compile faster than they load
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


# The default tier runs on 2 xdist workers, one file per worker at a time (--dist loadfile), in
# collection order (--no-loadscope-reorder; xdist's own order is by test count, which put the
# 5-test, 75 s README file near the end). Of the ≈ 1030 s of test time, one worker carried ≈ 75 s
# more than the other. Longest files first (test time from `pytest --durations=0`):
_HEAVIEST_FILES = (
    "tests/sweep/test_runner.py",
    "tests/train/test_population.py",
    "tests/agents/test_sac.py",
    "tests/test_readme_commands.py",
    "tests/experiments/test_attack.py",
    "tests/planning/test_cem.py",
)


def pytest_unconfigure(config):
    if _OWNS_CACHE:
        shutil.rmtree(os.environ[_RUN_CACHE], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Moves the heaviest files to the front (a stable sort: the order inside a file and among
    the other files is kept), so the workers' loads even out."""
    rank = {path: i for i, path in enumerate(_HEAVIEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
