"""Test-wide settings: shapes are contracts, so implicit rank promotion is an error."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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


def pytest_collection_modifyitems(config, items):
    """Moves the heaviest files to the front (a stable sort: the order inside a file and among
    the other files is kept), so the workers' loads even out."""
    rank = {path: i for i, path in enumerate(_HEAVIEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
