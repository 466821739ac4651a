"""Every shipped preset and experiment composes and validates into a RunConfig."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from llmtune.config.build import build_run_config
from llmtune.config.layout import CONFIG_DIR, group_options

EXPERIMENTS = group_options("experiment")


def composed(command: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=command, overrides=overrides)
    values = OmegaConf.to_container(cfg, resolve=True)
    # experiments on a user's file need a path (files.yaml leaves data.train empty)
    if values["data"].get("source") == "files" and values["data"].get("train") in ("???", ""):
        values["data"]["train"] = "corpus.txt"
    return build_run_config(values)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str):
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    first_lines = path.read_text().splitlines()
    comment = next(line for line in first_lines if not line.startswith("# @package"))
    assert comment.startswith("# "), f"{path}: its first line says what it is for"
    command = OmegaConf.load(path).command  # declared, not read from the comment
    assert command in ("pretrain", "finetune"), path
    config = composed(command, [f"experiment={name}"])
    assert config.command == command


@pytest.mark.parametrize("model", group_options("model"))
def test_model_presets_compose_with_native_objective(model: str):
    config = composed("pretrain", [f"model={model}"])
    native = {
        "bert": ("mlm", "wordpiece"),
        "gpt": ("clm", "bpe"),
        "llama": ("clm", "bpe"),
        "t5": ("span_corruption", "unigram"),
    }
    assert (config.objective.name, config.tokenizer.kind) == native[config.model.family]


def test_presets_match_the_published_shapes():
    shapes = {
        "bert-small": (4, 512, 8, 2048),
        "bert-base": (12, 768, 12, 3072),
        "gpt2-small": (12, 768, 12, 3072),
        "t5-small": (6, 512, 8, 2048),
    }
    for name, shape in shapes.items():
        m = composed("pretrain", [f"model={name}"]).model
        assert (m.n_layers, m.d_model, m.n_heads, m.d_ff) == shape


@pytest.mark.parametrize(
    ("preset", "n_params"), [("smollm2-135m", 134_515_008), ("llama-1b", 1_235_814_400)]
)
def test_llama_presets_have_the_published_parameter_counts(preset: str, n_params: int):
    import torch

    from llmtune.models import build_model

    with torch.device("meta"):
        model = build_model(composed("pretrain", [f"model={preset}"]).model, ("lm",))
    assert model.num_parameters() == n_params


def test_every_yaml_starts_with_a_comment():
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("# @package")]
        assert lines[0].startswith("# "), path


def _declared(node: dict, prefix: str = "") -> dict[str, object]:
    """Flattened leaf values of a primary YAML's own keys (hydra and defaults left out)."""
    flat = {}
    for key, value in node.items():
        if key in ("hydra", "defaults"):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_declared(value, f"{path}."))
        elif value != "???":
            flat[path] = value
    return flat


@pytest.mark.parametrize("command", ["pretrain", "finetune", "evaluate", "export"])
def test_primary_config_values_beat_the_group_defaults(command: str):
    """What a command's own YAML declares is what runs (finetune's lr 5e-5 once lost to
    optim/adamw.yaml's 5e-4 because `_self_` came first in its defaults list)."""
    declared = _declared(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{command}.yaml")))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name=command), resolve=False)
    got = _declared(cfg)
    assert declared, command
    for key, value in declared.items():
        assert got[key] == value, f"{command}: {key} composed to {got[key]!r}, YAML says {value!r}"


def test_experiment_beats_the_primary_config():
    config = composed("finetune", ["experiment=finetune-rt-sentiment-minilm", "init_from=x"])
    assert config.optim.warmup_steps == 30 and config.train.max_steps == 320


def test_a_command_takes_the_experiments_of_the_command_it_builds_on():
    from llmtune.config.overrides import check_overrides
    from llmtune.errors import ConfigError

    assert check_overrides("plan", ["experiment=bert-tiny-builtin"])  # plan is pretrain's
    with pytest.raises(ConfigError, match="configures llmtune pretrain, not llmtune finetune"):
        check_overrides("finetune", ["experiment=bert-tiny-builtin", "init_from=x"])
