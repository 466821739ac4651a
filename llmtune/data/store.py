"""Prepared token stores: a corpus split tokenized once into memory-mapped shards (uint16 when
the vocabulary fits, else uint32) with a document index, named by the split's fingerprint and
the tokenizer's hash, and committed by an atomic rename so a store is whole or absent."""

from __future__ import annotations

import array
import hashlib
import json
import mmap
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from llmtune.errors import DataError

STORE_VERSION = 1
MANIFEST = "manifest.json"
RELEASE_EVERY = 256  # reads between handing back the pages they mapped (see TokenStore)
SHARD_TOKENS = 1 << 28  # tokens per shard file at most (512 MiB at uint16), unless one document
_BUILDING = ".building-"  # a store being written: <prefix><key>-<host>-<pid>-<random>


def store_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids below 65,536 (2 bytes a token); larger vocabularies take uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def store_key(split_fingerprint: str, tokenizer_hash: str) -> str:
    """The store's folder name: the content address of (text split, tokenizer, format)."""
    fields = [STORE_VERSION, split_fingerprint, tokenizer_hash]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:24]


class TokenStore:
    """A committed store, read-only: documents' tokens back to back in global coordinates.

    Only the document index (8 bytes per document) is read into memory; tokens stay in the
    memory-mapped shards, so a window costs the pages it touches, whatever the corpus size.
    Every RELEASE_EVERY reads the mapped pages are handed back (madvise DONTNEED): they stay
    in the page cache, but a long run's resident set does not creep up to the store's size.
    Pickles as its path (loader workers map the files themselves).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.n_docs = int(self.manifest["n_docs"])
        self.n_tokens = int(self.manifest["n_tokens"])
        self._maps: list[np.ndarray] | None = None
        self._mmaps: list[mmap.mmap] = []
        self._reads = 0
        self._starts: np.ndarray | None = None
        shard_tokens = [int(s["n_tokens"]) for s in self.manifest["shards"]]
        self._bases = np.concatenate([[0], np.cumsum(shard_tokens, dtype=np.int64)])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Path(state["path"]))

    @property
    def nbytes(self) -> int:
        """Bytes on disk: token shards plus document index."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def doc_starts(self) -> np.ndarray:
        """int64 [n_docs + 1]: where each document starts, and the total at the end."""
        if self._starts is None:
            parts = [np.zeros(1, dtype=np.int64)]
            for base, shard in zip(self._bases, self.manifest["shards"], strict=False):
                offsets = _load_offsets(self.path, shard["offsets"])
                _check(
                    len(offsets) == int(shard["n_docs"]) + 1
                    and offsets[0] == 0
                    and offsets[-1] == int(shard["n_tokens"])
                    and bool(np.all(np.diff(offsets) >= 0)),
                    self.path,
                    shard["offsets"],
                )
                parts.append(offsets[1:] + base)
            self._starts = np.concatenate(parts)
            _check(int(self._starts[-1]) == self.n_tokens, self.path, "the document index")
        return self._starts

    def doc_lengths(self) -> np.ndarray:
        """int64 [n_docs]: tokens in each document."""
        return np.diff(self.doc_starts())

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) in global coordinates as int64 (they may span shards)."""
        maps = self._open_maps()
        self._reads += 1
        if self._reads % RELEASE_EVERY == 0 and hasattr(mmap, "MADV_DONTNEED"):
            for mapped in self._mmaps:
                mapped.madvise(mmap.MADV_DONTNEED)
        first = int(np.searchsorted(self._bases, start, side="right")) - 1
        pieces = []
        shard = max(first, 0)
        while start < end:
            base, limit = int(self._bases[shard]), int(self._bases[shard + 1])
            stop = min(end, limit)
            pieces.append(maps[shard][start - base : stop - base])
            start, shard = stop, shard + 1
        if not pieces:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(pieces).astype(np.int64)

    def verify(self) -> None:
        """Check the files against the manifest without reading tokens: every shard's size,
        and the document index (read here once; windows need it anyway). StoreDamaged if not."""
        shards = self.manifest["shards"]
        _check(sum(int(s["n_docs"]) for s in shards) == self.n_docs, self.path, "n_docs")
        for shard in shards:
            file = self.path / shard["tokens"]
            size = file.stat().st_size if file.is_file() else -1
            _check(size == int(shard["n_tokens"]) * self.dtype.itemsize, self.path, shard["tokens"])
        self.doc_starts()

    def document(self, index: int) -> np.ndarray:
        starts = self.doc_starts()
        return self.tokens(int(starts[index]), int(starts[index + 1]))

    def _open_maps(self) -> list[np.ndarray]:
        if self._maps is None:
            maps = []
            for shard in self.manifest["shards"]:
                file = self.path / shard["tokens"]
                n = int(shard["n_tokens"])
                _check(file.stat().st_size == n * self.dtype.itemsize, self.path, shard["tokens"])
                if n == 0:  # an empty file cannot be mapped (a shard of empty documents)
                    maps.append(np.zeros(0, dtype=self.dtype))
                    continue
                with open(file, "rb") as f:
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                self._mmaps.append(mapped)
                maps.append(np.frombuffer(mapped, dtype=self.dtype))
            self._maps = maps
        return self._maps


class StoreDamaged(DataError):
    """A store whose files do not match its manifest (truncated, missing, overwritten)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = Path(path), what
        super().__init__(
            f"token store {path} is damaged ({what}); delete the folder and run "
            "`llmtune prepare` (or the pretrain) again"
        )


def _check(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise StoreDamaged(path, f"{what} does not match its manifest")


def _load_offsets(path: Path, name: str) -> np.ndarray:
    try:
        offsets = np.load(path / name, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # missing, truncated or not an .npy file
        raise StoreDamaged(path, f"cannot read {name}: {type(exc).__name__}") from None
    _check(offsets.ndim == 1 and offsets.dtype == np.int64 and len(offsets) > 0, path, name)
    return offsets


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise StoreDamaged(path, f"cannot read {MANIFEST}: {type(exc).__name__}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != STORE_VERSION:
        version = manifest.get("version") if isinstance(manifest, dict) else None
        raise StoreDamaged(path, f"format version {version}, this llmtune reads {STORE_VERSION}")
    shards = manifest.get("shards")
    whole = all(k in manifest for k in ("dtype", "n_docs", "n_tokens")) and isinstance(shards, list)
    fields = ("tokens", "offsets", "n_docs", "n_tokens")
    if not whole or not all(isinstance(s, dict) and all(k in s for k in fields) for s in shards):
        raise StoreDamaged(path, f"{MANIFEST} lacks fields")
    return manifest


def open_store(root: Path, key: str, repair: bool = False) -> TokenStore | None:
    """The committed store `key` under `root`, checked against its manifest; None when absent.
    A damaged one raises StoreDamaged, or with `repair` is said in one warning line and
    removed, so the caller builds it again."""
    path = Path(root) / key
    if not path.exists():
        return None
    try:
        store = TokenStore(path)
        store.verify()
        return store
    except StoreDamaged as exc:
        if not repair:
            raise
        print(f"warning: the token store {path} is damaged ({exc.what}); building it again")
    # renamed aside first: the key's folder disappears at once and the rebuild can take it
    aside = Path(root) / f".damaged-{key}-{uuid.uuid4().hex[:8]}"
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)
    return None


class StoreWriter:
    """Writes one store into a hidden folder beside its final place; `commit` renames it into
    place (another process that committed the same key first wins: the stores are equal)."""

    def __init__(self, root: Path, key: str, dtype: np.dtype, info: dict[str, Any]) -> None:
        self.root, self.key, self.dtype, self.info = Path(root), key, np.dtype(dtype), info
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(self.root, key)
        owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = self.root / f"{_BUILDING}{key}-{owner}"
        self.tmp.mkdir()
        self.shards: list[dict[str, Any]] = []
        self._file: Any = None
        self._offsets = array.array("q", [0])
        self.started = time.perf_counter()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is not None:
            self.abort()

    @property
    def n_docs(self) -> int:
        return sum(s["n_docs"] for s in self.shards) + len(self._offsets) - 1

    @property
    def n_tokens(self) -> int:
        return sum(s["n_tokens"] for s in self.shards) + self._offsets[-1]

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents: their tokens back to back (`flat`) and each one's length."""
        ends = np.cumsum(lengths, dtype=np.int64)
        done_docs, done_tokens = 0, 0
        while done_docs < len(lengths):
            room = SHARD_TOKENS - self._offsets[-1]
            fits = int(np.searchsorted(ends[done_docs:] - done_tokens, room, side="right"))
            if fits == 0 and len(self._offsets) > 1:
                self._close_shard()  # full: the next documents start a new shard
                continue
            fits = max(fits, 1)  # a document longer than a shard gets one to itself
            stop = int(ends[done_docs + fits - 1])
            self._write(flat[done_tokens:stop], ends[done_docs : done_docs + fits] - done_tokens)
            done_docs, done_tokens = done_docs + fits, stop

    def _write(self, tokens: np.ndarray, local_ends: np.ndarray) -> None:
        if self._file is None:
            name = f"tokens-{len(self.shards):05d}.bin"
            self._file = open(self.tmp / name, "wb")  # noqa: SIM115  (closed by _close_shard)
        base = self._offsets[-1]
        self._file.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._offsets.extend(int(e) + base for e in local_ends)

    def _close_shard(self) -> None:
        index = len(self.shards)
        if self._file is None:
            (self.tmp / f"tokens-{index:05d}.bin").touch()
        else:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        offsets_name = f"offsets-{index:05d}.npy"
        np.save(self.tmp / offsets_name, np.frombuffer(self._offsets, dtype=np.int64))
        _fsync(self.tmp / offsets_name)
        self.shards.append(
            {
                "tokens": f"tokens-{index:05d}.bin",
                "offsets": offsets_name,
                "n_docs": len(self._offsets) - 1,
                "n_tokens": int(self._offsets[-1]),
            }
        )
        self._offsets = array.array("q", [0])

    def commit(self) -> TokenStore:
        """Finish the files, write the manifest last, and rename the folder into place."""
        if len(self._offsets) > 1 or not self.shards:
            self._close_shard()
        manifest = {
            "version": STORE_VERSION,
            "dtype": self.dtype.name,
            "n_docs": sum(s["n_docs"] for s in self.shards),
            "n_tokens": sum(s["n_tokens"] for s in self.shards),
            "shards": self.shards,
            "seconds": round(time.perf_counter() - self.started, 3),
            # who built it: under several processes, rank 0 (or a node's first rank) only
            "built_by": {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "rank": int(os.environ.get("RANK", "0")),
            },
            **self.info,
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync(self.tmp / MANIFEST)
        _fsync(self.tmp)
        final = self.root / self.key
        try:
            os.rename(self.tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)  # committed by another process first
        _fsync(self.root)
        return TokenStore(final)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_abandoned(root: Path, key: str) -> None:
    """Delete half-written folders of `key` whose writer (on this host) no longer runs."""
    host = socket.gethostname()
    for folder in root.glob(f"{_BUILDING}{key}-*"):
        owner, pid, _ = (folder.name[len(_BUILDING) + len(key) + 1 :].rsplit("-", 2) + ["", ""])[:3]
        if owner == host and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
