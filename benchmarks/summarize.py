"""The results tables of BENCHMARKS.md, rendered from the result files (the files own every number).

A dataset's canonical rows are ``benchmarks/results/<dataset>/<row>.json`` (``glta.json``, ``lightgcn.json``, ...:
one file per model row, the configuration chosen on validation); other test runs of the same dataset (decoders,
seeds, earlier settings) are ``benchmarks/results/<dataset>/variants/<run>.json``. Each table row shows P@5 / P@10 /
N@5 / N@10 and the ratio of P@10 and N@10 to the same dataset's ``lightgcn.json``; the summary also shows the
command that made the row (the file's ``command``). Hand-copied metrics go stale; these tables are re-rendered::

    python benchmarks/summarize.py            # print both tables
    python benchmarks/summarize.py --write    # rewrite them in BENCHMARKS.md, between their marker comments
    python benchmarks/summarize.py --check    # exit 1 when BENCHMARKS.md differs from the result files

``tests/test_benchmarks_summary.py`` asserts that the committed BENCHMARKS.md equals what this renders from the
committed result files, so a new or changed result file without ``--write`` fails the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
#: folders of ``benchmarks/results`` that hold no dataset's quality rows
NOT_DATASETS = ("performance",)
VARIANTS = "variants"
REFERENCE_ROW = "lightgcn"
#: reading order; datasets and rows not listed follow in alphabetical order
DATASET_ORDER = ("ml-latest-small", "ml-100k", "ml-1m", "amazon-scientific")
ROW_ORDER = ("pop", "mf", "lightgcn", "lightgcn_plus", "lightgcn_ce", "glta", "glta_residual")
COLUMNS = (("P@5", "precision@5"), ("P@10", "precision@10"), ("N@5", "ndcg@5"), ("N@10", "ndcg@10"))
RATIOS = (("P@10", "precision@10"), ("N@10", "ndcg@10"))
TABLES = ("summary", "variants", "paper")
#: the paper's printed numbers (Tables 2 and 3) and which of its datasets each of ours stands for
PAPER = ROOT / "benchmarks" / "reference" / "paper_glta_www2025.json"
#: the paper table's ratios: (label, row, reference rows: the per-metric best of them is the denominator)
COMPARISONS = (("GLTA / LightGCN", "glta", ("lightgcn",)),
               ("GLTA / best of LightGCN, LightGCN+", "glta", ("lightgcn", "lightgcn_plus")),
               ("w/o PF / GLTA", "glta_wo_pf", ("glta",)),
               ("w/o PD / GLTA", "glta_wo_pd", ("glta",)),
               ("w/o both / GLTA", "glta_wo_both", ("glta",)))


def _ordered(names, order) -> List[str]:
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path}: invalid JSON ({exc})") from None
    metrics = record.get("metrics")
    if not isinstance(metrics, dict) or not all(key in metrics for _, key in RATIOS):
        raise SystemExit(f"error: {path}: a result file needs metrics precision@10 and ndcg@10")
    if not str(record.get("command") or "").strip():
        raise SystemExit(f"error: {path}: no 'command' (every row says what made it)")
    return record


def load_results(results_dir: Path) -> Dict[str, Dict[str, Dict[str, Tuple[Path, dict]]]]:
    """``{dataset: {"rows": {row: (path, record)}, "variants": {run: (path, record)}}}``, in reading order."""
    results_dir = Path(results_dir)
    found = {}
    datasets = [d.name for d in results_dir.iterdir() if d.is_dir() and d.name not in NOT_DATASETS]
    for dataset in _ordered(datasets, DATASET_ORDER):
        folder = results_dir / dataset
        rows = {p.stem: p for p in folder.glob("*.json")}
        variants = {p.stem: p for p in (folder / VARIANTS).glob("*.json")}
        if not rows and not variants:
            continue
        found[dataset] = {
            "rows": {r: (rows[r], _read(rows[r])) for r in _ordered(rows, ROW_ORDER)},
            "variants": {r: (variants[r], _read(variants[r])) for r in sorted(variants)},
        }
    return found


def _number(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return "–" if value is None else f"{value:.4f}"


def _ratio(metrics: dict, reference: Optional[dict], key: str) -> str:
    if reference is None or not reference.get(key):
        return "–"
    return f"{metrics[key] / reference[key]:.2f}x"


def _link(path: Path, relative_to: Path, text: str) -> str:
    return f"[`{text}`]({Path(os.path.relpath(path, relative_to)).as_posix()})"


def _code(text: str) -> str:
    """A Markdown table cell holding ``text`` as code (a ``|`` would end the cell)."""
    return "`" + " ".join(text.split()).replace("|", "\\|") + "`"


def render(results_dir: Path, table: str, relative_to: Path) -> str:
    """The ``summary`` (canonical rows, with commands) or ``variants`` table as Markdown."""
    results = load_results(results_dir)
    head = ["dataset", "row" if table == "summary" else "file"] + [name for name, _ in COLUMNS]
    head += [f"{name} / LightGCN" for name, _ in RATIOS] + ["test users"]
    head += ["command"] if table == "summary" else []
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 3)
                                                             + ["---" if table == "summary" else "---:"]) + "|"]
    for dataset, found in results.items():
        reference = found["rows"].get(REFERENCE_ROW)
        reference = reference[1]["metrics"] if reference else None
        for name, (path, record) in found["rows" if table == "summary" else "variants"].items():
            metrics = record["metrics"]
            cells = [dataset, _link(path, relative_to, name)] + [_number(metrics, key) for _, key in COLUMNS]
            cells += [_ratio(metrics, reference, key) for _, key in RATIOS]
            cells += [str(metrics.get("num_users", "–"))]
            cells += [_code(record["command"])] if table == "summary" else []
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _relative(rows: Dict[str, dict], row: str, references, key: str) -> Optional[float]:
    """``rows[row][key]`` over the best of ``references`` at ``key``; None when a number is missing."""
    base = [rows[r][key] for r in references if r in rows and rows[r].get(key)]
    if row not in rows or rows[row].get(key) is None or len(base) != len(references):
        return None
    return rows[row][key] / max(base)


def render_paper(results_dir: Path, paper_file: Path = PAPER) -> str:
    """The paper's relative gains beside ours: each ratio of :data:`COMPARISONS` per metric, the paper's from its
    printed tables, ours from our result files of the dataset standing for the paper's (``not run``: our row does not
    exist yet; ``–``: the paper prints no such number)."""
    paper = json.loads(Path(paper_file).read_text(encoding="utf-8"))
    results = load_results(results_dir)
    head = ["dataset (paper's)", "ratio"] + [f"{name} {who}" for name, _ in COLUMNS for who in ("paper", "ours")]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for dataset, paper_name in paper["our_datasets"].items():
        ours = {row: record["metrics"] for row, (_, record) in results.get(dataset, {"rows": {}})["rows"].items()}
        theirs = paper["rows"][paper_name]
        for text, row, references in COMPARISONS:
            cells = [f"{dataset} ({paper_name})", text]
            for _, key in COLUMNS:
                for rows, missing in ((theirs, "–"), (ours, "not run")):
                    value = _relative(rows, row, references, key)
                    cells.append(missing if value is None else f"{value:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_table(results_dir: Path, table: str, relative_to: Path) -> str:
    """One of :data:`TABLES` as Markdown."""
    return render_paper(results_dir) if table == "paper" else render(results_dir, table, relative_to)


def markers(table: str) -> Tuple[str, str]:
    return (f"<!-- {table} table: rendered by benchmarks/summarize.py --write; do not edit by hand -->",
            f"<!-- end of {table} table -->")


def replace_tables(text: str, tables: Dict[str, str], where: str = "BENCHMARKS.md") -> str:
    """``text`` with each table's body between its two marker comments replaced."""
    for table, body in tables.items():
        begin, end = markers(table)
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise SystemExit(f"error: {where}: needs exactly one '{begin}' followed by one '{end}'")
        start, stop = text.index(begin) + len(begin), text.index(end)
        text = text[:start] + "\n" + body + text[stop:]
    return text


def render_document(text: str, results_dir: Path, document: Path) -> str:
    """``text`` (the document's content) with every table re-rendered from ``results_dir``."""
    tables = {table: render_table(results_dir, table, document.parent) for table in TABLES}
    return replace_tables(text, tables, where=str(document))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--document", type=Path, default=ROOT / "BENCHMARKS.md", help="the file holding the markers")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the tables in --document")
    mode.add_argument("--check", action="store_true", help="exit 1 when --document's tables are stale")
    args = parser.parse_args(argv)
    if not args.write and not args.check:
        for table in TABLES:
            print(render_table(args.results_dir, table, args.document.parent))
        return 0
    current = args.document.read_text(encoding="utf-8")
    rendered = render_document(current, args.results_dir, args.document)
    if args.check:
        if rendered != current:
            print(f"{args.document}: tables differ from {args.results_dir}; run benchmarks/summarize.py --write",
                  file=sys.stderr)
            return 1
        return 0
    if rendered != current:
        args.document.write_text(rendered, encoding="utf-8")
    print(f"{args.document}: tables {'rewritten' if rendered != current else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
