"""Packed token shards: ``train.bin`` + ``val.bin`` + ``meta.json`` + ``tokenizer.json`` in one directory.

The ``.bin`` files are flat little-endian uint16 (uint32 when the vocabulary exceeds 65535)
arrays of token ids, each document followed by the end-of-document token; readers memory-map
them. The writer streams into a temporary sibling directory and renames it into place only
when complete, so a crash leaves the previous shard directory (if any) untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from headstart.errors import HeadstartError

FORMAT = "headstart-token-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_COPY_TOKENS = 1 << 22


@dataclass
class SplitStats:
    """What one split holds: tokens (eod included), documents, and UTF-8 bytes of text."""

    tokens: int = 0
    documents: int = 0
    bytes: int = 0


def check_out_dir(out: Path) -> None:
    """Refuse an output path that exists and is not an (empty or) shard directory, before any work."""
    if out.is_file():
        raise HeadstartError(f"out {out}: is a file; expected a directory for the shards")
    if out.is_dir() and any(out.iterdir()) and _format_of(out / META_FILE) != FORMAT:
        raise HeadstartError(f"out {out}: exists and is not a shard directory; expected a new or shard path")


def _format_of(meta: Path) -> str | None:
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return None


class ShardWriter:
    """Stream token arrays into a shard directory; use as a context manager, then ``commit``."""

    def __init__(self, out: str | Path, dtype: np.dtype) -> None:
        self.out = Path(out)
        self.dtype = np.dtype(dtype)
        self.stats = {s: SplitStats() for s in SPLITS}
        self.tmp: Path | None = None
        self._files: dict[str, BinaryIO] = {}

    def __enter__(self) -> ShardWriter:
        check_out_dir(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self._files = {s: open(self.tmp / f"{s}.bin", "wb") for s in SPLITS}  # noqa: SIM115
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for f in self._files.values():
            f.close()
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp)

    def write(self, split: str, tokens: np.ndarray, documents: int, nbytes: int) -> None:
        """Append ``tokens`` (already eod-separated) holding ``documents`` documents of ``nbytes`` bytes."""
        self._files[split].write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        s = self.stats[split]
        s.tokens += len(tokens)
        s.documents += documents
        s.bytes += nbytes

    def move_tail(self, n_val: int, eod_id: int, token_bytes: np.ndarray) -> None:
        """Move the last ``n_val`` train tokens to val, chunk by chunk, and truncate train.

        Val documents are the eod tokens moved; a document cut in two counts in both splits.
        Bytes moved are ``token_bytes`` summed over the moved ids (exact for lossless tokenizers).
        """
        train, val = self.stats["train"], self.stats["val"]
        if val.tokens or not 0 <= n_val <= train.tokens:
            raise ValueError("move_tail needs an empty val split and n_val <= train tokens")
        assert self.tmp is not None
        self._files["train"].flush()
        n_train = train.tokens - n_val
        item = self.dtype.itemsize
        eods = moved_bytes = 0
        with open(self.tmp / "train.bin", "rb") as src:
            if n_train:
                src.seek((n_train - 1) * item)
                cut_mid_document = int(np.frombuffer(src.read(item), dtype=self.dtype)[0]) != eod_id
            else:
                cut_mid_document = False
            src.seek(n_train * item)
            while chunk := src.read(_COPY_TOKENS * item):
                ids = np.frombuffer(chunk, dtype=self.dtype)
                eods += int(np.count_nonzero(ids == eod_id))
                moved_bytes += int(token_bytes[ids].sum())
                self._files["val"].write(chunk)
        self._files["train"].truncate(n_train * item)
        self._files["train"].seek(n_train * item)
        self.stats["val"] = SplitStats(n_val, eods, moved_bytes)
        self.stats["train"] = SplitStats(n_train, train.documents - eods + cut_mid_document, train.bytes - moved_bytes)

    def commit(self, tokenizer_json: str, meta: dict[str, Any]) -> Path:
        """Write meta.json (``meta`` plus format, dtype and split stats) and the tokenizer; swap into place.

        ``meta`` should hold at least ``tokenizer_hash``, ``vocab_size`` and ``eod_id``.
        """
        assert self.tmp is not None
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        dtype_name = next(name for name, dt in DTYPES.items() if dt == self.dtype)
        splits = {s: asdict(v) for s, v in self.stats.items()}
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dtype": dtype_name,
            "splits": splits,
        } | meta
        (self.tmp / META_FILE).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (self.tmp / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
        old = self.out.with_name(f".{self.out.name}.old-{uuid.uuid4().hex[:8]}")
        if self.out.exists():
            self.out.rename(old)
        try:
            self.tmp.rename(self.out)
        except OSError:
            if old.exists():
                old.rename(self.out)
            raise
        if old.exists():
            shutil.rmtree(old)
        return self.out


# ----------------------------------------------------------------------------- reading


@dataclass
class TokenShards:
    """An opened shard directory: ``train`` / ``val`` are read-only memory maps."""

    path: Path
    meta: dict[str, Any]
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eod_id(self) -> int:
        return int(self.meta["eod_id"])

    @property
    def tokenizer_hash(self) -> str:
        return str(self.meta["tokenizer_hash"])

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    def documents(self, name: str, min_tokens: int = 1) -> list[np.ndarray]:
        """The split's documents (views, end-of-document tokens dropped) of at least ``min_tokens``."""
        tokens = self.split(name)
        ends = np.flatnonzero(tokens == self.eod_id)
        documents = (doc[:-1] if len(doc) and doc[-1] == self.eod_id else doc for doc in np.split(tokens, ends + 1))
        return [doc for doc in documents if len(doc) >= min_tokens]

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise HeadstartError(f"shards {self.path}: no split {name!r}; expected one of {', '.join(SPLITS)}")
        return self.train if name == "train" else self.val


def open_shards(path: str | Path) -> TokenShards:
    """Open and validate a shard directory (meta present, known version, file sizes match meta)."""
    root = Path(path)
    if not root.is_dir():
        raise HeadstartError(f"shards {root}: no such directory; expected the out dir of `headstart prepare`")
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise HeadstartError(f"shards {root}: no {META_FILE}; expected the out dir of `headstart prepare`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        version = meta["format_version"]
        dtype = DTYPES[meta["dtype"]]
        counts = {s: int(meta["splits"][s]["tokens"]) for s in SPLITS}
        for key in ("vocab_size", "eod_id", "tokenizer_hash"):
            meta[key]
    except (ValueError, KeyError, TypeError) as exc:
        raise HeadstartError(f"shards {meta_path}: unreadable or incomplete ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT or version != FORMAT_VERSION:
        raise HeadstartError(
            f"shards {root}: format {meta.get('format')!r} version {version!r}; "
            f"this headstart reads {FORMAT} version {FORMAT_VERSION} (re-run headstart prepare)"
        )
    arrays = {}
    for split, tokens in counts.items():
        file = root / f"{split}.bin"
        expected = tokens * dtype.itemsize
        actual = file.stat().st_size if file.is_file() else None
        if actual != expected:
            found = "it is missing" if actual is None else f"found {actual:,} bytes"
            raise HeadstartError(
                f"shards {file}: expected {expected:,} bytes ({tokens:,} {meta['dtype']} tokens per "
                f"meta.json), {found}; the shard is truncated or corrupted (re-run headstart prepare)"
            )
        arrays[split] = np.memmap(file, dtype=dtype, mode="r") if tokens else np.zeros(0, dtype=dtype)
    return TokenShards(root, meta, arrays["train"], arrays["val"])
