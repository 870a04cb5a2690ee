"""Old name of :mod:`glta_hf.training_args` (kept so existing imports work)."""
from .training_args import GLTAModelArguments, GLTATrainingArguments, SAMPLING_STRATEGIES, sampling_strategy  # noqa: F401
