"""Loading the raw text corpus (files, Hub or built-in), cleaning it and splitting off validation.

Every split comes back as a `datasets.Dataset` with exactly one column, "text".
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import datasets
import numpy as np

from llmtune.config.schema import DataConfig
from llmtune.data.builtin import load_builtin
from llmtune.data.diagnose import explain
from llmtune.errors import DataError

# File extension -> `datasets` packaged builder. Compressed files are read through by datasets.
_BUILDERS = {
    ".txt": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
# A blank line (possibly holding spaces or tabs) ends a document in a .txt file.
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def cache_root(cfg: DataConfig) -> Path:
    """Where llmtune caches datasets, tokenizers and tokenized splits."""
    root = cfg.cache_dir or os.environ.get("LLMTUNE_CACHE") or "~/.cache/llmtune"
    return Path(root).expanduser()


def load_corpus(cfg: DataConfig, seed: int) -> dict[str, datasets.Dataset]:
    """Load, clean and split the corpus: keys "train", "validation" and, if configured, "test"."""
    splits = {"train": _load_split(cfg, "train")}
    if cfg.validation:
        splits["validation"] = _load_split(cfg, "validation")
    else:
        splits["train"], splits["validation"] = carve_validation(
            splits["train"], cfg.validation_fraction, seed
        )
    if cfg.test:
        splits["test"] = _load_split(cfg, "test")
    return splits


def carve_validation(
    train: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split `fraction` of train (at least one document) off as validation, fixed by `seed`."""
    n = len(train)
    if n < 2:
        raise DataError(
            f"data.train: only {n} document(s), too few to carve out a validation split; "
            "add documents or set data.validation"
        )
    n_val = min(n - 1, max(1, round(fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    # Sorted indices keep each split in corpus order (contiguous reads, stable packing).
    val_idx = np.sort(order[:n_val])
    train_idx = np.sort(order[n_val:])
    return train.select(train_idx), train.select(val_idx)


def _load_split(cfg: DataConfig, key: str) -> datasets.Dataset:
    """Load one split named by config key ("train", "validation", "test") and clean it."""
    if cfg.source == "builtin":
        if key != "train":
            raise DataError(
                f"data.{key}: the builtin corpus has no {key} files; leave data.{key} empty "
                "or use data.source=files"
            )
        raw, paragraphs = load_builtin(), False
    elif cfg.source == "files":
        raw, paragraphs = _load_files(cfg, key)
    elif cfg.source == "hub":
        raw, paragraphs = _load_hub(cfg, key), False
    else:
        raise DataError(f"data.source={cfg.source!r} is unknown; use builtin, files or hub")
    return _clean(raw, cfg, key, paragraphs)


def _resolve_files(pattern: str, key: str) -> list[str]:
    """Expand a path, directory or glob into a sorted list of files."""
    if not pattern:
        raise DataError(f"data.{key}: no path given; set data.{key}=<path or glob>")
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and _format_of(p.name))
    else:
        files = sorted(f for f in glob.glob(str(path), recursive=True) if os.path.isfile(f))
    if not files:
        raise DataError(f"data.{key}: no files match '{pattern}'; check the path or glob")
    return files


def _format_of(name: str) -> str | None:
    """The extension that picks the reader (".txt", ".csv", ...), ignoring compression suffixes."""
    lower = name.lower()
    for comp in _COMPRESSION:
        if lower.endswith(comp):
            lower = lower[: -len(comp)]
    ext = os.path.splitext(lower)[1]
    return ext if ext in _BUILDERS else None


def read_files(
    cfg: DataConfig, key: str, tables_only: bool = False
) -> tuple[datasets.Dataset, list[str], str]:
    """(dataset, files, builder) of data.<key>'s local files, read by the matching `datasets`
    builder (which caches the Arrow conversion); `tables_only` refuses .txt (labelled data).
    .txt files come as blank-line-separated paragraphs in a "text" column."""
    files = _resolve_files(getattr(cfg, key), key)
    formats = {_format_of(f) for f in files}
    kinds = (
        ".json, .jsonl, .csv or .parquet"
        if tables_only
        else ".txt, .json, .jsonl, .csv or .parquet"
    )
    if None in formats or (tables_only and ".txt" in formats):
        bad = next(f for f in files if _format_of(f) in (None, ".txt"))
        raise DataError(f"data.{key}: unsupported file type '{bad}'; use {kinds}")
    builders = {_BUILDERS[ext] for ext in formats}
    if len(builders) > 1:
        raise DataError(
            f"data.{key}: mixes file types ({', '.join(sorted(formats))}); use one format per split"
        )
    builder = builders.pop()
    # .txt: read blank-line-separated paragraphs; _clean splits them further on blank lines.
    extra = {"sample_by": "paragraph"} if builder == "text" else {}
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # failures are reported below
    try:
        ds = datasets.load_dataset(
            builder,
            data_files={"train": files},
            split="train",
            cache_dir=str(cache_root(cfg) / "datasets"),
            **extra,
        )
    except Exception as exc:  # datasets/pyarrow raise many types; the user needs one line
        for name in files:
            problem = explain(Path(name))
            if problem:
                raise DataError(f"data.{key}: '{name}': {problem}") from None
        raise DataError(f"data.{key}: cannot read {_describe(files)}: {_one_line(exc)}") from exc
    return ds, files, builder


def _load_files(cfg: DataConfig, key: str) -> tuple[datasets.Dataset, bool]:
    """One split of local files as a "text" column; True when it holds .txt paragraphs."""
    ds, files, builder = read_files(cfg, key)
    if builder == "text":
        return ds, True
    return _text_column(ds, cfg.text_column, key, _describe(files)), False


def _load_hub(cfg: DataConfig, key: str) -> datasets.Dataset:
    """Load a Hub split: data.split names the training split, data.validation/test the others."""
    if not cfg.name:
        raise DataError("data.name: empty; set data.name=<hub dataset> or use data.source=files")
    split = cfg.split if key == "train" else getattr(cfg, key)
    try:
        ds = datasets.load_dataset(
            cfg.name,
            cfg.config or None,
            split=split,
            cache_dir=str(cache_root(cfg) / "datasets"),
        )
    except Exception as exc:  # offline, unknown name, bad split: all end the run the same way
        if _offline() or _is_connection_error(exc):
            raise DataError(
                f"data.name={cfg.name}: cannot reach the Hugging Face Hub (offline) and the "
                "dataset is not cached; use data.source=files with local files, or go online once"
            ) from exc
        raise DataError(
            f"data.name={cfg.name}: cannot load split '{split}': {_one_line(exc)}"
        ) from exc
    if isinstance(ds, datasets.DatasetDict | datasets.IterableDataset):
        raise DataError(f"data.split={split!r}: must name one split of {cfg.name}, e.g. train")
    return _text_column(ds, cfg.text_column, key, cfg.name)


def _offline() -> bool:
    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def _is_connection_error(exc: BaseException | None) -> bool:
    """True when the failure (or its cause) is a network problem rather than a bad name."""
    while exc is not None:
        name = type(exc).__name__
        if isinstance(exc, ConnectionError) or any(w in name for w in ("Connect", "Timeout")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _text_column(ds: datasets.Dataset, column: str, key: str, where: str) -> datasets.Dataset:
    """Keep only the text column, renamed to "text"; refuse a missing or non-string column."""
    if column not in ds.column_names:
        raise DataError(
            f"data.{key}: no column '{column}' in {where}; available columns: "
            f"{', '.join(ds.column_names)}; set data.text_column"
        )
    feature = ds.features[column]
    if getattr(feature, "dtype", None) not in {"string", "large_string"}:
        raise DataError(
            f"data.{key}: column '{column}' in {where} holds {feature}, not text; "
            "set data.text_column to a string column"
        )
    ds = ds.select_columns([column])
    return ds.rename_column(column, "text") if column != "text" else ds


def _clean_batch(batch: dict, min_chars: int, paragraphs: bool) -> dict:
    """Strip documents, split .txt paragraphs on blank lines, drop those under min_chars."""
    out: list[str] = []
    for text in batch["text"]:
        pieces = _BLANK_LINE.split(text) if (paragraphs and text) else [text or ""]
        out.extend(s for p in pieces if len(s := p.strip()) >= min_chars and s)
    return {"text": out}


def _clean(ds: datasets.Dataset, cfg: DataConfig, key: str, paragraphs: bool) -> datasets.Dataset:
    """Strip, drop short documents, optionally dedupe exactly, cap at max_docs."""
    ds = ds.map(
        _clean_batch,
        batched=True,
        fn_kwargs={"min_chars": cfg.min_chars, "paragraphs": paragraphs},
        remove_columns=ds.column_names,
        num_proc=cfg.num_proc if cfg.num_proc > 1 else None,
        desc=f"cleaning {key}",
    )
    if cfg.dedupe:
        ds = _dedupe(ds)
    if cfg.max_docs and len(ds) > cfg.max_docs:
        ds = ds.select(range(cfg.max_docs))
    if len(ds) == 0:
        raise DataError(
            f"data.{key}: 0 documents left after cleaning (min_chars={cfg.min_chars}, "
            f"dedupe={cfg.dedupe}); check the files, data.text_column and data.min_chars"
        )
    return ds


def _dedupe(ds: datasets.Dataset) -> datasets.Dataset:
    """Keep the first occurrence of each exact document text."""
    seen: set[str] = set()
    keep: list[int] = []
    for start in range(0, len(ds), 10_000):
        for i, text in enumerate(ds[start : start + 10_000]["text"], start=start):
            if text not in seen:
                seen.add(text)
                keep.append(i)
    return ds if len(keep) == len(ds) else ds.select(keep)


def _describe(files: list[str]) -> str:
    return f"'{files[0]}'" + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")


def _one_line(exc: BaseException) -> str:
    """First line of an exception message, short enough for a one-line error."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:200]}"
