"""The Llama family (Llama, Qwen2, Mistral, SmolLM): its config, the decoder backbone (RMSNorm
pre-norm blocks, rotary positions, grouped-query attention, SwiGLU MLP), its heads and its
registry entry (the Hugging Face mapping lives in llama_hf.py).

Module names follow gpt.py (`blocks.N.attn.qkv`, `attn.proj`, `mlp.fc`, `mlp.proj`, `ln_*`), so
LoRA targets, freezing, prefixes, prompts and the FLOP counter treat both decoders alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.errors import ConfigError
from llmtune.models import llama_hf
from llmtune.models.blocks import KV, Attention, GrowingKV, run_blocks
from llmtune.models.family import Family, HFMapping, Kind
from llmtune.models.gpt import CausalReadout, positions_and_mask
from llmtune.models.gpt import build_head as decoder_head
from llmtune.models.rope import RopeScaling, inverse_frequencies, rotary_tables


@dataclass(frozen=True)
class LlamaConfig(ModelConfig):
    """A Llama-family decoder: RMSNorm pre-norm, rotary positions, grouped-query attention and
    a SwiGLU MLP. Zero means "derived": n_kv_heads = n_heads, head_dim = d_model // n_heads."""

    family: str = "llama"  # registered family name (models/registry.py): bert, gpt, llama, ...
    n_heads: int = 4  # query heads per block
    n_kv_heads: int = 2  # grouped-query attention: key/value heads (0 = n_heads)
    head_dim: int = 0  # width of one head (0 = d_model // n_heads)
    d_ff: int = 352  # SwiGLU width (the gate and up projections each)
    n_positions: int = 2048  # the context the weights were trained for (dynamic RoPE's threshold)
    dropout: float = 0.0  # hidden dropout (Llama-family models train without)
    attn_dropout: float = 0.0  # dropout on attention probabilities
    tie_embeddings: bool = False  # the output projection shares the token embedding table
    rope_theta: float = 10000.0  # base of the rotary frequencies
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)  # longer contexts
    norm_eps: float = 1e-5  # epsilon of every RMSNorm
    attention_bias: bool = False  # biases on q, k, v (Qwen2)
    attention_out_bias: bool = False  # bias on the attention output (Llama's attention_bias)
    mlp_bias: bool = False  # biases on the MLP's projections
    # Mistral's sliding window: sequences up to this length attend exactly as with full
    # attention; longer ones are refused rather than computed differently. 0 = no window.
    sliding_window: int = 0

    @property
    def max_positions(self) -> int:
        # rotary positions have no table; longer runs are allowed (with rope_scaling, usually)
        return self.n_positions

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def check(self) -> None:
        for key in ("d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "n_positions"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)}: must be positive")
        if self.head_dim == 0 and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}; "
                "set model.head_dim"
            )
        if self.n_kv_heads < 0 or self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} must be a multiple of "
                f"model.n_kv_heads={self.n_kv_heads}"
            )
        if self.head_size % 2:
            raise ConfigError(f"model.head_dim={self.head_size}: must be even (rotary pairs)")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError("model.rope_theta and model.norm_eps must be positive")
        if self.vocab_size < 0:
            raise ConfigError(f"model.vocab_size={self.vocab_size}: must be >= 0 (0 = tokenizer's)")
        for key in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)}: must be in [0, 1)")


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 whatever the input dtype (as Llama does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * y.to(x.dtype)


class SwiGLU(nn.Module):
    """proj(silu(gate(x)) * up(x)); `fc` fuses gate and up ([2*d_ff, D], gate rows first), so
    the block's input is read by one matmul instead of two."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, 2 * config.d_ff, bias=config.mlp_bias)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): pre-norm residual block."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.ln_attn = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, config.attention_bias, config.attention_out_bias)
        self.ln_mlp = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past: KV | GrowingKV | None = None,
        use_cache: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, KV | GrowingKV]:
        """x [B,T,D]; the rest as in `blocks.Attention.forward` (with use_cache: (x, (k, v)))."""
        a, kv = self.attn(self.ln_attn(x), mask, is_causal, past, True, rope=rope)
        x = x + self.dropout(a)
        x = x + self.dropout(self.mlp(self.ln_mlp(x)))
        return (x, kv) if use_cache else x


class LlamaBackbone(CausalReadout, nn.Module):
    """Token embeddings, Llama blocks, final RMSNorm; no learned positions. `forward` returns
    hidden states [B,T,D]; the LM head (tied or not) lives in heads.py."""

    input_names = ("input_ids",)  # right padding needs no mask; doc_ids only when packed

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.head_dim, self.rope_theta = config.head_size, config.rope_theta
        self.rope_scaling, self.n_positions = config.rope_scaling, config.n_positions
        self.sliding_window = config.sliding_window
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layers))
        self.ln_f = RMSNorm(config.d_model, config.norm_eps)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B|1,1,T,hd] for integer positions [B|1,T]."""
        # only dynamic scaling depends on the length, and reading it synchronises the device
        longest = int(positions.max()) + 1 if self.rope_scaling.type == "dynamic" else 0
        inv_freq = inverse_frequencies(
            self.head_dim, self.rope_theta, self.rope_scaling, self.n_positions, longest
        )
        return rotary_tables(inv_freq, positions)

    def forward(
        self,
        input_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        past: Sequence[KV | GrowingKV] | None = None,
        use_cache: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[KV | GrowingKV]]:
        """input_ids [B,T]; doc_ids [B,T] (optional) labels packed documents, whose positions
        restart at 0 and which never attend to each other.

        `past` holds one (k, v) per block for P earlier positions: the new tokens take
        positions P..P+T-1. With `use_cache` returns (hidden, cache) to pass back as `past`.
        `attention_mask` [B,S] (1 = real, 0 = padding) follows GPTBackbone's generation
        contract: padding is never attended and takes no position.
        """
        t = input_ids.shape[1]
        start = 0 if past is None else past[0][0].shape[2]
        if self.sliding_window and start + t > self.sliding_window:
            raise ValueError(
                f"sequence length {start + t} exceeds the sliding window {self.sliding_window}, "
                "which llmtune does not implement; use shorter sequences"
            )
        pos, attend = positions_and_mask(input_ids, doc_ids, attention_mask, start)
        x = self.dropout(self.tok_emb(input_ids))  # [B,T,D]
        x, cache = run_blocks(self.blocks, x, attend, past, use_cache, rope=self.rope(pos))
        x = self.ln_f(x)
        return (x, cache) if use_cache else x


def from_config(c: Mapping) -> LlamaConfig:
    return LlamaConfig(**llama_hf.llama_config_kwargs(c))


LLAMA = Family(
    name="llama",
    kind=Kind.DECODER,
    config=LlamaConfig,
    backbone=LlamaBackbone,
    heads=("lm", "seq_cls", "token_cls", "reward", "value"),
    build_head=decoder_head,  # the same heads as GPT (score without bias)
    native_objective="clm",
    tokenizer="bpe",
    lm_head="lm",
    hf=HFMapping(
        model_types=tuple(llama_hf.HF_MODEL_TYPES),
        archs=llama_hf.ARCHS,
        backbone_prefix="model.",
        pretraining_heads=("lm",),
        key_map=llama_hf.key_map,
        to_config=llama_hf.hf_config_body,
        from_config=from_config,
        class_name=llama_hf.class_name,
    ),
)
