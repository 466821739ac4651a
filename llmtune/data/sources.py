"""Raw text from files, the Hub or the built-in corpus, read by `datasets` and handed on in
batches; also the cache folder and the seeded validation carve-out of labelled tables."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from llmtune.config.schema import DataConfig
from llmtune.data.builtin import builtin_documents
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


def cache_root(cfg: DataConfig) -> Path:
    """Where llmtune caches datasets, tokenizers and tokenized splits."""
    root = cfg.cache_dir or os.environ.get("LLMTUNE_CACHE") or "~/.cache/llmtune"
    return Path(root).expanduser()


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


@dataclass
class RawText:
    """The uncleaned documents of one data.<key>: a column of a `datasets` table (read from its
    Arrow files in batches, never mapped whole), a stream, or a list (the built-in corpus)."""

    table: datasets.Dataset | datasets.IterableDataset | None
    texts: list[str] | None
    column: str
    paragraphs: bool  # .txt: split each row further on blank lines


def raw_text(cfg: DataConfig, key: str) -> RawText:
    """Load data.<key> ("train", "validation", "test") of data.source, uncleaned."""
    if cfg.source == "builtin":
        if key != "train":
            raise DataError(
                f"data.{key}: the builtin corpus has no {key} files; leave data.{key} empty "
                "or use data.source=files"
            )
        return RawText(None, builtin_documents(), "text", False)
    if cfg.source == "files":
        ds, files, builder = read_files(cfg, key)
        if builder == "text":
            return RawText(ds, None, "text", True)
        return RawText(ds, None, _text_column(ds, cfg.text_column, key, _describe(files)), False)
    if cfg.source == "hub":
        ds = _load_hub(cfg, key)
        return RawText(ds, None, _text_column(ds, cfg.text_column, key, cfg.name), False)
    raise DataError(f"data.source={cfg.source!r} is unknown; use builtin, files or hub")


def iter_raw_batches(raw: RawText, batch_size: int) -> Iterator[list[str | None]]:
    """The raw documents in order, in batches. Arrow cache files are read record batch by
    record batch through plain reads, so the text never stays resident in this process
    (a memory map would keep every page it touched)."""
    if raw.texts is not None:
        for start in range(0, len(raw.texts), batch_size):
            yield raw.texts[start : start + batch_size]
        return
    table = raw.table
    files = [] if isinstance(table, datasets.IterableDataset) else table.cache_files
    if files and getattr(table, "_indices", None) is None:
        for entry in files:
            with pa.OSFile(entry["filename"]) as f:
                for batch in pa.ipc.open_stream(f):
                    yield batch.column(raw.column).to_pylist()
        return
    for batch in table.select_columns([raw.column]).iter(batch_size=batch_size):
        yield batch[raw.column]


def files_fingerprint(cfg: DataConfig, key: str) -> list:
    """What identifies data.<key>'s files without reading them: path, size, mtime of each."""
    files, builder = checked_files(cfg, key)
    stats = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return [builder, stats]


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
    files, builder = checked_files(cfg, key, tables_only)
    # .txt: read blank-line-separated paragraphs; corpus.py splits them further on blank lines.
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


def checked_files(cfg: DataConfig, key: str, tables_only: bool = False) -> tuple[list[str], str]:
    """(files, `datasets` builder) of data.<key>: one supported format, at least one file."""
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
    return files, builders.pop()


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
            streaming=cfg.streaming,
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
    if isinstance(ds, datasets.DatasetDict | datasets.IterableDatasetDict):
        raise DataError(f"data.split={split!r}: must name one split of {cfg.name}, e.g. train")
    return ds


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


def _text_column(
    ds: datasets.Dataset | datasets.IterableDataset, column: str, key: str, where: str
) -> str:
    """`column`, checked: present in the table and holding text (a stream whose columns are
    unknown until read is checked as it is read)."""
    if ds.column_names is None:
        return column
    if column not in ds.column_names:
        raise DataError(
            f"data.{key}: no column '{column}' in {where}; available columns: "
            f"{', '.join(ds.column_names)}; set data.text_column"
        )
    feature = ds.features[column] if ds.features else None
    if feature is not None and getattr(feature, "dtype", None) not in {"string", "large_string"}:
        raise DataError(
            f"data.{key}: column '{column}' in {where} holds {feature}, not text; "
            "set data.text_column to a string column"
        )
    return column


def _describe(files: list[str]) -> str:
    return f"'{files[0]}'" + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")


def _one_line(exc: BaseException) -> str:
    """First line of an exception message, short enough for a one-line error."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:200]}"
