"""`llmtune prune`: a trained checkpoint -> a smaller normal checkpoint at `out` (blocks, MLP
neurons and attention heads removed by importance on data.train), with parameters, size,
latency and the data.test metric before and after."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import datasets
import torch

from llmtune import checkpoint
from llmtune.adapters import merge_lora
from llmtune.config.deploy import PruneConfig
from llmtune.config.load import to_yaml
from llmtune.config.schema import MethodConfig, ModelConfig, RunConfig
from llmtune.console import console as shared_console
from llmtune.console import stage
from llmtune.errors import ConfigError
from llmtune.evaluation.measure import headline_metric, latency_ms, timing_batch, weights_mb
from llmtune.export.inference import InferenceModel
from llmtune.loading import LoadedCheckpoint, folders_of, load_checkpoint
from llmtune.prune import importance, surgery

# meta.json keys of the source that describe its own files or training, not the pruned model
_NOT_INHERITED = ("base", "files", "format_version", "llmtune_version", "step", "saved_at")


def _check(config: RunConfig) -> Path:
    config.prune.check()
    if not config.data.test:
        raise ConfigError("data.test is required: the metric before and after pruning")
    out = Path(config.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out={out}: exists and is not an empty folder; choose another")
    for folder in folders_of(config.ckpt):  # never write into what is read
        if folder.resolve() == out.resolve() or folder.resolve() in out.resolve().parents:
            raise ConfigError(
                f"out={out}: is or lies inside {folder}, which prune reads; choose a folder "
                "outside it"
            )
    return out


def _measure(loaded: LoadedCheckpoint, config: RunConfig) -> dict[str, Any]:
    model = loaded.model
    name, value, higher = headline_metric(loaded, config.data, config.evaluate, config.seed)
    batch = timing_batch(loaded, config.evaluate.batch_size, "token_type_ids" in model.input_names)
    inference = InferenceModel(model).eval()
    return {
        "n_layers": model.config.n_layers,
        "d_ff": model.config.d_ff,
        "heads": [model.config.heads_in(i) for i in range(model.config.n_layers)],
        "parameters": model.num_parameters(),
        "weights_mb": weights_mb(model),
        "latency_ms": latency_ms(inference, batch, config.prune.latency_runs),
        "batch": list(batch[0].shape),
        "metric": name,
        "value": value,
        "higher_is_better": higher,
    }


def _prune(loaded: LoadedCheckpoint, config: RunConfig) -> tuple[LoadedCheckpoint, dict]:
    model, cfg = loaded.model, config.prune
    _check_sizes(model.config, cfg)
    measured = cfg.layers or cfg.ffn_fraction or cfg.heads  # keep_every alone needs no data
    data = importance.loss_data(loaded, config) if measured else None
    keep = surgery.everything(model)
    blocks = importance.block_importance(model, data) if cfg.layers else []
    if cfg.layers:
        keep = dataclasses.replace(keep, blocks=surgery.keep_blocks(blocks, cfg.layers))
    if cfg.keep_every:
        keep = dataclasses.replace(
            keep, blocks=list(range(0, model.config.n_layers, cfg.keep_every))
        )
    n_keep = model.config.d_ff - int(round(cfg.ffn_fraction * model.config.d_ff))
    if cfg.ffn_fraction:
        neurons = surgery.keep_neurons(importance.neuron_importance(model, data), n_keep)
        keep = dataclasses.replace(keep, neurons=neurons)
    heads: list[list[float]] = []
    if cfg.heads:
        keep, heads = _drop_heads(model, data, keep, cfg.heads)
    small = surgery.pruned(model, keep, len(loaded.meta.get("labels") or []))
    run = dataclasses.replace(loaded.config, model=small.config, method=MethodConfig())
    plan = {
        "kept_blocks": keep.blocks,
        "block_importance": blocks,
        "d_ff": [model.config.d_ff, n_keep],
        "kept_heads": [keep.heads[i].tolist() for i in keep.blocks],
        "head_importance": heads,
    }
    return dataclasses.replace(loaded, model=small, config=run), plan


def _drop_heads(
    model: torch.nn.Module, data: importance.LossData, keep: surgery.Keep, n: int
) -> tuple[surgery.Keep, list[list[float]]]:
    """`keep` less the `n` least important heads of the blocks it keeps (each keeps one), and
    every block's head importance."""
    spare = sum(len(keep.heads[i]) - 1 for i in keep.blocks)
    if n > spare:
        raise ConfigError(
            f"prune.heads={n}: the {len(keep.blocks)} blocks that stay can lose at most "
            f"{spare} heads (each keeps one)"
        )
    scores = importance.head_importance(model, data)
    kept = iter(surgery.keep_heads([scores[i] for i in keep.blocks], n))
    # heads of removed blocks are not ranked: prune.heads go from the blocks that stay
    by_block = [next(kept) if i in keep.blocks else h for i, h in enumerate(keep.heads)]
    return dataclasses.replace(keep, heads=by_block), [s.tolist() for s in scores]


def _check_sizes(model: ModelConfig, cfg: PruneConfig) -> None:
    """What prune.* asks to remove exists, and something of each part stays."""
    if cfg.layers >= model.n_layers:
        raise ConfigError(
            f"prune.layers={cfg.layers}: the model has {model.n_layers} blocks; "
            "at least one must stay"
        )
    if not cfg.heads:
        return
    if not model.per_block_heads:
        raise ConfigError(
            f"prune.heads={cfg.heads}: the {model.family} family's blocks cannot lose heads "
            "(bert and gpt can); use prune.layers or prune.ffn_fraction"
        )


def _save(pruned: LoadedCheckpoint, source: LoadedCheckpoint, out: Path, report: dict) -> Path:
    meta = {k: v for k, v in source.meta.items() if k not in _NOT_INHERITED}
    meta |= {"method": "full", "pruned_from": str(source.step_dir), "pruning": report}
    contents = checkpoint.CheckpointContents(
        config_yaml=to_yaml(pruned.config),
        tokenizer_json=source.tokenizer.to_str(),
        train_state=None,
        meta=meta,
    )
    root = out / "checkpoints"
    weights = checkpoint.model_weights(pruned.model)
    step_dir = checkpoint.save(root, int(source.meta.get("step") or 0), weights, contents)
    checkpoint.mark_best(root, step_dir)
    return step_dir


def run(config: RunConfig, run_dir: Path) -> None:
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    out = _check(config)
    torch.manual_seed(config.seed)
    with stage("checkpoint", f"loading {config.ckpt}"):
        loaded = load_checkpoint(config.ckpt, torch.device("cpu"))
    if loaded.meta.get("method") in ("prefix", "prompt"):
        raise ConfigError(
            f"ckpt={config.ckpt}: a {loaded.meta['method']} checkpoint; prune its base"
        )
    merge_lora(loaded.model)  # plain Linears: what pruning cuts and what it saves
    loaded.model.float().eval()
    with stage("measure", "the checkpoint as it is"):
        before = _measure(loaded, config)
    with stage("prune", "measuring importance on data.train and removing"):
        pruned, plan = _prune(loaded, config)
    with stage("measure", "the pruned checkpoint"):
        after = _measure(pruned, config)
    report = {**plan, "before": before, "after": after}
    step_dir = _save(pruned, loaded, out, report)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    console = shared_console()
    console.print(f"prune {loaded.step_dir} -> {step_dir}")
    for line in report_lines(report):
        console.print(line, soft_wrap=True)


def report_lines(report: dict) -> list[str]:
    b, a = report["before"], report["after"]
    batch = "x".join(str(n) for n in b["batch"])
    return [
        f"blocks: {b['n_layers']} -> {a['n_layers']} (kept {report['kept_blocks']}); "
        f"MLP width: {b['d_ff']} -> {a['d_ff']}; attention heads: {sum(b['heads'])} -> "
        f"{sum(a['heads'])} (per block {a['heads']})",
        f"parameters: {b['parameters'] / 1e6:.2f}M -> {a['parameters'] / 1e6:.2f}M "
        f"({a['parameters'] / b['parameters']:.0%}); weights {b['weights_mb']:.1f} MB -> "
        f"{a['weights_mb']:.1f} MB",
        f"latency per batch of {batch} tokens (median): {b['latency_ms']:.1f} ms -> "
        f"{a['latency_ms']:.1f} ms ({b['latency_ms'] / a['latency_ms']:.2f}x)",
        f"{b['metric']} on data.test: {b['value']:.4f} -> {a['value']:.4f} "
        f"(delta {a['value'] - b['value']:+.4f})",
    ]
