"""Old name of :mod:`glta_hf.trainer` (kept so existing imports work); the evaluation helpers live in
:mod:`glta_hf.metrics`."""
from .metrics import evaluate_model, sample_eval_users, usable_ks  # noqa: F401
from .trainer import GLTATrainer  # noqa: F401
