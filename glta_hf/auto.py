"""``AutoModelForRecommendation``: the auto class of GLTA's task model, next to ``AutoModel`` (the base model).

transformers has no auto class for recommendation, so this one is built the way transformers builds its own
(``_BaseAutoModelClass`` over a mapping that starts empty; :func:`glta_hf.register_auto_classes` registers
``GLTAConfig -> GLTAForRecommendation``). Like every auto class it reads ``config.auto_map`` under its own name, so a
saved folder's ``"AutoModelForRecommendation"`` entry also loads the folder's remote code
(``trust_remote_code=True``).
"""
from __future__ import annotations

from collections import OrderedDict

from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping


class AutoModelForRecommendation(_BaseAutoModelClass):
    """``AutoModelForRecommendation.from_pretrained(folder)`` -> the recommender of a GLTA checkpoint."""

    _model_mapping = _LazyAutoMapping(OrderedDict(), OrderedDict())
