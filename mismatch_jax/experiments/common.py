"""Helpers the experiment drivers share."""

from __future__ import annotations

import math


def json_safe(obj):
    """Nested dicts / lists / tuples with non-finite floats replaced by None (strict JSON has no
    NaN or inf); tuples become lists, everything else is returned as is."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
