"""MuJoCo MJX, imported with its import-time notices sent to stderr.

``mujoco.mjx`` prints "Failed to import warp: ..." on *stdout* whenever the optional NVIDIA Warp
backend is missing (always, on CPU); on stdout those lines would corrupt the JSON that the
benchmarks and commands print. Import ``mjx`` from here (brax imports it too, so the brax adapter
imports this module first).
"""

import contextlib
import sys

with contextlib.redirect_stdout(sys.stderr):
    from mujoco import mjx

__all__ = ["mjx"]
