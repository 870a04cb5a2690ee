"""glta-hf: Graph-Language Token Alignment (Yang et al., WWW Companion 2025) for Hugging Face.

Importing the package registers ``GLTAConfig`` / ``GLTAForRecommendation`` with transformers' Auto classes, and
marks them for remote code: ``save_pretrained`` writes ``configuration_glta.py`` / ``modeling_glta.py`` (and
their sibling modules) plus ``auto_map``, so a saved folder loads with ``trust_remote_code=True`` without glta-hf.
"""
__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel

from .configuration_glta import GLTAConfig
from .errors import CheckpointError, DataFormatError, DatasetOptionError, GLTAError, TrainingError, UnknownIdError  # noqa: F401
from .modeling_glta import GLTAForRecommendation, GLTAOutput, GLTAPreTrainedModel  # noqa: F401

AutoConfig.register("glta", GLTAConfig, exist_ok=True)
AutoModel.register(GLTAConfig, GLTAForRecommendation, exist_ok=True)
GLTAConfig.register_for_auto_class()
GLTAForRecommendation.register_for_auto_class("AutoModel")
