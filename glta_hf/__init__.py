"""glta-hf: Graph-Language Token Alignment (Yang et al., WWW Companion 2025) for Hugging Face.

Importing the package registers ``GLTAConfig`` / ``GLTAForRecommendation`` with transformers' Auto classes.
"""
__version__ = "0.1.0"

from .errors import CheckpointError, DataFormatError, GLTAError, TrainingError, UnknownIdError  # noqa: F401

try:  # the model files arrive with the model issue; keep the data layer importable on its own
    from .configuration_glta import GLTAConfig  # noqa: F401
    from .modeling_glta import GLTAForRecommendation, GLTAPreTrainedModel  # noqa: F401
except ImportError as _err:  # pragma: no cover - only while the model files are missing
    if "configuration_glta" not in str(_err) and "modeling_glta" not in str(_err):
        raise
