"""An encoder-decoder (t5) as two exported graphs, for format=onnx and format=pt2: the encoder
(source -> hidden states, run once per input) and the decoder (target prefix, hidden states,
source mask -> lm logits of every target position), each verified against the eager model.

The decoder graph takes no past keys and values: it reruns the target prefix at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from llmtune.export.job import ExportJob, external
from llmtune.export.manifest import write_manifest, write_readme
from llmtune.export.onnx_file import export_graph, graph_runner
from llmtune.export.verify import verify
from llmtune.models import LanguageModel
from llmtune.models.t5 import DECODER_START_ID, DecoderCache, padding_bias

ENCODER_INPUTS = ("input_ids", "attention_mask")
DECODER_INPUTS = ("decoder_input_ids", "encoder_hidden_states", "attention_mask")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2"}

_README = """Two graphs: `encoder{suffix}` maps `input_ids`, `attention_mask` [batch, source] to
`encoder_hidden_states` [batch, source, {d_model}]; `decoder{suffix}` maps `decoder_input_ids`
[batch, target] (starting with id {start}), `encoder_hidden_states` and the source's
`attention_mask` to `lm_logits` [batch, target, vocabulary]. Generate by running the encoder
once, then the decoder on the growing target (it keeps no cache), until id {eos}."""

_ONNX_CODE = """import numpy as np
import onnxruntime
from tokenizers import Tokenizer

tok = Tokenizer.from_file("tokenizer.json")
ids = np.array([tok.encode({text}, add_special_tokens=False).ids + [{eos}]], dtype=np.int64)
mask = np.ones_like(ids)
run = lambda name, feeds: onnxruntime.InferenceSession(name).run(None, feeds)[0]
states = run("encoder.onnx", {{"input_ids": ids, "attention_mask": mask}})
target = np.array([[{start}]], dtype=np.int64)
for _ in range(32):
    feeds = {{"decoder_input_ids": target, "encoder_hidden_states": states, "attention_mask": mask}}
    next_id = run("decoder.onnx", feeds)[0, -1].argmax()
    target = np.concatenate([target, [[next_id]]], axis=1)
    if next_id == {eos}:
        break
print(tok.decode(target[0, 1:].tolist()))"""

_PT2_CODE = """import torch
from tokenizers import Tokenizer

tok = Tokenizer.from_file("tokenizer.json")
ids = torch.tensor([tok.encode({text}, add_special_tokens=False).ids + [{eos}]])
mask = torch.ones_like(ids)
encoder = torch.export.load("encoder.pt2").module()
decoder = torch.export.load("decoder.pt2").module()
target = torch.tensor([[{start}]])
with torch.no_grad():
    states = encoder(ids, mask)
    for _ in range(32):
        next_id = decoder(target, states, mask)[0, -1].argmax()
        target = torch.cat([target, next_id.view(1, 1)], dim=1)
        if next_id == {eos}:
            break
print(tok.decode(target[0, 1:].tolist()))"""


class EncoderGraph(nn.Module):
    """forward(input_ids, attention_mask) -> encoder_hidden_states. Holds only the token table
    and the encoder, so the file carries no decoder weights."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.tok_emb, self.encoder = model.backbone.tok_emb, model.backbone.encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.tok_emb(input_ids), attention_mask).states


class DecoderGraph(nn.Module):
    """forward(decoder_input_ids, encoder_hidden_states, attention_mask) -> lm logits: the
    token table, the decoder (cross-attention keys and values made from the states) and the
    lm head, as T5Backbone.start_cache and decode run them."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.tok_emb, self.decoder = model.backbone.tok_emb, model.backbone.decoder
        self.lm = model.heads["lm"]

    def forward(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        cross = [b.cross_attn.memory_kv(encoder_hidden_states) for b in self.decoder.blocks]
        mask = padding_bias(attention_mask, encoder_hidden_states.dtype)
        cache = DecoderCache([], cross, mask)
        return self.lm(self.decoder(self.tok_emb(decoder_input_ids), cache))


def _dynamic(names: tuple[str, ...]) -> dict[str, dict[int, object]]:
    """Batch, source and target lengths vary (relative positions set no length limit)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    source = torch.export.Dim("source", min=1, max=1 << 20)
    target = torch.export.Dim("target", min=1, max=1 << 20)
    axes = {"decoder_input_ids": {0: batch, 1: target}}
    return {n: axes.get(n, {0: batch, 1: source}) for n in names}


def _onnx(module: nn.Module, example: tuple, names: tuple[str, ...], out: str, job) -> Callable:
    """Export `module` to `out`; a function running it in onnxruntime."""
    output = "encoder_hidden_states" if isinstance(module, EncoderGraph) else "lm_logits"
    export_graph(job, module, example, Path(out), names, [output], _dynamic(names))
    run_graph = graph_runner(job, Path(out))

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: t.numpy() for name, t in zip(names, inputs)}
        return torch.from_numpy(run_graph(feeds)[0])

    return run


def _pt2(module: nn.Module, example: tuple, names: tuple[str, ...], out: str, job) -> Callable:
    """torch.export `module` to `out`; the loaded program's module."""
    with external(job, "torch.export could not capture the model", "try format=onnx"):
        program = torch.export.export(module, example, dynamic_shapes=_dynamic(names))
        torch.export.save(program, out)
    with external(job, f"torch.export.load could not load {out}", "upgrade torch"):
        return torch.export.load(out).module()


@torch.no_grad()
def write(job: ExportJob) -> list[str]:
    """encoder.<ext> and decoder.<ext>, verified on the sample inputs: the encoder's output
    fed to the exported decoder gives the eager model's logits."""
    fmt, model = job.config.format, job.loaded.model
    exporter = _onnx if fmt == "onnx" else _pt2
    encoder, decoder = EncoderGraph(model).eval(), DecoderGraph(model).eval()
    ex = job.example
    ex_states = encoder(ex["input_ids"], ex["attention_mask"])
    files = [f"encoder{SUFFIX[fmt]}", f"decoder{SUFFIX[fmt]}"]
    example = (ex["input_ids"], ex["attention_mask"])
    run_encoder = exporter(encoder, example, ENCODER_INPUTS, str(job.out / files[0]), job)
    example = (ex["decoder_input_ids"], ex_states, ex["attention_mask"])
    run_decoder = exporter(decoder, example, DECODER_INPUTS, str(job.out / files[1]), job)
    s = job.sample
    states = run_encoder(s["input_ids"], s["attention_mask"])
    logits = run_decoder(s["decoder_input_ids"], states, s["attention_mask"])
    runtime = "onnxruntime" if fmt == "onnx" else "torch.export.load"
    line = verify(job, (logits,), f"{runtime} (encoder then decoder)")
    _readme(job, fmt)
    write_manifest(job, fmt, [*files, "tokenizer.json"], _graphs_report(line))
    sizes = ", ".join(f"{f} ({(job.out / f).stat().st_size / 1e6:.1f} MB)" for f in files)
    return [f"wrote {sizes}, tokenizer.json, README.md in {job.out}", line]


def _graphs_report(line: str) -> dict:
    return {
        "verification": line,
        "graphs": {
            "encoder": {"inputs": list(ENCODER_INPUTS), "outputs": ["encoder_hidden_states"]},
            "decoder": {"inputs": list(DECODER_INPUTS), "outputs": ["lm_logits"]},
        },
    }


def _readme(job: ExportJob, fmt: str) -> None:
    cfg, info = job.loaded.config, job.loaded.info
    keys = {"start": DECODER_START_ID, "eos": info.eos_id}
    runs = _README.format(suffix=SUFFIX[fmt], d_model=cfg.model.d_model, **keys)
    text = repr(getattr(cfg.objective, "source_prefix", "") + "The river runs north.")
    code = (_ONNX_CODE if fmt == "onnx" else _PT2_CODE).format(text=text, **keys)
    title = "ONNX export" if fmt == "onnx" else "torch.export (PT2) export"
    write_readme(job, f"{title} (encoder-decoder)", runs, code)
