"""GGUF import: tiny files written with gguf's own GGUFWriter (and quantizer) in llama.cpp's
layout are read back into the weights and logits transformers gets from the same file."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from llmtune.errors import CheckpointError
from llmtune.models import from_hf_state_dict
from llmtune.models.llama import LlamaConfig
from llmtune.models.llama_gguf import (
    dequantize,
    hf_state_dict_from_gguf,
    llama_config_from_gguf,
    open_gguf,
)
from llmtune.models.rope import RopeScaling, inverse_frequencies
from tests.unit.models.test_llama import build, hf_model, ids, perturb

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType

# 256 wide so every matrix row is whole K-quant blocks (256 values); GGUF stores float32
# numbers, so norm_eps is one that float32 holds exactly
CONFIG = LlamaConfig(
    vocab_size=97, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, d_ff=256,
    max_seq_len=32, n_positions=64, rope_theta=500.0, norm_eps=2.0**-20,
)  # fmt: skip
QTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
_GGUF_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_key: str) -> str:
    stem, kind = hf_key.rsplit(".", 1)
    if stem in _GGUF_NAMES:
        return f"{_GGUF_NAMES[stem]}.{kind}"
    _, _, layer, part = stem.split(".", 3)  # model.layers.<i>.<part>
    return f"blk.{layer}.{_GGUF_NAMES[part]}.{kind}"


def interleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf's permute): rotation pairs side by side."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def random_k_blocks(qtype, rows: int, cols: int, seed: int) -> np.ndarray:
    """Valid K-quant bytes (gguf cannot quantize to K types): random quants, small fp16 scales."""
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, cols // block_values, block_bytes), dtype=np.uint8)
    scale = np.array([0.002], dtype=np.float16).view(np.uint8)
    if qtype == Q.Q4_K:  # d, dmin lead the block
        raw[..., 0:2], raw[..., 2:4] = scale, scale
    else:  # Q6_K: d ends the block
        raw[..., -2:] = scale
    return raw.reshape(rows, -1)


def encode(name: str, w: np.ndarray, qtype, seed: int) -> tuple[np.ndarray, object]:
    """(array to write, raw dtype) for a weight; norms and biases stay F32, as llama.cpp does."""
    if w.ndim == 1 or qtype == Q.F32:
        return w.astype(np.float32), None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    if qtype in (Q.Q4_K, Q.Q6_K):
        return random_k_blocks(qtype, *w.shape, seed), qtype
    return gguf.quants.quantize(w.astype(np.float32), qtype), qtype


def write_gguf(path: Path, hf_sd: dict, config: LlamaConfig, arch: str = "llama", qtype=Q.F32):
    """A GGUF file holding these HF weights as llama.cpp's converter writes them."""
    w = gguf.GGUFWriter(path, arch)
    w.add_vocab_size(config.vocab_size)
    w.add_block_count(config.n_layers)
    w.add_context_length(config.n_positions)
    w.add_embedding_length(config.d_model)
    w.add_feed_forward_length(config.d_ff)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.kv_heads)
    w.add_key_length(config.head_size)
    w.add_value_length(config.head_size)
    w.add_rope_dimension_count(config.head_size)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.norm_eps)
    for i, (key, t) in enumerate(hf_sd.items()):
        if config.tie_embeddings and key == "lm_head.weight":
            continue
        array = t.detach().float().numpy()
        if arch == "llama" and ".q_proj." in key:
            array = interleave(array, config.n_heads)
        if arch == "llama" and ".k_proj." in key:
            array = interleave(array, config.kv_heads)
        data, raw = encode(key, array, qtype, seed=i)
        w.add_tensor(gguf_name(key), data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def read_ours(path: Path):
    reader = open_gguf(path)
    config = llama_config_from_gguf(reader)
    model = build(config)
    sd = from_hf_state_dict(hf_state_dict_from_gguf(reader, config), config, ("lm",))
    model.load_state_dict(sd)
    return model


@pytest.mark.parametrize("qtype", QTYPES)
def test_weights_and_logits_equal_transformers_reading_the_same_file(tmp_path, qtype):
    hf = hf_model(CONFIG)
    perturb(hf)
    path = write_gguf(tmp_path / "m.gguf", hf.state_dict(), CONFIG, qtype=Q[qtype])
    ours = read_ours(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert ours.config == dataclasses.replace(CONFIG, max_seq_len=CONFIG.n_positions)
    theirs_sd = theirs.state_dict()
    for key, t in from_hf_state_dict(theirs_sd, CONFIG, ("lm",)).items():
        assert torch.equal(ours.state_dict()[key], t), key
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(
            ours.heads["lm"](ours(x)), theirs(x).logits, atol=1e-5, rtol=1e-5
        )
    if qtype == "F32":  # unquantized: the original model's logits, so q/k rows are in order
        with torch.no_grad():
            torch.testing.assert_close(
                ours.heads["lm"](ours(x)), hf(x).logits, atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_equals_gguf_reference_row_by_row(tmp_path, qtype):
    """A [3, 512] matrix: ours is gguf.quants.dequantize of each row's own bytes, in order."""
    rng = np.random.default_rng(0)
    original = rng.standard_normal((3, 512)).astype(np.float32)
    data, raw = encode("m", original, Q[qtype], seed=5)
    w = gguf.GGUFWriter(tmp_path / "t.gguf", "llama")
    w.add_tensor("m.weight", data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tensor = open_gguf(tmp_path / "t.gguf").tensors[0]
    ours = dequantize(tensor)
    assert ours.shape == (3, 512) and ours.dtype == torch.float32
    for row in range(3):
        ref = gguf.quants.dequantize(data[row : row + 1], Q[qtype]).astype(np.float32).reshape(-1)
        np.testing.assert_array_equal(ours[row].numpy(), ref)
    if qtype not in ("Q4_K", "Q6_K"):  # quantized from `original`: close to it
        bound = {"F32": 0, "F16": 1e-3, "BF16": 2e-2, "Q8_0": 3e-2, "Q4_0": 0.6, "Q4_1": 0.4}
        assert float((ours - torch.from_numpy(original)).abs().max()) <= bound[qtype]


def test_qwen2_file_has_biases_and_no_row_interleaving(tmp_path):
    config = dataclasses.replace(CONFIG, attention_bias=True, tie_embeddings=True)
    hf = hf_model(config)
    perturb(hf)
    path = write_gguf(tmp_path / "q.gguf", hf.state_dict(), config, arch="qwen2")
    ours = read_ours(path)
    assert ours.config.attention_bias and ours.config.tie_embeddings
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(ours.heads["lm"](ours(x)), hf(x).logits, atol=1e-5, rtol=1e-5)


def test_unreadable_quantization_type_is_named(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "q81.gguf", "llama")
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    w.add_tensor("m.weight", np.zeros((2, 2 * block_bytes), np.uint8), raw_dtype=Q.Q8_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="m.weight has quantization type Q8_1.*Q4_K"):
        dequantize(open_gguf(tmp_path / "q81.gguf").tensors[0])


def test_damaged_or_foreign_files_are_refused(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="junk.gguf: not a readable GGUF"):
        open_gguf(tmp_path / "junk.gguf")
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        open_gguf(tmp_path / "absent.gguf")
    w = gguf.GGUFWriter(tmp_path / "bert.gguf", "bert")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="architecture 'bert'"):
        llama_config_from_gguf(open_gguf(tmp_path / "bert.gguf"))


THETA = 500000.0  # Llama 3's


def _file_with_rope(
    tmp_path: Path, divisors: np.ndarray | None, linear: float = 0.0, theta: float = THETA
) -> Path:
    hf = hf_model(CONFIG)
    path = tmp_path / "rope.gguf"
    w = gguf.GGUFWriter(path, "llama")
    for key, value in (("context_length", 64), ("embedding_length", 256), ("block_count", 2)):
        w.add_uint32(f"llama.{key}", value)
    w.add_feed_forward_length(256)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(theta)
    if linear:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(linear)
    if divisors is not None:
        w.add_tensor("rope_freqs.weight", divisors.astype(np.float32))
    w.add_tensor("token_embd.weight", hf.state_dict()["model.embed_tokens.weight"].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_rope_scaling_is_read_from_metadata_and_rope_freqs(tmp_path):
    """llama.cpp writes linear scaling as metadata and llama3 scaling as a rope_freqs tensor
    of per-frequency divisors; both come back as the same RopeScaling."""
    plain = inverse_frequencies(64, THETA, RopeScaling(), 0, 0)
    for factor in (8.0, 32.0):
        llama3 = RopeScaling("llama3", factor, 1.0, 4.0, 8192)
        divisors = (plain / inverse_frequencies(64, THETA, llama3, 0, 0)).numpy()
        config = llama_config_from_gguf(open_gguf(_file_with_rope(tmp_path, divisors)))
        assert config.rope_scaling == llama3
    # a slow theta leaves every wavelength inside the band: the factor is still recovered
    plain = inverse_frequencies(64, 500.0, RopeScaling(), 0, 0)
    divisors = (plain / inverse_frequencies(64, 500.0, llama3, 0, 0)).numpy()
    assert 1.0 < divisors.max() < 32.0
    config = llama_config_from_gguf(open_gguf(_file_with_rope(tmp_path, divisors, theta=500.0)))
    assert config.rope_scaling == llama3
    config = llama_config_from_gguf(open_gguf(_file_with_rope(tmp_path, None, linear=4.0)))
    assert config.rope_scaling == RopeScaling("linear", 4.0)
    with pytest.raises(CheckpointError, match="rope_freqs match no known llama3 scaling"):
        llama_config_from_gguf(open_gguf(_file_with_rope(tmp_path, divisors**0.5, theta=500.0)))
