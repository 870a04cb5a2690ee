"""glta-hf: Graph-Language Token Alignment (Yang et al., WWW Companion 2025) for Hugging Face.

The package imports lazily (transformers' ``_LazyModule`` idea, with a module ``__getattr__``): ``import glta_hf``
and the ``glta`` command load neither torch nor transformers until a model class is touched, so ``glta --help`` and
flag errors answer at once. ``glta_hf.GLTAConfig`` / ``glta_hf.GLTAForRecommendation`` (or importing
``glta_hf.configuration_glta`` / ``glta_hf.modeling_glta`` directly) register them with transformers' Auto classes
(``AutoConfig`` for model_type ``"glta"``, ``AutoModel`` -> ``GLTAModel``, ``glta_hf.AutoModelForRecommendation``
-> ``GLTAForRecommendation``) and mark them for remote code: ``save_pretrained`` writes
``configuration_glta.py`` / ``modeling_glta.py`` (and their sibling modules) plus ``auto_map``, so a saved folder
loads with ``trust_remote_code=True`` without glta-hf.
"""
from __future__ import annotations

import importlib
from typing import Any, List

from .errors import (  # noqa: F401  (light: the documented error types are importable at once)
    CheckpointError,
    DataFormatError,
    DatasetOptionError,
    GLTAError,
    InvalidArgumentError,
    OutputLockedError,
    OutputWriteError,
    TrainingError,
    UnknownIdError,
)

__version__ = "0.1.0"

#: public name -> submodule that defines it (imported on first access)
_LAZY_ATTRIBUTES = {
    "AutoModelForRecommendation": "auto",
    "GLTAConfig": "configuration_glta",
    "GLTAForRecommendation": "modeling_glta",
    "GLTAModel": "modeling_glta",
    "GLTAOutput": "modeling_glta",
    "GLTAPreTrainedModel": "modeling_glta",
}


def register_auto_classes() -> None:
    """Register GLTA with the Auto classes and for remote code (idempotent; imports the model): ``AutoConfig`` for
    model_type ``"glta"``, ``AutoModel`` -> the base model ``GLTAModel`` (as transformers maps ``LlavaConfig`` to
    ``LlavaModel``), ``AutoModelForRecommendation`` -> the task model ``GLTAForRecommendation``."""
    from transformers import AutoConfig, AutoModel

    from .auto import AutoModelForRecommendation
    from .configuration_glta import GLTAConfig
    from .modeling_glta import GLTAForRecommendation, GLTAModel

    AutoConfig.register("glta", GLTAConfig, exist_ok=True)
    AutoModel.register(GLTAConfig, GLTAModel, exist_ok=True)
    AutoModelForRecommendation.register(GLTAConfig, GLTAForRecommendation, exist_ok=True)
    GLTAConfig.register_for_auto_class()
    GLTAModel.register_for_auto_class("AutoModel")
    # register_for_auto_class accepts transformers' own auto classes only; this is the attribute it would set, so
    # save_pretrained writes auto_map["AutoModelForRecommendation"] as well
    GLTAForRecommendation._auto_class = AutoModelForRecommendation.__name__


def __getattr__(name: str) -> Any:
    module = _LAZY_ATTRIBUTES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))
