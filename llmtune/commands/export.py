"""`llmtune export`: a checkpoint -> a verified folder in another format (hf, onnx, torchscript,
pt2, int8, int8wo, int4wo). The folder appears at `out` only once its verification passed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import datasets
import torch

from llmtune.adapters import merge_lora
from llmtune.config.schema import RunConfig
from llmtune.console import console as shared_console
from llmtune.disk import share_like_new_files
from llmtune.errors import ConfigError, UserError
from llmtune.export import ENCODER_DECODER_WRITERS, EXTRAS, WRITERS, ExportJob, require
from llmtune.export.inference import InferenceModel, example_inputs, sample_inputs
from llmtune.loading import folders_of, load_checkpoint
from llmtune.models import Kind
from llmtune.objectives.contrastive import embedding_pooling


def _check_out(config: RunConfig) -> Path:
    """The output folder; refused before anything loads if it would overwrite work."""
    out = Path(config.out).expanduser()
    real = Path(os.path.realpath(out))
    for folder in folders_of(config.ckpt):
        source = Path(os.path.realpath(folder))
        how = "is" if real == source else "lies inside" if source in real.parents else ""
        how = how or ("contains" if real in source.parents else "")
        if how:
            raise ConfigError(
                f"out={out}: {how} {folder}, which this export reads (ckpt={config.ckpt}); "
                "choose an out folder outside it"
            )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out}: is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not config.export.overwrite:
        raise ConfigError(
            f"out={out}: folder exists and is not empty; choose another folder or set "
            "export.overwrite=true"
        )
    return out


def _build_job(config: RunConfig, staging: Path) -> ExportJob:
    loaded = load_checkpoint(config.ckpt, torch.device("cpu"))
    if loaded.model.kind == Kind.ENCODER_DECODER and config.format not in ENCODER_DECODER_WRITERS:
        raise ConfigError(
            f"format={config.format}: {loaded.family} (encoder-decoder) checkpoints export as "
            f"format={', '.join(ENCODER_DECODER_WRITERS)} only"
        )
    merge_lora(loaded.model)  # plain Linears: every format (and HF) knows those
    loaded.model.float().eval()
    sample = sample_inputs(
        loaded.tokenizer, loaded.info, loaded.model, loaded.config.model.max_seq_len
    )
    pooling = embedding_pooling(loaded.config.objective)
    inference = InferenceModel(loaded.model, pooling).eval()
    return ExportJob(loaded, inference, example_inputs(sample), sample, staging, config)


def _publish(staging: Path, out: Path) -> None:
    """Move the verified folder into place; an old `out` goes only after that succeeded."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    share_like_new_files(staging)  # safetensors writes 0600; the user's group may read it
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def run(config: RunConfig, run_dir: Path) -> None:
    datasets.disable_progress_bars()  # int8 reads data.test through the evaluate loaders
    datasets.logging.set_verbosity_error()
    out = _check_out(config)
    require(config.format, *EXTRAS.get(config.format, ()))  # fail before loading anything
    torch.manual_seed(config.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside `out` (same filesystem, so the final rename is atomic)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        job = _build_job(config, staging)
        writers = (
            WRITERS if job.loaded.model.kind != Kind.ENCODER_DECODER else ENCODER_DECODER_WRITERS
        )
        lines = writers[config.format](job)
        _publish(staging, out)
    except UserError as exc:  # name the folder the user asked for, not the staging one
        exc.args = (str(exc).replace(str(staging), str(out)),)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console = shared_console()  # no wrapping off a terminal
    console.print(f"export {job.loaded.step_dir} -> {out} (format={config.format})")
    for line in lines:
        console.print(line.replace(str(staging), str(out)))
