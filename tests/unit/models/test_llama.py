"""The Llama-family backbone against transformers: Llama, Qwen2 (q/k/v biases) and Mistral
import and export with the same logits, KV-cached generation, packing, GQA cache, config checks."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from llmtune.config.schema import EvaluateConfig
from llmtune.errors import CheckpointError, ConfigError
from llmtune.foreign import read_hf_weights
from llmtune.models import (
    build_model,
    from_hf_state_dict,
    heads_from_hf,
    hf_config_dict,
    model_config_from_hf,
    to_hf_state_dict,
)
from llmtune.models.generation import generate
from llmtune.models.llama import LlamaConfig
from llmtune.models.llama_hf import hf_model_type
from llmtune.models.model import LanguageModel
from llmtune.models.rope import RopeScaling

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
TINY = LlamaConfig(
    vocab_size=97, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=8, d_ff=80,
    max_seq_len=32, n_positions=64, rope_theta=500.0, norm_eps=1e-6,
)  # fmt: skip
VARIANTS = {
    "llama": TINY,
    "llama-tied-mha": dataclasses.replace(TINY, n_kv_heads=6, tie_embeddings=True),
    "llama-biases": dataclasses.replace(
        TINY, attention_bias=True, attention_out_bias=True, mlp_bias=True
    ),
    "qwen2": dataclasses.replace(TINY, attention_bias=True, tie_embeddings=True),
    "mistral": dataclasses.replace(TINY, sliding_window=48, head_dim=16),
}


def build(config: LlamaConfig, heads=("lm",), n_labels: int = 3) -> LanguageModel:
    return build_model(config, heads, n_labels).eval()


def perturb(module: nn.Module) -> None:
    """Non-trivial norms and biases, so a swapped or dropped key changes the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def hf_model(config: LlamaConfig, heads=("lm",), n_labels: int = 3):
    body = hf_config_dict(config, heads, n_labels if "seq_cls" in heads else 0)
    cls_name = body["architectures"][0]
    hf_config = transformers.AutoConfig.for_model(**body, pad_token_id=0)
    return getattr(transformers, cls_name)(hf_config).eval()


def ids(t: int = 20, seed: int = 2) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randint(1, 97, (2, t))


@pytest.mark.parametrize("name", VARIANTS)
def test_import_from_hf_gives_hf_logits(name):
    config = VARIANTS[name]
    hf = hf_model(config)
    perturb(hf)
    assert hf_model_type(config) == hf.config.model_type
    ours_config = model_config_from_hf(hf.config.to_dict())
    assert dataclasses.replace(ours_config, max_seq_len=config.max_seq_len) == config
    model = build(config)
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), config, ("lm",)))
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model.heads["lm"](model(x)), hf(x).logits, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name", VARIANTS)
def test_export_to_hf_gives_our_logits(name):
    config = VARIANTS[name]
    model = build(config)
    perturb(model)
    hf = hf_model(config)
    sd = to_hf_state_dict(model, include_tied=False)
    result = hf.load_state_dict(sd, strict=False)
    # a tied lm_head is left out of the file and re-tied by transformers
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys
    assert ("lm_head.weight" in result.missing_keys) == config.tie_embeddings
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model.heads["lm"](model(x)), atol=ATOL, rtol=ATOL)


def test_sequence_classifier_round_trips_through_hf():
    """LlamaForSequenceClassification scores the last real token, as `pool` does."""
    config = TINY
    hf = hf_model(config, ("seq_cls",))
    perturb(hf)
    assert heads_from_hf(hf.config.to_dict()) == ("seq_cls",)
    model = build(config, ("seq_cls",))
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), config, ("seq_cls",)))
    x = ids()
    x[:, -4:] = 0  # right padding with the pad id: transformers pools the last non-pad token
    last = torch.full((2,), x.shape[1] - 5)
    with torch.no_grad():
        ours = model.heads["seq_cls"](model.pool(model(x), last))
        torch.testing.assert_close(ours, hf(x).logits, atol=ATOL, rtol=ATOL)


def test_import_refuses_weights_of_another_shape():
    hf_sd = to_hf_state_dict(build(TINY), include_tied=False)
    deeper = dataclasses.replace(TINY, n_layers=3)
    with pytest.raises(CheckpointError, match="missing.*layers.2"):
        from_hf_state_dict(hf_sd, deeper, ("lm",))
    with pytest.raises(CheckpointError, match="unexpected.*extra"):
        from_hf_state_dict({**hf_sd, "model.extra.weight": torch.zeros(1)}, TINY, ("lm",))


def test_hf_config_refusals():
    body = hf_config_dict(TINY)
    with pytest.raises(CheckpointError, match="model_type 'gpt_neox'"):
        model_config_from_hf({**body, "model_type": "gpt_neox"})
    with pytest.raises(CheckpointError, match="hidden_act 'gelu'"):
        model_config_from_hf({**body, "hidden_act": "gelu"})
    with pytest.raises(CheckpointError, match="rope type 'yarn'"):
        model_config_from_hf({**body, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(CheckpointError, match="output bias without"):
        hf_model_type(dataclasses.replace(TINY, attention_out_bias=True))


def test_rope_settings_round_trip_through_config_json():
    scaling = RopeScaling("llama3", 8.0, 1.0, 4.0, 32)
    config = dataclasses.replace(TINY, rope_scaling=scaling)
    assert model_config_from_hf(hf_config_dict(config)).rope_scaling == scaling
    v5 = {
        **hf_config_dict(TINY),
        "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 7.0},
    }
    parsed = model_config_from_hf(v5)
    assert (parsed.rope_theta, parsed.rope_scaling) == (7.0, RopeScaling("linear", 2.0))


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_cached_greedy_generation_equals_full_recompute(name):
    model = build(VARIANTS[name])
    perturb(model)
    cfg = EvaluateConfig(max_new_tokens=12, stop_at_eos=False)
    [cached] = generate(model, [[5, 9, 2, 44]], cfg, eos_id=None, use_cache=True)
    [full] = generate(model, [[5, 9, 2, 44]], cfg, eos_id=None, use_cache=False)
    assert cached.token_ids == full.token_ids and len(cached.token_ids) == 12


def test_left_padded_batch_generates_what_each_prompt_does_alone():
    """The generation contract: padding takes no position (rotary angles start at the first
    real token) and is never attended; the cache grows in place (GrowingKV)."""
    model = build(dataclasses.replace(TINY, max_seq_len=48))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.3)  # decisive logits: padding's 1e-6 cannot flip an argmax
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (1, 3, 17, 9)]
    cfg = EvaluateConfig(max_new_tokens=10, stop_at_eos=False, batch_size=4)
    batched = generate(model, prompts, cfg, eos_id=None)
    alone = [generate(model, [p], dataclasses.replace(cfg, batch_size=1), None)[0] for p in prompts]
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]


def test_cache_holds_only_key_value_heads():
    model = build(TINY)
    _, cache = model(ids(7), use_cache=True)
    assert len(cache) == TINY.n_layers
    assert cache[0][0].shape == (2, TINY.kv_heads, 7, TINY.head_size)


def test_packed_documents_equal_separate_ones():
    """Positions restart per document and no document sees another."""
    model = build(TINY)
    perturb(model)
    a, b = ids(6, seed=3)[0:1], ids(9, seed=4)[0:1]
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 6 + [1] * 9])
    with torch.no_grad():
        together = model(packed, doc_ids=doc_ids)
        apart = torch.cat([model(a), model(b)], dim=1)
        one_doc = model(packed, doc_ids=torch.zeros_like(doc_ids))
    torch.testing.assert_close(together, apart, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(one_doc, model(packed), atol=0, rtol=0)


def test_sliding_window_longer_sequences_are_refused():
    model = build(VARIANTS["mistral"])
    with pytest.raises(ValueError, match="sliding window 48"):
        model(ids(49))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"n_kv_heads": 4}, "n_kv_heads"),
        ({"d_model": 50, "head_dim": 0}, "head_dim"),
        ({"head_dim": 7}, "head_dim"),
        ({"rope_scaling": None}, ""),
    ],
)
def test_config_checks_name_the_key(change, key):
    if change.get("rope_scaling", 1) is None:
        with pytest.raises(ConfigError, match="rope_scaling.type='ntk'"):
            RopeScaling(type="ntk")
        return
    with pytest.raises(ConfigError, match=key):
        dataclasses.replace(TINY, **change).check()


def _write_folder(folder, config, model, shards: int) -> None:
    """An HF folder: config.json plus the weights in `shards` safetensors files (+ index)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config_dict(config)))
    sd = to_hf_state_dict(model, include_tied=False)
    if shards == 1:
        save_file(sd, folder / "model.safetensors")
        return
    keys, weight_map = sorted(sd), {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::shards]}
        save_file(part, folder / name, {"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("shards", [1, 3])
def test_hf_folders_single_and_sharded(tmp_path, shards):
    model = build(TINY)
    perturb(model)
    _write_folder(tmp_path / "m", TINY, model, shards)
    weights = read_hf_weights(tmp_path / "m")
    back = build(TINY)
    back.load_state_dict(from_hf_state_dict(weights, TINY, ("lm",)))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    x = ids()
    with torch.no_grad():
        ours = model.heads["lm"](model(x))
        torch.testing.assert_close(back.heads["lm"](back(x)), ours, atol=0, rtol=0)
        torch.testing.assert_close(hf(x).logits, ours, atol=ATOL, rtol=ATOL)


def test_hf_folder_problems_name_the_file(tmp_path):
    model = build(TINY)
    _write_folder(tmp_path / "m", TINY, model, 2)
    (tmp_path / "m" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: missing shard"):
        read_hf_weights(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: not valid JSON"):
        read_hf_weights(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors, model.safetensors.index"):
        read_hf_weights(tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable"):
        read_hf_weights(tmp_path / "empty")
