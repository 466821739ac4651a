"""`LanguageModel` (one backbone plus named heads) and `build_model`.

Attribute names here and in the backbones/heads are checkpoint keys: keep them stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.errors import ConfigError
from llmtune.models.family import Family, Kind
from llmtune.models.registry import FAMILIES, family


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
    def family(self) -> Family:
        return family(self.config.family)

    @property
    def kind(self) -> Kind:
        return self.family.kind

    @property
    def input_names(self) -> tuple[str, ...]:
        """Keys of right-padded rows the backbone reads, e.g. ("input_ids",) for gpt."""
        return self.backbone.input_names

    def forward(self, input_ids: torch.Tensor, **inputs: torch.Tensor | None) -> torch.Tensor:
        """Hidden states [B,T,D]; `inputs` are the backbone's own (see `input_names`)."""
        return self.backbone(input_ids, **inputs)

    def features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B,T,D] hidden states of a batch of right-padded rows (the family reads its keys)."""
        return self.backbone.features(batch)

    def pool(self, hidden: torch.Tensor, last_index: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence features [B,D] for `nsp`/`seq_cls`/`reward` from hidden states and each row's
        last real position [B] (bert: pooler on [CLS]; gpt: the last real token)."""
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


def _check(config: ModelConfig, fam: Family, heads: Sequence[str]) -> None:
    if not isinstance(config, fam.config):
        raise ConfigError(
            f"model.family={config.family}: the config is a {type(config).__name__}, "
            f"not a {fam.config.__name__}"
        )
    if config.vocab_size <= 0:
        raise ConfigError("model.vocab_size must be set (> 0) before building the model")
    config.check()
    known = {h for f in FAMILIES.values() for h in f.heads}
    for name in heads:
        if name not in known:
            raise ConfigError(f"unknown head '{name}'; known heads: {', '.join(sorted(known))}")
        if name not in fam.heads:
            raise ConfigError(
                f"head '{name}' does not fit family '{fam.name}' (use: {', '.join(fam.heads)})"
            )


def build_model(config: ModelConfig, heads: Sequence[str], n_labels: int = 0) -> LanguageModel:
    """Build and initialise a model of `config.family` with the named heads."""
    fam = family(config.family)
    _check(config, fam, heads)
    backbone = fam.backbone(config)
    head_modules = nn.ModuleDict(
        {name: fam.build_head(name, config, backbone, n_labels) for name in dict.fromkeys(heads)}
    )
    model = LanguageModel(config, backbone, head_modules)
    fam.init_weights(model)
    return model
