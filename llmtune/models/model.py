"""`LanguageModel` (one backbone plus named heads), `build_model`, and weight initialisation.

Attribute names here and in the backbones/heads are checkpoint keys: keep them stable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.errors import ConfigError
from llmtune.models.bert import BertBackbone
from llmtune.models.gpt import GPTBackbone
from llmtune.models.heads import LMHead, MLMHead, NSPHead, ScalarHead, SeqClsHead, TokenClsHead

BACKBONES: dict[str, type[nn.Module]] = {"gpt": GPTBackbone, "bert": BertBackbone}
HEADS_BY_FAMILY: dict[str, tuple[str, ...]] = {
    "gpt": ("lm", "seq_cls", "token_cls", "reward", "value"),
    "bert": ("mlm", "nsp", "seq_cls", "token_cls", "reward"),
}
ALL_HEADS = ("lm", "mlm", "nsp", "seq_cls", "token_cls", "reward", "value")
INIT_STD = 0.02


class LanguageModel(nn.Module):
    """A backbone plus named heads. `forward` returns hidden states; heads are applied by callers.

    Going through `forward` (rather than `model.backbone(...)`) keeps DDP/compile wrappers in
    the call path.
    """

    def __init__(self, config: ModelConfig, backbone: nn.Module, heads: nn.ModuleDict) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.heads = heads

    @property
    def input_names(self) -> tuple[str, ...]:
        """Batch keys the backbone accepts, e.g. ("input_ids", "doc_ids") for gpt."""
        return self.backbone.input_names

    def forward(self, input_ids: torch.Tensor, **inputs: torch.Tensor | None) -> torch.Tensor:
        """Hidden states [B,T,D]. gpt takes doc_ids; bert takes token_type_ids, attention_mask."""
        return self.backbone(input_ids, **inputs)

    def pool(self, hidden: torch.Tensor, last_index: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence features [B,D] for `nsp`/`seq_cls` (bert: pooler on [CLS]; gpt: last token)."""
        return self.backbone.pool(hidden, last_index)

    def tied_parameter_names(self) -> dict[str, str]:
        """{alias key: canonical key} for parameters that share storage (store them once)."""
        first: dict[int, str] = {}
        tied: dict[str, str] = {}
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in first:
                tied[name] = first[id(p)]
            else:
                first[id(p)] = name
        return tied

    def num_parameters(self, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (tied ones once). `exclude_embeddings` drops the token, position
        and type tables, and with them a tied output projection (it is the same tensor)."""
        emb = {id(m.weight) for m in self.backbone.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel()
            for p in self.parameters()
            if (p.requires_grad or not trainable_only) and not (exclude_embeddings and id(p) in emb)
        )


def _make_head(name: str, config: ModelConfig, backbone: nn.Module, n_labels: int) -> nn.Module:
    tied = backbone.tok_emb.weight if config.tie_embeddings else None
    if name == "lm":
        return LMHead(config, tied)
    if name == "mlm":
        return MLMHead(config, tied)
    if name == "nsp":
        return NSPHead(config)
    if name in ("reward", "value"):
        return ScalarHead(config)
    if n_labels < 1:
        raise ConfigError(f"head '{name}' needs n_labels >= 1, got {n_labels}")
    return SeqClsHead(config, n_labels) if name == "seq_cls" else TokenClsHead(config, n_labels)


def _check(config: ModelConfig, heads: Sequence[str]) -> None:
    if config.family not in BACKBONES:
        raise ConfigError(f"model.family must be one of {sorted(BACKBONES)}, got '{config.family}'")
    if config.vocab_size <= 0:
        raise ConfigError("model.vocab_size must be set (> 0) before building the model")
    if config.d_model % config.n_heads:
        raise ConfigError(f"model.d_model {config.d_model} must be divisible by n_heads")
    if config.max_seq_len > config.n_positions:
        raise ConfigError(
            f"model.max_seq_len {config.max_seq_len} exceeds n_positions {config.n_positions}"
        )
    allowed = HEADS_BY_FAMILY[config.family]
    for name in heads:
        if name not in ALL_HEADS:
            raise ConfigError(f"unknown head '{name}'; known heads: {', '.join(ALL_HEADS)}")
        if name not in allowed:
            raise ConfigError(
                f"head '{name}' does not fit family '{config.family}' (use: {', '.join(allowed)})"
            )


def init_weights(model: LanguageModel) -> None:
    """N(0, 0.02) for linears and embeddings, zero biases, unit LayerNorms.

    GPT-2 also shrinks each residual output projection by 1/sqrt(2*n_layers), so the residual
    stream's variance does not grow with depth (two residual adds per block).
    """
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=INIT_STD)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, LMHead):  # a bare parameter; when tied this redraws the same table
            nn.init.normal_(m.weight, std=INIT_STD)
        if isinstance(m, MLMHead):
            nn.init.zeros_(m.bias)
    if model.config.family == "gpt":
        std = INIT_STD / math.sqrt(2 * model.config.n_layers)
        for block in model.backbone.blocks:
            nn.init.normal_(block.attn.proj.weight, std=std)
            nn.init.normal_(block.mlp.proj.weight, std=std)


def build_model(config: ModelConfig, heads: Sequence[str], n_labels: int = 0) -> LanguageModel:
    """Build and initialise a model of `config.family` with the named heads (see ALL_HEADS)."""
    _check(config, heads)
    backbone = BACKBONES[config.family](config)
    head_modules = nn.ModuleDict(
        {name: _make_head(name, config, backbone, n_labels) for name in dict.fromkeys(heads)}
    )
    model = LanguageModel(config, backbone, head_modules)
    init_weights(model)
    return model
