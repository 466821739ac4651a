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
from llmtune.models.blocks import KV, GrowingKV, _mask_with_past, with_past
from llmtune.models.dropout import Dropout, scaled_dot_product_attention
from llmtune.models.family import Family, HFMapping, Kind
from llmtune.models.gpt import (
    CausalReadout,
    document_causal_mask,
    document_positions,
    padded_positions,
)
from llmtune.models.gpt import build_head as decoder_head
from llmtune.models.rope import RopeScaling, inverse_frequencies, rotary_tables, rotate


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


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B,Hkv,S,hd] -> [B,Hkv*n_rep,S,hd]: key/value head j serves query heads j*n_rep.."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with rotary positions, computed by SDPA (see dropout.py).

    The fused `qkv` weight is [(H + 2*Hkv) * hd, D]: the q rows, then k, then v, so it splits
    into Hugging Face's q_proj / k_proj / v_proj. The cache holds the Hkv key/value heads only.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = config.n_heads, config.kv_heads, config.head_size
        self.attn_dropout = config.attn_dropout
        width = (self.n_heads + 2 * self.n_kv) * self.hd
        self.qkv = nn.Linear(config.d_model, width, bias=config.attention_bias)
        self.proj = nn.Linear(self.n_heads * self.hd, config.d_model, config.attention_out_bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past: KV | GrowingKV | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, KV | GrowingKV]:
        """x [B,T,D]; rope = (cos, sin) for the T new positions; mask as in blocks.Attention.

        `past` = (k, v) [B,Hkv,P,hd] of P earlier positions, already rotated. With
        `use_cache` returns (y, cache): k, v including `past` (a GrowingKV grows in place).
        """
        b, t, _ = x.shape
        sizes = (self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd)
        q, k, v = self.qkv(x).split(sizes, dim=2)
        # [B,T,H*hd] -> [B,H,T,hd]: SDPA wants heads before time
        q = q.view(b, t, self.n_heads, self.hd).transpose(1, 2)
        k = k.view(b, t, self.n_kv, self.hd).transpose(1, 2)
        v = v.view(b, t, self.n_kv, self.hd).transpose(1, 2)
        q, k = rotate(q, *rope), rotate(k, *rope)
        cache: KV | GrowingKV = (k, v)
        if past is not None:
            (k, v), cache = with_past(past, k, v)
            mask, is_causal = _mask_with_past(mask, is_causal, t, k.shape[2] - t, x.device)
        n_rep = self.n_heads // self.n_kv
        # dropout only while training: SDPA applies dropout_p unconditionally
        p = self.attn_dropout if self.training else 0.0
        k_all, v_all = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # [B,H,S,hd]
        y = scaled_dot_product_attention(q, k_all, v_all, mask, is_causal, p)
        # [B,H,T,hd] -> [B,T,H*hd]
        y = self.proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.hd))
        return (y, cache) if use_cache else y


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
        self.attn = LlamaAttention(config)
        self.ln_mlp = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)
        self.dropout = Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past: KV | GrowingKV | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, KV | GrowingKV]:
        """x [B,T,D]; the rest as in `LlamaAttention.forward` (with use_cache: (x, (k, v)))."""
        a, kv = self.attn(self.ln_attn(x), rope, mask, is_causal, past, True)
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
        self.dropout = Dropout(config.dropout)
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
        if attention_mask is not None:
            if doc_ids is not None:
                raise ValueError("pass doc_ids (packed rows) or attention_mask (padding), not both")
            pos, mask = padded_positions(attention_mask, start, t)
            return self._blocks(input_ids, pos, (mask, False), past, use_cache)
        if doc_ids is not None and bool((doc_ids[:, 0] == doc_ids[:, -1]).all()):
            # every row lies inside one document (documents are contiguous): the document mask
            # equals the causal one, and without a mask SDPA takes its fused causal kernel
            doc_ids = None
        if doc_ids is None:
            pos = torch.arange(start, start + t, device=input_ids.device).unsqueeze(0)  # [1,T]
            return self._blocks(input_ids, pos, (None, True), past, use_cache)
        pos = document_positions(doc_ids) + start
        return self._blocks(input_ids, pos, (document_causal_mask(doc_ids), False), past, use_cache)

    def _blocks(
        self,
        input_ids: torch.Tensor,
        pos: torch.Tensor,
        attend: tuple[torch.Tensor | None, bool],
        past: Sequence[KV | GrowingKV] | None,
        use_cache: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, list[KV | GrowingKV]]:
        """Embed, rotate at positions `pos`, run every block with `attend` = (mask, is_causal)."""
        mask, is_causal = attend
        rope = self.rope(pos)
        x = self.dropout(self.tok_emb(input_ids))
        cache: list[KV | GrowingKV] = []
        for i, block in enumerate(self.blocks):
            layer_past = None if past is None else past[i]
            if not use_cache:  # training: a block under FSDP returns one fresh tensor, no views
                x = block(x, rope, mask, is_causal, layer_past)
                continue
            x, kv = block(x, rope, mask, is_causal, layer_past, use_cache=True)
            cache.append(kv)
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
