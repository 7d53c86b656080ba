"""The one exception family that means "the user's input is wrong".

Everything a user controls — a config key or value, a ``--set`` override, a path, an output
directory, a model file — is checked before (or while) it is used, and a problem is raised as an
``InputError`` whose message names the field and the fix. The command line turns it into one line
on stderr and exit code 2; any other exception is an internal error (exit code 1, with traceback).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; the message names the offending key / path and how to fix it."""
