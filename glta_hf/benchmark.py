"""``glta benchmark``: every model of the paper's comparison on one dataset, one split, one evaluator.

Rows (run names, each also ``<results-dir>/<dataset>/<run>.json`` via :func:`glta_hf.results.write_run_result`):
the graph models registered in :mod:`glta_hf.graph` (``--rows all``: the paper's baselines ``pop``, ``mf``,
``lightgcn``, ``lightgcn_plus``; any other registered one, e.g. ``lightgcn_ce``, by name) and ``glta``,
``glta_wo_ia``, ``glta_wo_ua``, ``glta_wo_pf``, ``glta_wo_pd``, ``glta_wo_both``, ``glta_ar``, ``glta_fl``
(:mod:`glta_hf.pipeline` stages; the variants are :class:`GLTATrainingArguments` flags / decodings) and
``glta_residual`` (GLTA + the graph-score residual, ``GLTAConfig.graph_residual``: not the paper's method, its own
row: does the LLM add anything over the LightGCN it starts from?). Every row is
scored on the same test users with :func:`glta_hf.metrics.evaluate` (graph rows) / :func:`glta_hf.metrics.evaluate_glta`.
A row whose result JSON exists with the same config fingerprint is skipped (resume). Writes ``results.json``,
``tables.md`` (Table 2 / Table 3 layouts) in ``--output-dir`` and ``fig3_<dataset>.png`` / ``fig4_<dataset>.png``
in ``--figures-dir``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

#: GLTA row -> (training variant, GLTATrainingArguments flags, decoding)
GLTA_ROWS = {
    "glta": ("glta", {}, "first_k"),
    "glta_wo_ia": ("wo_ia", {"no_item_alignment": True}, "first_k"),
    "glta_wo_ua": ("wo_ua", {"user_as_text": True}, "first_k"),
    "glta_wo_pf": ("wo_pf", {"no_profile": True}, "first_k"),
    "glta_wo_pd": ("wo_pd", {"no_prediction": True}, "first_k"),
    "glta_wo_both": ("wo_both", {"no_profile": True, "no_prediction": True}, "first_k"),
    "glta_ar": ("glta", {}, "autoregressive"),
    "glta_fl": ("glta", {}, "first_logit"),
    "glta_residual": ("residual", {}, "first_k"),
}
#: training variant -> QuickstartConfig fields it changes (model options rather than training flags)
VARIANT_OPTIONS: Dict[str, Dict[str, Any]] = {"residual": {"graph_residual": True}}
GLTA_LABELS = {"glta": "GLTA", "glta_wo_ia": "w/o IA", "glta_wo_ua": "w/o UA", "glta_wo_pf": "w/o PF",
               "glta_wo_pd": "w/o PD", "glta_wo_both": "w/o both", "glta_ar": "AR", "glta_fl": "FL",
               "glta_residual": "GLTA + graph residual"}
TABLE2 = [("P@5", "precision@5"), ("P@10", "precision@10"), ("N@5", "ndcg@5"), ("N@10", "ndcg@10"),
          ("R@10", "recall@10"), ("N@20", "ndcg@20")]
TABLE3 = [("P@5", "precision@5"), ("N@5", "ndcg@5")]


def graph_rows(paper_only: bool = False) -> Dict[str, Any]:
    """Run name -> class of the registered graph models (``glta_hf.graph.graph_rows``; imports torch)."""
    from .graph import graph_rows as registered

    return registered(paper_only)


def all_rows() -> List[str]:
    """Every row ``--rows`` accepts: the registered graph models, then the GLTA rows."""
    return list(graph_rows()) + list(GLTA_ROWS)


def label(row: str) -> str:
    """A row's name in tables and figures."""
    graph = graph_rows().get(row)
    return graph.label if graph is not None else GLTA_LABELS.get(row, row)


#: the quickstart's own options the benchmark exposes (the rows decide the decoding; data flags are the shared ones)
OWN_FLAGS = {"backbone": None, "seed": None, "train_users": "max_users", "text_users": None, "item_items": None,
             "eval_users": None}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags: the shared dataset flags, every option ``glta quickstart`` has (generated from the
    argument dataclasses, :func:`glta_hf.quickstart.add_config_flags`), the graph rows' regularisation and
    validation cadence (``GraphTrainingArguments``), LightGCN+'s text loss and the benchmark's own paths."""
    from .cli_args import (add_dataset_arguments, add_field_flags, device_name, existing_dir, non_negative_float,
                           positive_float, writable_dir, writable_file)
    from .graph import GraphTrainingArguments
    from .quickstart import add_config_flags

    add_dataset_arguments(parser, default="ml-latest-small")
    parser.add_argument("--results-name", default=None, help="dataset folder under --results-dir (default: dataset name)")
    parser.add_argument("--rows", default="all", type=_rows_flag,
                        help="comma-separated run names (default all: the paper's graph baselines pop, mf, lightgcn, "
                             "lightgcn_plus, then " + ",".join(GLTA_ROWS) + "; any graph model registered in "
                             "glta_hf.graph, e.g. lightgcn_ce, by its run name)")
    parser.set_defaults(flag_tables=add_config_flags(parser, OWN_FLAGS))
    add_field_flags(parser, GraphTrainingArguments, {"reg": None, "eval_every": "eval_every"}, prefix="graph_",
                    group="graph", defaults=True)
    parser.add_argument("--text-weight", type=non_negative_float, default=0.1, help="LightGCN+ InfoNCE weight")
    parser.add_argument("--temperature", type=positive_float, default=0.2, help="LightGCN+ InfoNCE temperature")
    parser.add_argument("--texts", default=None, type=writable_file,
                        help="profile / prediction cache of the GLTA rows (default <output-dir>/work/texts.jsonl); "
                             "a committed cache such as benchmarks/texts/<dataset>/texts.jsonl is reused / resumed")
    parser.add_argument("--node-embeddings", default=None, type=existing_dir,
                        help="node-embedding folder the GLTA rows align (training/pretrain_graph.py --output-dir, "
                             "e.g. the committed lightgcn row's tables); default: train the graph stage in "
                             "<output-dir>/work/graph")
    parser.add_argument("--llm-dtype", default=None, help="dtype of the GLTA rows' LLM (bfloat16 on GPUs; default "
                                                         "the checkpoint's, float32 for a GGUF file)")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="device of the graph rows and the GLTA rows' LLM: auto (cuda when available), cpu, cuda, "
                             "cuda:1, ...")
    parser.add_argument("--output-dir", default="runs/benchmark", type=writable_dir,
                        help="work files, results.json, tables.md")
    parser.add_argument("--results-dir", default="benchmarks/results", type=writable_dir)
    parser.add_argument("--figures-dir", default="benchmarks/figures", type=writable_dir)
    parser.add_argument("--render-only", action="store_true",
                        help="train nothing: rebuild results.json, tables and figures from the rows' result files "
                             "(e.g. graph rows tuned with training/pretrain_graph.py --run-name <row>)")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Before any row trains: the data folder, the rows' configs (``--epochs 0``, an unknown ``--head``) and, when a
    GLTA row will train, the LLM reference."""
    from .cli_args import require_data_dir, require_llm

    require_data_dir(parser, args.dataset, args.data_dir)
    try:
        cfg = quickstart_config(args)
        cfg.check()
    except ValueError as err:
        parser.error(str(err))
    if not args.render_only and any(row in GLTA_ROWS for row in args.rows):
        require_llm(parser, "--backbone", cfg.backbone)


def quickstart_config(args):
    """The rows' :class:`~glta_hf.quickstart.QuickstartConfig`: the ``--budget`` preset, the given flags, then
    ``args.overrides`` (library callers / tests: any option by its quickstart name)."""
    from .quickstart import budget_config, config_from_args

    if hasattr(args, "flag_tables"):
        cfg = config_from_args(args)
    else:  # a namespace built by hand
        cfg = budget_config(getattr(args, "budget", "small"), progress=not getattr(args, "no_progress", False))
    return cfg.with_options(output_dir=args.output_dir, dataset=args.dataset, data_dir=args.data_dir,
                            **(getattr(args, "overrides", None) or {}))


def _config(args) -> Dict[str, Any]:
    """The rows' settings by option name (what :func:`fingerprint` hashes)."""
    return quickstart_config(args).options()


#: The version of GLTA's training mechanics in a GLTA row's fingerprint: rows trained before issue 23's mechanics
#: (the head read raw slot states, no residual gate, no step-0 validation; texts without repetition control) are
#: not reused as if they were today's model.
GLTA_RECIPE = 2


def fingerprint(row: str, args, cfg: Dict[str, Any]) -> str:
    """What a row's numbers depend on: data, split, budget (and LightGCN+'s text weight); not paths / progress."""
    keep = {k: v for k, v in cfg.items()
            if k not in ("output_dir", "progress", "show_users", "prefix_cache", "eval_batch_size", "preset",
                         "text_batch_size")}  # batch sizes change speed, not numbers
    if keep.get("layout") == "paper":  # rows from before the layout option keep their fingerprints
        keep.pop("layout")
    if not keep.get("graph_residual", True):  # likewise for the residual option (a row's own variant sets it)
        keep.pop("graph_residual")
    key = dict(row=row, split=args.split, test_fraction=args.test_fraction, split_seed=args.split_seed,
               graph_reg=args.graph_reg, eval_every=args.graph_eval_every, cfg=keep)
    graph = graph_rows().get(row)
    if graph is not None and graph.needs_text_embeddings:
        key.update(text_weight=args.text_weight, temperature=args.temperature)
    if row.startswith("glta"):
        key.update(backbone=args.backbone, recipe=GLTA_RECIPE)
        dtype = getattr(args, "llm_dtype", None)
        if dtype is not None:  # absent = the float32 rows of earlier runs keep their fingerprints
            key.update(llm_dtype=str(dtype))
        nodes = getattr(args, "node_embeddings", None)
        if nodes is not None:  # which LightGCN tables the row aligns: their content, not their path
            key.update(node_embeddings=_file_sha256(Path(nodes) / "node_embeddings.safetensors"))
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    if not path.is_file():
        from .errors import GLTAError

        raise GLTAError(f"--node-embeddings: {path} does not exist (training/pretrain_graph.py --output-dir writes it)")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _device(value: str) -> str:
    from .backbone import resolve_device

    return resolve_device(value)


class Benchmark:
    def __init__(self, args, *, llm=None, tokenizer=None, echo: Callable[[str], None] = print):
        import numpy as np

        from .data.loaders import load_dataset
        from .metrics import test_users

        self.args, self.echo, self.llm, self.tokenizer = args, echo, llm, tokenizer
        self.config = quickstart_config(args)
        self.cfg = self.config.options()
        self.out = Path(args.output_dir)
        options = {k: v for k, v in (("split", args.split), ("test_fraction", args.test_fraction),
                                     ("seed", args.split_seed)) if v is not None}
        self.full = load_dataset(args.dataset, args.data_dir, **options)
        self.data = self.full.with_validation(fraction=self.cfg["val_fraction"], seed=self.cfg["seed"])
        self.name = args.results_name or self.full.name
        order = np.random.default_rng(self.cfg["seed"]).permutation(test_users(self.full))
        self.order = order
        n = self.cfg["eval_users"]
        self.users = None if n is None else np.sort(order[: min(n, len(order))])
        self._glta_models: Dict[str, Any] = {}

    def first(self, n):
        import numpy as np

        return None if n is None else np.sort(self.order[: min(n, len(self.order))]).tolist()

    # ------------------------------------------------------------------ graph rows
    def graph_args(self):
        return self.config.graph_arguments(reg=self.args.graph_reg, eval_every=self.args.graph_eval_every,
                                           device=_device(getattr(self.args, "device", "auto")))

    def run_graph(self, row: str):
        from .graph import BPRTrainer, build_model, encode_item_texts
        from .metrics import evaluate

        targs = self.graph_args()
        fit, validation = self.data.matrix("train"), self.data.matrix("validation")
        cls = graph_rows()[row]
        extra = {}
        if cls.needs_text_embeddings:
            extra = dict(text_embeddings=encode_item_texts(self.data.item_texts, device=targs.device),
                         text_weight=self.args.text_weight,
                         temperature=self.args.temperature)
        model = build_model(cls.name, fit, targs, **extra)
        info: Dict[str, Any] = {"graph": dataclasses.asdict(targs)}
        if cls.trainable:
            result = BPRTrainer(model, targs, fit, validation).train()
            info.update(best_epoch=result.best_epoch, epochs_run=len(result.history),
                        validation={k: round(v, 5) for k, v in result.best_validation.items()})
        model.eval()
        metrics = evaluate(train=self.full.matrix("train"), test=self.full.matrix("test"),
                           scorer=model.full_sort_predict, users=self.users)
        return metrics, info

    # ------------------------------------------------------------------ GLTA rows
    def _backbone(self):
        if self.llm is None:
            from .backbone import SMOLLM2_REFERENCE, portable_llm_reference
            from .texts import load_generator

            folder, gguf = portable_llm_reference(self.cfg["backbone"] or SMOLLM2_REFERENCE, None)
            self.llm, self.tokenizer, self.ref = load_generator(folder, gguf_file=gguf,
                                                                dtype=getattr(self.args, "llm_dtype", None),
                                                                device=_device(getattr(self.args, "device", "auto")))
            self.folder, self.gguf = folder, gguf
        elif not hasattr(self, "ref"):
            from .texts import llm_reference

            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.folder, self.gguf = self.cfg["backbone"], None
            self.ref = llm_reference(self.llm, self.folder, None, None)
        return self.llm, self.tokenizer

    def _shared(self):
        """Graph node embeddings and texts shared by every GLTA variant (resumable, in <output-dir>/work)."""
        if hasattr(self, "nodes"):
            return
        from . import pipeline
        from .graph import seed_everything
        c = self.cfg
        work = self.out / "work"
        if getattr(self.args, "node_embeddings", None):
            from .graph import load_node_embeddings

            self.nodes = load_node_embeddings(self.args.node_embeddings)
            pipeline.check_node_ids(self.nodes, self.data, where=f"--node-embeddings {self.args.node_embeddings}")
        else:
            self.nodes, _ = pipeline.train_graph(self.data, work / "graph", self.graph_args())
        llm, tokenizer = self._backbone()
        seed_everything(c["seed"])
        tcfg = self.config.text_config()
        texts = Path(self.args.texts) if getattr(self.args, "texts", None) else work / "texts.jsonl"
        self.texts = pipeline.generate_texts(llm, tokenizer, self.data, texts, config=tcfg,
                                             llm_ref=self.ref, users=self.first(c["text_users"]),
                                             progress=c["progress"])

    def glta_model(self, variant: str, flags: Dict[str, Any]):
        if variant in self._glta_models:
            return self._glta_models[variant]
        from .alignment_data import data_record
        from .quickstart import train_alignment

        self._shared()
        c = self.cfg
        llm, tokenizer = self._backbone()
        decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else llm
        model = train_alignment(
            self.config.with_options(**VARIANT_OPTIONS.get(variant, {})), self.out / "work" / variant,
            decoder=decoder, tokenizer=tokenizer, nodes=self.nodes,
            data=self.data, texts=self.texts, llm_name_or_path=str(self.folder), gguf_file=self.gguf,
            run_info={**data_record(self.full, dataset=self.args.dataset, data_dir=self.args.data_dir,
                                    val_fraction=c["val_fraction"], val_seed=c["seed"]),
                      "results_name": self.name, "variant": variant, "flags": flags, "eval_history_recent": None},
            train_users=self.first(c["train_users"]), flags=flags, echo=lambda _line: None)
        self._glta_models[variant] = model
        return model

    def run_glta(self, row: str):
        from .decoding import cutoffs_within
        from .metrics import DEFAULT_KS, evaluate_glta, test_users

        variant, flags, decoding = GLTA_ROWS[row]
        model = self.glta_model(variant, flags)
        c = self.cfg
        users = self.users if self.users is not None else test_users(self.full)
        ks = cutoffs_within(DEFAULT_KS, decoding, c["num_slots"])
        metrics = evaluate_glta(model, self.full, users=users, decoding=decoding, ks=ks,
                                batch_size=self.config.evaluation_batch_size(),
                                         progress=c["progress"], seed=c["seed"])
        return metrics, {"variant": variant, "flags": flags, "decoding": decoding,
                         "stages": (model.run_info or {}).get("stages")}

    # ------------------------------------------------------------------ driver
    def run(self, rows: List[str]) -> Dict[str, Any]:
        """Each row of ``rows`` (finished rows of the same settings are reused), with ``--output-dir`` locked for this
        run (``io_utils.output_lock``): a second benchmark into the same folder stops at once."""
        from .io_utils import output_lock

        with output_lock(self.out):
            return self._run_rows(rows)

    def _run_rows(self, rows: List[str]) -> Dict[str, Any]:
        from .io_utils import read_json, write_json
        from .results import hardware_info, write_run_result

        given = sys.argv[1:]
        if given[:1] == ["benchmark"]:  # `glta benchmark ...` / `python -m glta_hf.cli benchmark ...`
            given = given[1:]
        command = "glta benchmark " + " ".join(shlex.quote(a) for a in given)
        results: Dict[str, Any] = {}
        for row in rows:
            fp = fingerprint(row, self.args, self.cfg)
            path = Path(self.args.results_dir) / self.name / f"{row}.json"
            existing = read_json(path) if path.is_file() else None
            if getattr(self.args, "render_only", False):
                if existing is None:
                    self.echo(f"{row}: no result file {path}; left out of the tables")
                else:
                    results[row] = existing
                continue
            recorded = (existing or {}).get("config") or {}
            if existing and recorded.get("fingerprint") == fp:
                if row in GLTA_ROWS and recorded.get("flags", GLTA_ROWS[row][1]) != GLTA_ROWS[row][1]:
                    # the fingerprint holds the shared config, not a row's flags (glta_wo_ua once had the mask off)
                    self.echo(f"{row}: retrained (its result was trained with flags {recorded['flags']}, the row's "
                              f"are {GLTA_ROWS[row][1]})")
                else:
                    self.echo(f"{row}: skipped (finished, fingerprint {fp})")
                    results[row] = dict(existing, skipped=True)
                    continue
            start = time.perf_counter()
            graph = graph_rows().get(row)
            metrics, info = self.run_graph(row) if graph is not None else self.run_glta(row)
            wall = time.perf_counter() - start
            config = dict(info, fingerprint=fp, benchmark=self.cfg, row=row, eval_users=
                          None if self.users is None else len(self.users), text_weight=self.args.text_weight
                          if graph is not None and graph.needs_text_embeddings else None)
            write_run_result(self.args.results_dir, self.name, row, model=row, split=self.data.split_policy,
                             metrics=metrics, command=command, wall_time_s=wall, config=config)
            hw = hardware_info()
            self.echo(f"{row}: {wall:.1f}s on {hw['cpu']} x{hw['cpu_cores']} (gpu {hw['gpu']}); "
                      f"P@5 {metrics.get('precision@5', float('nan')):.4f} N@10 {metrics.get('ndcg@10', float('nan')):.4f}")
            results[row] = read_json(path)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "results.json", {"dataset": self.name, "rows": results})
        tables = render_tables(self.name, results)
        (self.out / "tables.md").write_text(tables, encoding="utf-8")
        self.echo(tables)
        figures = render_figures(self.name, results, self.args.figures_dir)
        for f in figures:
            self.echo(f"figure: {f}")
        return {"results": results, "tables": tables, "figures": figures}


def _table(rows, columns, title):
    lines = [title, "", "| model | " + " | ".join(c for c, _ in columns) + " | wall time (s) | hardware |",
             "|---" * (len(columns) + 3) + "|"]
    for row, rec in rows.items():
        m = rec.get("metrics") or {}
        hw = rec.get("hardware") or {}
        cells = [f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "n/a" for _, k in columns]
        lines.append(f"| {label(row)} | " + " | ".join(cells) +
                     f" | {rec.get('wall_time_s', float('nan')):.1f} | {hw.get('cpu')} x{hw.get('cpu_cores')}"
                     f"{', ' + hw['gpu'] if hw.get('gpu') else ''} |")
    return "\n".join(lines) + "\n"


def render_tables(dataset: str, results: Dict[str, Any]) -> str:
    t2 = {r: results[r] for r in all_rows() if r in results and r not in ("glta_wo_pf", "glta_wo_pd", "glta_wo_both")}
    t3 = {r: results[r] for r in ("glta_wo_pf", "glta_wo_pd", "glta_wo_both", "glta") if r in results}
    out = _table(t2, TABLE2, f"### Table 2 layout: {dataset}")
    if t3:
        out += "\n" + _table(t3, TABLE3, f"### Table 3 layout (PF / PD ablation): {dataset}")
    return out


def _bar(path, dataset, results, rows, title, reference=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [("P@5", "precision@5"), ("P@10", "precision@10"), ("N@5", "ndcg@5"), ("N@10", "ndcg@10")]
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    width = 0.8 / len(rows)
    x = np.arange(len(metrics))
    for i, row in enumerate(rows):
        m = results[row].get("metrics") or {}
        hatch = {"hatch": "//", "fill": False} if row == reference else {}
        ax.bar(x + i * width, [m.get(k, 0.0) for _, k in metrics], width,
               label=label(row) + (" (reference)" if row == reference else ""), **hatch)
    ax.set_xticks(x + width * (len(rows) - 1) / 2)
    ax.set_xticklabels([n for n, _ in metrics])
    ax.set_title(f"{title} ({dataset})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside the bars, never over them
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: the paper's figures: name -> (GLTA and the variants it compares, title)
FIGURES = {"fig3": (["glta", "glta_wo_ia", "glta_wo_ua"], "Alignment ablation (paper Figure 3)"),
           "fig4": (["glta", "glta_ar", "glta_fl"], "Decoding (paper Figure 4)")}


def render_figures(dataset: str, results: Dict[str, Any], folder) -> List[str]:
    """Figure 3 (GLTA vs w/o IA vs w/o UA) and Figure 4 (GLTA vs AR vs FL) with the rows present, each once GLTA and
    at least one of its variants exist; the dataset's LightGCN, when present, as a hatched reference bar (the
    paper's figures have none; here it answers whether any variant beats the graph it starts from)."""
    made = []
    for name, (rows, title) in FIGURES.items():
        present = [r for r in rows if r in results]
        if "glta" not in present or len(present) < 2:
            continue
        reference = "lightgcn" if "lightgcn" in results else None
        made.append(str(_bar(Path(folder) / f"{name}_{dataset}.png", dataset, results,
                             present + ([reference] if reference else []), title, reference=reference)))
    return made


def parse_rows(value) -> List[str]:
    if not isinstance(value, str):  # already parsed by the --rows flag
        return list(value)
    if value in ("all", ""):
        return list(graph_rows(paper_only=True)) + list(GLTA_ROWS)
    rows = [r.strip() for r in value.split(",") if r.strip()]
    unknown = [r for r in rows if r not in all_rows()]
    if unknown:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"unknown rows {unknown}; expected some of {all_rows()}")
    return rows


def _rows_flag(text: str) -> List[str]:
    try:
        return parse_rows(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run(args: argparse.Namespace, *, llm=None, tokenizer=None) -> int:
    rows = parse_rows(args.rows)
    Benchmark(args, llm=llm, tokenizer=tokenizer).run(rows)
    return 0
