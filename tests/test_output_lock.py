"""One writer per output folder (issue 25, item 2): a lock file with pid + host; a second writer gets a one-line
error naming the first; a lock left by a dead process on this host is taken over with a warning."""
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script
from glta_hf.errors import GLTAError, OutputLockedError
from glta_hf.io_utils import LOCK_NAME, output_lock


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@contextlib.contextmanager
def _locked_by_a_live_process(folder):
    """``folder``'s lock held by another live process on this host; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                    "started": "2026-01-01T00:00:00"}))
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_names_its_writer_and_is_removed_afterwards(tmp_path):
    with output_lock(tmp_path / "out") as path:
        owner = json.loads(path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with output_lock(tmp_path / "out"):  # re-entrant: the quickstart holds it around run_stages' own lock
            pass
        assert path.exists()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_second_live_writer_gets_a_one_line_error(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with _locked_by_a_live_process(folder) as pid:
        with pytest.raises(OutputLockedError) as err:
            with output_lock(folder):
                pytest.fail("a second writer got the lock")
        message = str(err.value)
        assert "\n" not in message and f"pid {pid}" in message and "another run" in message
        assert isinstance(err.value, GLTAError)  # the CLI prints it as one `glta ...: error:` line
    assert (folder / LOCK_NAME).exists()  # never removed by the writer that did not get it


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING, logger="glta_hf.io_utils"):
        with output_lock(folder) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert any("no longer running" in r.getMessage() for r in caplog.records)


def test_a_lock_from_another_host_is_not_guessed_dead(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": "another-host.invalid"}))
    with pytest.raises(OutputLockedError, match="another-host.invalid"):
        with output_lock(folder):
            pass


def test_run_stages_refuses_a_folder_another_run_writes(tmp_path):
    """The stage loop of align.py / quickstart / benchmark stops before building anything."""
    from types import SimpleNamespace

    from glta_hf.pipeline import run_stages

    with _locked_by_a_live_process(tmp_path):
        with pytest.raises(OutputLockedError):
            run_stages(["user"], SimpleNamespace(process_index=0), root=tmp_path, llm=None, data=None,
                       first_model=lambda stage: pytest.fail("built a model"))


def test_quickstart_refuses_a_folder_another_quickstart_writes(tmp_path):
    from glta_hf.quickstart import QuickstartConfig, run_quickstart

    with _locked_by_a_live_process(tmp_path) as pid:
        with pytest.raises(OutputLockedError, match=f"pid {pid}"):
            run_quickstart(QuickstartConfig(output_dir=str(tmp_path)), llm=object(), tokenizer=object(),
                           echo=lambda line: pytest.fail(f"started working: {line}"))


def test_benchmark_refuses_a_folder_another_benchmark_writes(tmp_path):
    from types import SimpleNamespace

    from glta_hf.benchmark import Benchmark

    bench = Benchmark.__new__(Benchmark)  # the lock comes before any row: no data or model is needed
    bench.out = tmp_path
    bench._run_rows = lambda rows: pytest.fail("ran a row")
    with _locked_by_a_live_process(tmp_path) as pid:
        with pytest.raises(OutputLockedError, match=f"pid {pid}"):
            bench.run(["pop"])


def test_pretrain_graph_refuses_a_graph_folder_another_run_writes(tmp_path, monkeypatch):
    """Two graph fits into one folder would interleave their tables: the second stops before loading data."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "training"))
    import pretrain_graph

    monkeypatch.setattr(pretrain_graph, "_train_and_record", lambda args, argv: pytest.fail("started training"))
    with _locked_by_a_live_process(tmp_path) as pid:
        with pytest.raises(OutputLockedError, match=f"pid {pid}"):
            pretrain_graph.main(["--dataset", "ml-latest-small", "--output-dir", str(tmp_path)])


def test_pretrain_graph_holds_its_folder_lock_while_it_trains(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "training"))
    import pretrain_graph

    seen = []
    monkeypatch.setattr(pretrain_graph, "_train_and_record",
                        lambda args, argv: seen.append(json.loads((tmp_path / LOCK_NAME).read_text())["pid"]) or 0)
    assert pretrain_graph.main(["--dataset", "ml-latest-small", "--output-dir", str(tmp_path)]) == 0
    assert seen == [os.getpid()] and not (tmp_path / LOCK_NAME).exists()


def test_carry_run_refuses_a_folder_another_save_writes(tmp_path):
    """Two saves into one carried folder (one by hand while paper_rows.sh saves at a stage's end) once collided in
    its staging folder with a bare FileExistsError; the second is now refused, naming the first, before copying."""
    carry_run = load_script("benchmarks/quality/carry_run.py")
    carried = tmp_path / "carried"
    carried.mkdir()
    with _locked_by_a_live_process(carried) as pid:
        with pytest.raises(OutputLockedError, match=f"pid {pid}"):
            carry_run.save(tmp_path / "run", carried)  # the run folder does not exist: refused before it is read
    assert sorted(p.name for p in carried.iterdir()) == [LOCK_NAME]
