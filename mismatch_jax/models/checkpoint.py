"""Saving and loading one dynamics model with orbax-checkpoint.

A saved model is a directory: ``model.json`` (format tag, the ``ModelConfig``, free metadata such
as where the model came from) and ``state/``, an orbax checkpoint of ``{"params": ModelParams,
"normalizer": Normalizer}``. Orbax writes the state to a temporary directory and renames it once
complete, and ``model.json`` is written atomically after it, so a directory with a ``model.json``
always holds a whole model. Loading restores against the shapes its config implies, so a file that
does not match its config is refused with the key named rather than half-loaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import jax

from mismatch_jax.errors import InputError
from mismatch_jax.files import write_json
from mismatch_jax.models import core as models

FORMAT = "mismatch_jax.model/2"


def save_model(path, model_config: models.ModelConfig, params: models.ModelParams,
               normalizer: models.Normalizer, meta: Optional[dict] = None) -> Path:
    """Writes one model (unbatched params / normalizer) and its config into directory ``path``
    (replacing a model saved there before). ``meta``: JSON-serialisable extras."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.json").unlink(missing_ok=True)  # the directory is a whole model only once it is back
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / "state", {"params": params, "normalizer": normalizer}, force=True)
    checkpointer.wait_until_finished()
    write_json(path / "model.json", {"format": FORMAT, "model_config": dataclasses.asdict(model_config),
                                     "meta": meta or {}})
    return path


def load_model(path) -> tuple[models.ModelConfig, models.ModelParams, models.Normalizer]:
    """Reads a model written by ``save_model`` → (ModelConfig, ModelParams, Normalizer); raises
    ``InputError`` (naming ``model_path``) if ``path`` is not such a model or its arrays do not
    match its config."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    header_path = path / "model.json"
    if not header_path.is_file():
        raise InputError(f"model_path: {str(path)!r} is not a saved model (no model.json; write one "
                         "with mismatch_jax.models.checkpoint.save_model)")
    header = json.loads(header_path.read_text())
    if header.get("format") != FORMAT:
        raise InputError(f"model_path: {path} has format {header.get('format')!r}, expected {FORMAT!r}")
    config = dict(header["model_config"])
    config["angle_dims"] = tuple(config.get("angle_dims", ()))
    model_config = models.ModelConfig(**config)
    target = jax.eval_shape(lambda: {"params": models.init(jax.random.key(0), model_config),
                                     "normalizer": models.identity_normalizer(model_config)})
    checkpointer = ocp.StandardCheckpointer()
    try:
        stored = checkpointer.metadata(path / "state").item_metadata.tree
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise InputError(f"model_path: {path}: no readable state/ checkpoint ({type(exc).__name__})") from None
    shapes = lambda tree: [tuple(leaf.shape) for leaf in jax.tree.leaves(tree)]
    if shapes(stored) != shapes(target):
        raise InputError(f"model_path: {path}: the saved arrays do not match its model config "
                         f"(shapes {shapes(stored)} vs {shapes(target)})")
    state = checkpointer.restore(path / "state", target)
    return model_config, state["params"], state["normalizer"]
