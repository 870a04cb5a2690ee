"""BENCHMARKS.md's tables are what benchmarks/summarize.py renders from the committed result files (they cannot go
stale), every file at the top of a dataset folder is a benchmark row, and the paths and links the docs cite exist."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results"
#: result files the docs name before they exist: the GPU kit writes them (benchmarks/gpu/README.md)
NOT_RUN_YET = {"benchmarks/results/performance/gpu.json"}


def _summarize():
    return load_script("benchmarks/summarize.py")


def _record(p10, n10, command="python x.py", **extra):
    return {"model": "m", "dataset": "d", "split": "s", "command": command, "commit": "c", "hardware": {},
            "wall_time_s": 1.0, "config": {},
            "metrics": dict({"precision@10": p10, "ndcg@10": n10, "num_users": 7}, **extra)}


def _write(path: Path, record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")


def _table_rows(text: str, table: str, summarize):
    begin, end = summarize.markers(table)
    body = text.split(begin, 1)[1].split(end, 1)[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in body.strip().splitlines()[2:]]


def test_committed_tables_equal_what_the_result_files_render():
    summarize = _summarize()
    text = BENCHMARKS.read_text(encoding="utf-8")
    assert summarize.render_document(text, RESULTS, BENCHMARKS) == text, \
        "BENCHMARKS.md's tables differ from benchmarks/results: run python benchmarks/summarize.py --write"
    assert summarize.main(["--check"]) == 0


def test_summary_has_every_dataset_and_every_canonical_file():
    summarize = _summarize()
    rows = _table_rows(BENCHMARKS.read_text(encoding="utf-8"), "summary", summarize)
    shown = {(r[0], re.search(r"\[`(\w+)`\]", r[1]).group(1)) for r in rows}
    on_disk = {(p.parent.name, p.stem) for p in RESULTS.glob("*/*.json") if p.parent.name != "performance"}
    assert shown == on_disk
    assert {d for d, _ in shown} >= {"ml-latest-small", "ml-100k", "ml-1m", "amazon-scientific"}
    for row in rows:
        if "[`lightgcn`]" in row[1]:
            assert row[6:8] == ["1.00x", "1.00x"]
        assert row[-1].startswith("`") and len(row[-1]) > 10  # the command that made the row
    assert _table_rows(BENCHMARKS.read_text(encoding="utf-8"), "variants", summarize)  # the variants are listed


def test_a_changed_result_file_makes_the_committed_tables_stale(tmp_path):
    summarize = _summarize()
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    path = results / "ml-100k" / "glta.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    record["metrics"]["ndcg@10"] += 0.001
    path.write_text(json.dumps(record), encoding="utf-8")
    document = tmp_path / "BENCHMARKS.md"
    shutil.copy(BENCHMARKS, document)
    assert summarize.main(["--check", "--results-dir", str(results), "--document", str(document)]) == 1
    assert summarize.main(["--write", "--results-dir", str(results), "--document", str(document)]) == 0
    assert summarize.main(["--check", "--results-dir", str(results), "--document", str(document)]) == 0


def test_ratios_missing_values_order_and_escaping(tmp_path):
    summarize = _summarize()
    results = tmp_path / "results"
    _write(results / "ml-100k" / "lightgcn.json", _record(0.4, 0.5, **{"precision@5": 0.45, "ndcg@5": 0.55}))
    _write(results / "ml-100k" / "glta.json", _record(0.2, 0.4, command="a | b"))
    _write(results / "ml-100k" / "variants" / "glta_seed1.json", _record(0.1, 0.25))
    _write(results / "zz-new" / "glta.json", _record(0.3, 0.3))  # no lightgcn row: no ratio
    _write(results / "performance" / "speed.json", {"metrics": {}})  # not a dataset
    summary = summarize.render(results, "summary", tmp_path).splitlines()
    assert summary[2] == ("| ml-100k | [`lightgcn`](results/ml-100k/lightgcn.json) | 0.4500 | 0.4000 | 0.5500 | "
                          "0.5000 | 1.00x | 1.00x | 7 | `python x.py` |")
    assert summary[3] == ("| ml-100k | [`glta`](results/ml-100k/glta.json) | – | 0.2000 | – | 0.4000 | 0.50x | "
                          "0.80x | 7 | `a \\| b` |")
    assert summary[4].startswith("| zz-new | [`glta`]") and "| – | – | 7 |" in summary[4]
    assert len(summary) == 5
    variants = summarize.render(results, "variants", tmp_path).splitlines()
    assert variants[2] == ("| ml-100k | [`glta_seed1`](results/ml-100k/variants/glta_seed1.json) | – | 0.1000 | – | "
                           "0.2500 | 0.25x | 0.50x | 7 |")


def test_paper_table_sets_the_papers_ratios_beside_ours(tmp_path):
    summarize = _summarize()
    paper = tmp_path / "paper.json"
    _write(paper, {"our_datasets": {"ml-100k": "MovieLens"}, "rows": {"MovieLens": {
        "lightgcn": {"precision@5": 0.05, "precision@10": 0.04, "ndcg@5": 0.05, "ndcg@10": 0.05},
        "lightgcn_plus": {"precision@5": 0.04, "precision@10": 0.05, "ndcg@5": 0.05, "ndcg@10": 0.05},
        "glta": {"precision@5": 0.10, "precision@10": 0.10, "ndcg@5": 0.10, "ndcg@10": 0.10},
        "glta_wo_both": {"precision@5": 0.08, "ndcg@5": 0.05}}}})
    results = tmp_path / "results"
    _write(results / "ml-100k" / "lightgcn.json", _record(0.4, 0.5, **{"precision@5": 0.5, "ndcg@5": 0.5}))
    _write(results / "ml-100k" / "lightgcn_plus.json", _record(0.5, 0.4, **{"precision@5": 0.4, "ndcg@5": 0.5}))
    _write(results / "ml-100k" / "glta.json", _record(0.45, 0.45, **{"precision@5": 0.45, "ndcg@5": 0.45}))
    rows = {line.split(" | ")[1]: line for line in summarize.render_paper(results, paper).splitlines()[2:]}
    assert rows["GLTA / LightGCN"] == ("| ml-100k (MovieLens) | GLTA / LightGCN | 2.00x | 0.90x | 2.50x | 1.12x | "
                                       "2.00x | 0.90x | 2.00x | 0.90x |")
    # the per-metric best of LightGCN and LightGCN+ is the denominator
    assert rows["GLTA / best of LightGCN, LightGCN+"].startswith("| ml-100k (MovieLens) | GLTA / best of LightGCN, "
                                                                 "LightGCN+ | 2.00x | 0.90x | 2.00x | 0.90x |")
    # the paper prints no P@10 for an ablation; our ablation row does not exist
    assert rows["w/o both / GLTA"] == ("| ml-100k (MovieLens) | w/o both / GLTA | 0.80x | not run | – | not run | "
                                       "0.50x | not run | – | not run |")


@pytest.mark.parametrize("record, message", [({"command": "x", "metrics": {"ndcg@10": 0.1}}, "precision@10"),
                                             (_record(0.1, 0.1, command=" "), "command")])
def test_a_result_file_without_metrics_or_command_is_named(tmp_path, record, message):
    summarize = _summarize()
    _write(tmp_path / "d" / "glta.json", record)
    with pytest.raises(SystemExit, match=rf"d/glta\.json: .*{message}"):
        summarize.render(tmp_path, "summary", tmp_path)


def test_missing_or_doubled_markers_name_the_file(tmp_path):
    summarize = _summarize()
    begin, end = summarize.markers("summary")
    with pytest.raises(SystemExit, match=r"doc\.md: needs exactly one"):
        summarize.replace_tables("no markers", {"summary": "x"}, where="doc.md")
    with pytest.raises(SystemExit, match="needs exactly one"):
        summarize.replace_tables(f"{begin}\n{end}\n{begin}\n{end}", {"summary": "x"})
    assert summarize.replace_tables(f"a\n{begin}\nold\n{end}\nb", {"summary": "new\n"}) == f"a\n{begin}\nnew\n{end}\nb"


def test_every_file_at_the_top_of_a_dataset_folder_is_a_benchmark_row():
    from glta_hf.benchmark import GLTA_ROWS
    from glta_hf.graph import graph_rows

    rows = set(GLTA_ROWS) | set(graph_rows())
    strays = [str(p.relative_to(ROOT)) for p in RESULTS.glob("*/*.json")
              if p.parent.name != "performance" and p.stem not in rows]
    assert not strays, f"not a row name (rename it to its row or move it to <dataset>/variants/): {strays}"


def _docs():
    return ([ROOT / "README.md", BENCHMARKS] + sorted((ROOT / "docs").rglob("*.md"))
            + sorted((ROOT / "benchmarks").rglob("README.md")) + sorted((ROOT / "training" / "configs").glob("*.yaml"))
            + sorted((ROOT / "benchmarks" / "quality").glob("*")))


def test_every_result_file_the_docs_cite_exists():
    cited = set()
    for doc in _docs():
        cited.update(re.findall(r"benchmarks/results/[\w./-]+?\.jsonl?\b", doc.read_text(encoding="utf-8")))
    assert any("/variants/" in c for c in cited)  # the pattern finds what the docs cite
    missing = sorted(c for c in cited - NOT_RUN_YET if not (ROOT / c).is_file())
    assert not missing, f"the docs cite result files that do not exist: {missing}"


def _anchors(path: Path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", ["BENCHMARKS.md", "benchmarks/README.md", "docs/experiments/notebook.md",
                                 "README.md"])
def test_relative_links_resolve_to_a_file_and_heading(doc):
    path = ROOT / doc
    links = re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8"))
    broken = []
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists() or (anchor and anchor not in _anchors(file)):
            broken.append(link)
    assert not broken, f"{doc}: links to no file or heading: {broken}"
