"""Sharing on the Hub, tested at the huggingface_hub API boundary (``HfApi.create_repo`` / ``create_commit`` are
intercepted; nothing reaches the network) and loading a Hub-style repo id from a local, offline HF cache."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import build_tiny
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load as load_safetensors_bytes

from glta_hf import CheckpointError
from glta_hf.hub import hub_files

RUN_INFO = {
    "dataset": "ml-latest-small",
    "split": "random 80/20 per user, seed 0",
    "stages": [{"name": "item", "hyperparameters": {"num_train_epochs": 1.0, "learning_rate": 0.001}},
               {"name": "user", "hyperparameters": {"num_train_epochs": 2.0, "learning_rate": 0.0005}}],
    "eval": {"split": "test", "decoding": "first_k", "metrics": {"ndcg@5": 0.25, "precision@5": 0.125,
                                                                 "num_users": 6}},
}


class Recorder:
    """Stands in for the Hub: records create_repo / create_branch / create_commit calls."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.operations = {}
        recorder = self

        def create_repo(api, repo_id, *, private=None, token=None, exist_ok=False, **kwargs):
            recorder.calls.append(("create_repo", repo_id, exist_ok))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def create_commit(api, repo_id, operations, *, commit_message, **kwargs):
            recorder.calls.append(("create_commit", repo_id, commit_message))
            for op in operations:
                data = op.path_or_fileobj
                recorder.operations[op.path_in_repo] = data if isinstance(data, bytes) else Path(data).read_bytes()
            return "commit-info"

        def create_branch(api, repo_id, *, branch, **kwargs):
            recorder.calls.append(("create_branch", repo_id, branch))

        def forbidden(api, *args, **kwargs):  # any other network call is a bug
            raise AssertionError(f"unexpected Hub call {args} {kwargs}")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", forbidden)
        monkeypatch.setattr(HfApi, "upload_file", forbidden)
        monkeypatch.setattr(ModelCard, "load", classmethod(lambda cls, *a, **k: forbidden(None, *a, **k)))

    def card(self) -> ModelCard:
        return ModelCard(self.operations["README.md"].decode("utf-8"))


def expected_files(tokenizer, tmp_path, user_table=False):
    """config + GLTA weights + catalogue + run record + card + manifest + remote code + the tokenizer's files (+ the
    user table when asked for)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    import glta_hf.configuration_glta
    import glta_hf.modeling_glta

    tok_dir = tmp_path / "tokenizer-only"
    tokenizer.save_pretrained(tok_dir)
    code = {Path(f).name for mod in (glta_hf.modeling_glta, glta_hf.configuration_glta)
            for f in [mod.__file__, *get_relative_import_files(mod.__file__)]}
    return ({"config.json", "model.safetensors", "item_catalogue.json", "glta_run.json", "README.md",
             "glta_manifest.json"} | code
            | {p.name for p in tok_dir.iterdir()} | ({"user_table.json"} if user_table else set()))


def test_model_push_to_hub_uploads_exactly_the_glta_checkpoint_and_card(tmp_path, monkeypatch):
    hub = Recorder(monkeypatch)
    tiny = build_tiny(tmp_path)
    model = tiny.model
    model.run_info = json.loads(json.dumps(RUN_INFO))
    before = {k: v.clone() for k, v in model.glta_state_dict().items()}

    result = model.push_to_hub("org/glta-tiny", llm_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
                                commit_message="first upload")

    assert result == "commit-info"
    assert hub.calls == [("create_repo", "org/glta-tiny", True), ("create_commit", "org/glta-tiny", "first upload")]
    files = set(hub.operations)
    assert files == expected_files(tiny.tokenizer, tmp_path)  # no user table unless asked for
    assert {"configuration_glta.py", "modeling_glta.py"} <= files and "user_table.json" not in files
    # GLTA's own weights only: no LLM tensor, no pickle, no other weight file
    state = load_safetensors_bytes(hub.operations["model.safetensors"])
    assert state.keys() == before.keys() and not any(k.startswith("model.llm.") for k in state)
    torch.testing.assert_close(state["head.weight"], before["head.weight"])
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".gguf")) or
                (f.endswith(".safetensors") and f != "model.safetensors")]
    llm_params = sum(p.numel() for p in model.llm.parameters())
    assert sum(v.numel() for v in state.values()) < llm_params  # the LLM (larger than GLTA's part) is not in it
    # the uploaded config references the Hub LLM; the in-memory model keeps its local reference
    config = json.loads(hub.operations["config.json"])
    assert config["llm_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config["auto_map"]["AutoModelForRecommendation"] == "modeling_glta.GLTAForRecommendation"
    assert model.config.llm_name_or_path == str(tiny.llm_dir)
    # the card's metadata
    card = hub.card()
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "glta-hf" and card.data.datasets == ["ml-latest-small"]
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"ndcg@5", "precision@5"}  # num_users is not a metric
    assert results["ndcg@5"].metric_value == 0.25 and results["ndcg@5"].dataset_split == "test"
    assert results["ndcg@5"].dataset_name == "ml-latest-small"
    assert 'from_pretrained("org/glta-tiny")' in card.text
    assert "Stage `user`: num_train_epochs=2.0, learning_rate=0.0005" in card.text
    run = json.loads(hub.operations["glta_run.json"])
    assert run["hub_model_id"] == "org/glta-tiny" and run["eval"]["metrics"]["ndcg@5"] == 0.25


def test_push_to_hub_revision_creates_the_branch(tmp_path, monkeypatch):
    hub = Recorder(monkeypatch)
    build_tiny(tmp_path).model.push_to_hub("org/glta-tiny", revision="v1")
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[1] == ("create_branch", "org/glta-tiny", "v1")
    assert hub.card().data.eval_results is None  # nothing recorded, nothing invented


def test_trainer_push_to_hub_uploads_the_model_not_the_output_dir(tmp_path, monkeypatch):
    from glta_hf.alignment_data import GLTACollator, ItemTextDataset
    from glta_hf.trainer import GLTATrainer
    from glta_hf.training_args import GLTATrainingArguments

    hub = Recorder(monkeypatch)
    tiny = build_tiny(tmp_path)
    model = tiny.model
    model.run_info = {"dataset": "tiny-movies"}
    model.set_trainable("item")
    texts = [f"Item {j}: a film about {j}" for j in range(12)]
    dataset = ItemTextDataset(texts, tiny.tokenizer, model.prompt_config, items_per_sample=3)
    args = GLTATrainingArguments(output_dir=str(tmp_path / "out"), stage="item", max_steps=2,
                                 per_device_train_batch_size=2, num_slots=4, items_per_sample=3, learning_rate=1e-3,
                                 hub_model_id="org/glta-trained", save_strategy="no", use_cpu=True,
                                 disable_tqdm=True)
    trainer = GLTATrainer(model=model, args=args, train_dataset=dataset,
                          data_collator=GLTACollator(tiny.tokenizer.pad_token_id, 4))
    trainer.train()
    trainer.save_model()  # writes training_args.bin (a pickle) into output_dir: it must not be uploaded
    assert (tmp_path / "out" / "training_args.bin").is_file()

    trainer.push_to_hub()

    assert [c[:2] for c in hub.calls] == [("create_repo", "org/glta-trained"), ("create_commit", "org/glta-trained")]
    assert hub.calls[1][2] == "End of training"
    assert set(hub.operations) == expected_files(tiny.tokenizer, tmp_path)
    card = hub.card()
    assert card.data.datasets == ["tiny-movies"] and card.data.library_name == "glta-hf"
    assert "Stage `item`:" in card.text and "max_steps=2" in card.text and "global_step=2" in card.text
    # create_model_card renders the GLTA card (not transformers' generic Trainer card) into output_dir
    trainer.create_model_card()
    local = ModelCard((tmp_path / "out" / "README.md").read_text())
    assert local.data.library_name == "glta-hf" and "Stage `item`:" in local.text


def test_hub_files_refuse_llm_weights_pickles_and_foreign_weights(tmp_path):
    from safetensors.torch import save_file

    tiny = build_tiny(tmp_path)
    folder = tmp_path / "ckpt"
    tiny.model.config.llm_name_or_path = "org/tiny-llm"  # a local LLM path is refused on its own (test below)
    tiny.model.save_pretrained(folder)
    assert "model.safetensors" in hub_files(folder)
    (folder / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        hub_files(folder)
    (folder / "training_args.bin").unlink()
    save_file({"w": torch.zeros(2)}, str(folder / "llm.safetensors"))
    with pytest.raises(CheckpointError, match="other than GLTA's own"):
        hub_files(folder)
    (folder / "llm.safetensors").unlink()
    state = dict(tiny.model.glta_state_dict())
    state["llm.embed_tokens.weight"] = torch.zeros(4, 4)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="LLM weights"):
        hub_files(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        hub_files(folder)


def test_from_pretrained_resolves_a_repo_id_from_the_offline_hf_cache(tmp_path):
    """``from_pretrained("org/name")`` with HF_HUB_OFFLINE=1 finds models--org--name/snapshots/<sha>/ via refs/main;
    the LLM reference is the tiny LLaMA saved to a local path."""
    tiny = build_tiny(tmp_path)
    tiny.model.run_info = {"dataset": "tiny-movies"}
    saved = tmp_path / "saved"
    tiny.model.save_pretrained(saved)
    expected = tiny.model.recommend(["u1", "u3"], k=3)

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-home" / "hub" / "models--org--glta-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(saved, repo / "snapshots" / sha)
    shutil.copytree(saved, repo / "snapshots" / sha / "glta")  # the same checkpoint again, in a subfolder
    assert not (tmp_path / "org" / "glta-tiny").exists()  # not resolvable as a local folder

    script = textwrap.dedent("""
        import json
        from glta_hf import GLTAForRecommendation
        model = GLTAForRecommendation.from_pretrained("org/glta-tiny")
        nested = GLTAForRecommendation.from_pretrained("org/glta-tiny", subfolder="glta")
        for a, b in zip(nested.recommend(["u1", "u3"], k=3), model.recommend(["u1", "u3"], k=3)):
            assert a["items"] == b["items"] and max(abs(x - y) for x, y in zip(a["scores"], b["scores"])) < 1e-5
        print(json.dumps({"recs": model.recommend(["u1", "u3"], k=3), "run_info": model.run_info,
                          "llm": model.config.llm_name_or_path}))
    """)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1")
    # the glta_hf under test (this checkout), not whichever one the virtualenv has installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    env.pop("HF_HUB_CACHE", None)
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["llm"] == str(tiny.llm_dir)
    assert out["run_info"] == {"dataset": "tiny-movies"}
    assert [r["items"] for r in out["recs"]] == [r["items"] for r in expected]
    for got, want in zip(out["recs"], expected):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-4)

    # an id that is not in the cache fails offline instead of reaching the network
    env["HF_HUB_CACHE"] = str(tmp_path / "empty-cache")
    res = subprocess.run([sys.executable, "-c", script.replace("org/glta-tiny", "org/missing")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0


# ------------------------------------------------------------------ what is published is chosen (issue 13, item 1)

FAKE_TOKEN = "hf_FAKEtoken0123456789abcdefABCDEF"
FAKE_KEY = "sk-FAKEkey-9876543210"


def _uploaded_texts(hub):
    return {name: data.decode("utf-8", errors="replace") for name, data in hub.operations.items()}


def _absolute_strings(value):
    """Every string inside a JSON value that is an absolute path."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _absolute_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _absolute_strings(v)]
    return [value] if isinstance(value, str) and (value.startswith(("/", "~")) or value[1:3] == ":\\") else []


def test_push_never_uploads_a_token_or_a_local_absolute_path(tmp_path, monkeypatch):
    """align.py-style record with a Hub token and an API key on the command line, absolute data / graph / text /
    backbone / output paths, and an LLM referenced by a local folder: none of it reaches any uploaded byte."""
    hub = Recorder(monkeypatch)
    tiny = build_tiny(tmp_path)
    work = tmp_path / "work"
    tiny.model.run_info = {
        "dataset": "ml-latest-small", "data_dir": str(work / "data" / "ml-latest-small"),
        "graph_dir": str(work / "graph"), "texts": str(work / "texts.jsonl"), "backbone": str(tiny.llm_dir),
        "command": f"{work}/training/align.py --config {work}/c.yaml --hub_token {FAKE_TOKEN} "
                   f"--wandb-api-key={FAKE_KEY} --output_dir {work}/out",
        "stages": [{"name": "user", "output_dir": str(work / "out" / "user"), "hyperparameters": {"seed": 0}}],
        "hub_token": FAKE_TOKEN,
    }
    tiny.model.push_to_hub("org/glta-private", token=FAKE_TOKEN)

    local = [str(tmp_path), os.getcwd(), sys.prefix, str(Path.home())]
    for name, data in hub.operations.items():
        assert FAKE_TOKEN.encode() not in data and FAKE_KEY.encode() not in data, name
        for path in local:
            assert path.encode() not in data, (name, path)
    for name, text in _uploaded_texts(hub).items():
        if name.endswith(".json") and not name.startswith("tokenizer"):  # a vocabulary has tokens like "/"
            assert _absolute_strings(json.loads(text)) == [], name
    run = json.loads(hub.operations["glta_run.json"])
    assert "<redacted>" in run["command"] and "--hub_token" in run["command"] and run["hub_token"] == "<redacted>"
    assert run["data_dir"] == "ml-latest-small" and run["stages"][0]["output_dir"] == "user"
    config = json.loads(hub.operations["config.json"])
    assert config["llm_name_or_path"] == tiny.llm_dir.name  # the local folder reduced to its name
    assert tiny.model.config.llm_name_or_path == str(tiny.llm_dir)  # the in-memory model keeps its reference
    assert tiny.model.run_info["hub_token"] == FAKE_TOKEN  # only the uploaded copy is sanitized


def test_trainer_push_keeps_the_hub_token_out_of_every_uploaded_byte(tmp_path, monkeypatch):
    from glta_hf.alignment_data import GLTACollator, ItemTextDataset
    from glta_hf.trainer import GLTATrainer
    from glta_hf.training_args import GLTATrainingArguments

    hub = Recorder(monkeypatch)
    tiny = build_tiny(tmp_path)
    model = tiny.model
    model.set_trainable("item")
    dataset = ItemTextDataset([f"Item {j}" for j in range(12)], tiny.tokenizer, model.prompt_config,
                              items_per_sample=3)
    args = GLTATrainingArguments(output_dir=str(tmp_path / "out"), stage="item", max_steps=1,
                                 per_device_train_batch_size=2, num_slots=4, items_per_sample=3,
                                 hub_model_id="org/glta-trained", hub_token=FAKE_TOKEN, save_strategy="no",
                                 use_cpu=True, disable_tqdm=True)
    trainer = GLTATrainer(model=model, args=args, train_dataset=dataset,
                          data_collator=GLTACollator(tiny.tokenizer.pad_token_id, 4))
    trainer.train()
    trainer.push_to_hub()
    assert hub.operations and "user_table.json" not in hub.operations
    for name, data in hub.operations.items():
        assert FAKE_TOKEN.encode() not in data and str(tmp_path).encode() not in data, name


def test_user_table_is_uploaded_only_when_asked_and_the_card_says_so(tmp_path, monkeypatch):
    hub = Recorder(monkeypatch)
    tiny = build_tiny(tmp_path)
    tiny.model.run_info = {"dataset": "tiny-movies"}
    tiny.model.push_to_hub("org/glta-tiny", llm_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    without = hub.card().text
    assert "user_table.json" not in hub.operations
    assert "is **not** included" in without and 'histories={"new-user": ["i0", "i1", "i2"]}' in without

    hub.operations.clear()
    tiny.model.push_to_hub("org/glta-tiny", llm_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
                           include_user_table=True)
    assert set(hub.operations) == expected_files(tiny.tokenizer, tmp_path, user_table=True)
    assert json.loads(hub.operations["user_table.json"])["user_ids"] == [f"u{j}" for j in range(6)]
    card = hub.card().text
    assert "and the user table (`user_table.json`" in card and "not** included" not in card
    assert 'model.recommend(["u0"], k=10)' in card


def test_a_model_pushed_without_its_user_table_serves_fold_in_requests(tmp_path, monkeypatch):
    """The uploaded files alone (no user_table.json) load, and a user given by a history is served."""
    from glta_hf import GLTAForRecommendation, UnknownIdError

    hub = Recorder(monkeypatch)
    tiny = build_tiny(tmp_path)
    tiny.model.push_to_hub("org/glta-tiny", llm_name_or_path=str(tiny.llm_dir))  # a local LLM: reduced to a name
    repo = tmp_path / "downloaded"
    for name, data in hub.operations.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    assert not (repo / "user_table.json").exists()
    loaded = GLTAForRecommendation.from_pretrained(repo, llm_name_or_path=str(tiny.llm_dir))
    history = ["i1", "i2", "i3"]
    got = loaded.recommend(["someone"], k=3, histories={"someone": history})
    want = tiny.model.recommend(["someone"], k=3, histories={"someone": history})
    assert got[0]["items"] == want[0]["items"] and not set(got[0]["items"]) & set(history)
    with pytest.raises(UnknownIdError):  # a stored user's id means nothing without the table
        loaded.recommend(["u1"], k=3)
    with pytest.raises(UnknownIdError):  # nor does an internal row number (it once served row 1 silently)
        loaded.recommend(["1"], k=3)
    loaded.save_pretrained(tmp_path / "resaved")  # and no placeholder table is written on a re-save
    assert not (tmp_path / "resaved" / "user_table.json").exists()


def test_hub_files_upload_only_the_allow_list(tmp_path):
    tiny = build_tiny(tmp_path)
    folder = tmp_path / "ckpt"
    tiny.model.config.llm_name_or_path = "org/tiny-llm"  # a local LLM path is refused on its own (test below)
    tiny.model.save_pretrained(folder)
    (folder / "notes.txt").write_text("private notes")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_text("x")
    files = hub_files(folder)
    assert "notes.txt" not in files and "runs/events.out" not in files and "user_table.json" not in files
    assert "user_table.json" in hub_files(folder, include_user_table=True)
    (folder / "glta_run.json").write_text(json.dumps({"data_dir": str(folder)}))
    with pytest.raises(CheckpointError, match="local path"):
        hub_files(folder)


def test_lora_push_uploads_the_adapter_without_the_local_llm_path(tmp_path, monkeypatch):
    hub = Recorder(monkeypatch)
    tiny = build_tiny(tmp_path, lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    tiny.model.push_to_hub("org/glta-lora")
    assert {"llm_adapter/adapter_config.json", "llm_adapter/adapter_model.safetensors"} <= set(hub.operations)
    adapter = json.loads(hub.operations["llm_adapter/adapter_config.json"])
    assert not str(adapter.get("base_model_name_or_path") or "").startswith("/")
    for name, data in hub.operations.items():
        assert str(tmp_path).encode() not in data, name


def test_an_absolute_gguf_path_is_never_uploaded(tmp_path, monkeypatch):
    """The path scan knew only $HOME, cwd and sys.prefix; an llm_gguf_file elsewhere went to config.json and the card."""
    hub = Recorder(monkeypatch)
    tiny = build_tiny(tmp_path)
    tiny.model.config.llm_gguf_file = "/models/gguf/smollm2-135m-q4_1.gguf"
    tiny.model.push_to_hub("org/glta-gguf", llm_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    for name, data in hub.operations.items():
        assert b"/models/gguf" not in data, name
    assert json.loads(hub.operations["config.json"])["llm_gguf_file"] == "smollm2-135m-q4_1.gguf"
    assert tiny.model.config.llm_gguf_file == "/models/gguf/smollm2-135m-q4_1.gguf"  # local config unchanged


def test_hub_files_refuse_any_absolute_path_in_the_json_records(tmp_path):
    tiny = build_tiny(tmp_path)
    folder = tmp_path / "ckpt"
    tiny.model.config.llm_name_or_path = "org/tiny-llm"
    tiny.model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "llm_gguf_file": "/opt/models/x.gguf"}))
    with pytest.raises(CheckpointError, match="config.json holds the local path '/opt/models/x.gguf'"):
        hub_files(folder)


def test_the_uploaded_manifest_matches_the_uploaded_files(tmp_path, monkeypatch):
    """The Hub copy loads with its checksums verified: the manifest covers what was uploaded (no user table, the
    sanitized record), not the local folder."""
    import hashlib

    hub = Recorder(monkeypatch)
    tiny = build_tiny(tmp_path)
    tiny.model.run_info = {"hub_token": FAKE_TOKEN}
    tiny.model.push_to_hub("org/glta-tiny")
    manifest = json.loads(hub.operations["glta_manifest.json"])["files"]
    assert "user_table.json" not in manifest and "README.md" not in manifest
    assert set(manifest) == set(hub.operations) - {"glta_manifest.json", "README.md"}
    for name, entry in manifest.items():
        assert hashlib.sha256(hub.operations[name]).hexdigest() == entry["sha256"], name
