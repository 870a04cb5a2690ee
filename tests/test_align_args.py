"""``training/align.py``'s arguments: every model option reaches the model from the command line and from YAML;
invalid values are argparse errors (exit code 2) before anything loads."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from _tiny_data import write_tiny_movielens

ROOT = Path(__file__).resolve().parents[1]
MODEL_FLAGS = ["--lora_r", "8", "--ce_chunk_size", "1024", "--rank_chunk_size", "512", "--head", "factorized",
               "--projector", "mlp", "--max_description_tokens", "7", "--use_chat_template", "false",
               "--graph_residual", "true"]


@pytest.fixture(scope="module")
def align():
    spec = importlib.util.spec_from_file_location("glta_training_align", ROOT / "training" / "align.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _built(align, tmp_path, argv):
    """The fresh model align.py builds for its first stage from ``argv`` (tiny LLM, random node embeddings)."""
    import torch

    from glta_hf.alignment_data import prepare_data
    from glta_hf.testing import tiny_llama

    script, model_args, args = align.parse_args(["--output_dir", str(tmp_path / "run"), "--stage", "item",
                                                 "--num_slots", "4", "--items_per_sample", "3", *argv])
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
        _, model_args, args = align.parse_args(["--output_dir", str(tmp_path / "run"), *argv])
        assert model_args.prompt_fields()["layout"] == "text_first"
        assert args.prefix_cache is True and args.prefix_store().max_bytes == 1 << 29
    _, model_args, args = align.parse_args(["--output_dir", str(tmp_path / "run")])
    assert "layout" not in model_args.prompt_fields() and args.prefix_cache is False  # PromptConfig's layout, uncached
    assert _built(align, tmp_path, []).prompt_config.layout == "text_first"  # the default since issue 15's comparison
    assert _built(align, tmp_path, ["--layout", "paper"]).prompt_config.layout == "paper"


@pytest.mark.parametrize("argv, message", [
    (["--num_train_epochs", "-1"], "num_train_epochs must be > 0"),
    (["--num_train_epochs", "0", "--max_steps", "-1"], "num_train_epochs must be > 0"),
    (["--eval_decoding", "nosuch"], "decoding must be one of"),  # the decoder registry's names
    (["--head", "huge"], "head must be one of"),
    (["--lora_r", "-2"], "lora_r must be >= 0"),
    (["--layout", "sideways"], "invalid choice"),
    (["--prefix_cache_max_gb", "-1"], "prefix_cache_max_gb must be >= 0"),
    (["--resume_from_checkpoint", "/nowhere/checkpoint-3"], "not a complete checkpoint"),
])
def test_invalid_arguments_are_argparse_errors(align, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        align.parse_args(["--output_dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_yaml_key_is_an_argparse_error(align, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("lora_rank: 8\n")
    with pytest.raises(SystemExit) as exit_info:
        align.parse_args(["--config", str(tmp_path / "bad.yaml"), "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "unknown arguments ['lora_rank']" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted((ROOT / "training" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse(align, config):
    script, model_args, args = align.parse_args(["--config", str(config)])
    assert args.stage_plan() and model_args.config_kwargs()["head"] in ("linear", "factorized")
