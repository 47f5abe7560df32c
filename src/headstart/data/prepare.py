"""``headstart prepare``: raw inputs -> tokenizer -> packed token shards, streaming end to end.

Documents are read once to train the tokenizer (unless one is given) and once to encode them.
Encoding runs in spawned worker processes on chunks of documents; results are written in
submission order, so the shards are byte-identical whatever the worker count.

Train/val split, in order of precedence:

* ``val_inputs`` given: they are val, all of ``inputs`` is train.
* ``val_mode="documents"``: document ``i`` is val when a fixed hash of ``i`` (splitmix64) falls
  below ``val_fraction``; the tokenizer trains on the train documents only.
* ``val_mode="tail"``: the last ``val_fraction`` of the tokens are val (a document cut in two
  counts in both splits); the tokenizer trains on everything, as the tail is known only
  after encoding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

from headstart.config import PrepareConfig
from headstart.data.extend_vocab import extend_tokenizer
from headstart.data.shards import ShardWriter, SplitStats, check_out_dir
from headstart.data.sources import (
    ReadOptions,
    SkipLog,
    Source,
    describe_sources,
    iter_documents,
    resolve_inputs,
)
from headstart.data.tokenizers import (
    TokenizerInfo,
    encode_documents,
    load_tokenizer,
    token_bytes,
    token_dtype,
    tokenizer_from_str,
    tokenizer_info,
    train_tokenizer,
    utf8_len,
)
from headstart.errors import HeadstartError

CHUNK_DOCS = 1024
CHUNK_CHARS = 1 << 20
Encoded = dict[str, tuple[np.ndarray, int, int]]  # split -> (tokens, documents, utf-8 bytes)
Job = tuple[str, int, list[str]]  # ("train" | "val" | "hash", index of the first document, documents)


@dataclass
class PrepareReport:
    """What ``prepare`` wrote, and how fast."""

    out: Path
    splits: dict[str, SplitStats]
    skips: SkipLog
    sources: list[dict[str, Any]]
    tokenizer: TokenizerInfo
    workers: int
    elapsed_s: float

    @property
    def tokens(self) -> dict[str, int]:
        return {name: s.tokens for name, s in self.splits.items()}

    @property
    def documents(self) -> dict[str, int]:
        return {name: s.documents for name, s in self.splits.items()}

    @property
    def bytes(self) -> dict[str, int]:
        return {name: s.bytes for name, s in self.splits.items()}

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens.values()) / max(self.elapsed_s, 1e-9)


def prepare(cfg: PrepareConfig, console: Console | None = None) -> PrepareReport:
    """Read ``cfg.inputs``, train or load the tokenizer, and write shards to ``cfg.out``."""
    start = time.perf_counter()
    _validate(cfg)
    out = Path(cfg.out)
    check_out_dir(out)
    options = ReadOptions.from_prepare(cfg)
    skips = SkipLog()
    train_sources = resolve_inputs(cfg.inputs, skips)
    val_sources = resolve_inputs(cfg.val_inputs, skips) if cfg.val_inputs else []
    hashed = not val_sources and cfg.val_mode == "documents" and cfg.val_fraction > 0
    tok = _get_tokenizer(cfg, train_sources, options, hashed)
    info = tokenizer_info(tok)
    workers = cfg.workers or _cpu_count()

    def jobs() -> Iterator[Job]:
        for first, docs in _chunks(iter_documents(train_sources, options, skips)):
            yield ("hash" if hashed else "train", first, docs)
        for first, docs in _chunks(iter_documents(val_sources, options, skips)):
            yield ("val", first, docs)

    with ShardWriter(out, token_dtype(info.vocab_size)) as writer:
        encoder = _ChunkEncoder(tok.to_str(), info.eod_id, cfg.val_fraction)
        with contextlib.closing(_encode_all(encoder, jobs(), workers)) as results:
            for encoded in results:
                for split, (tokens, documents, nbytes) in encoded.items():
                    writer.write(split, tokens, documents, nbytes)
        stats = writer.stats
        if not stats["train"].documents and (val_sources or not stats["val"].documents):
            raise _no_documents(cfg.inputs, skips)
        if not val_sources and cfg.val_mode == "tail" and cfg.val_fraction > 0:
            total = writer.stats["train"].tokens
            writer.move_tail(total - int(total * (1 - cfg.val_fraction)), info.eod_id, token_bytes(tok))
        _check_splits(writer.stats, cfg, bool(val_sources))
        sources = describe_sources(train_sources, "train") + describe_sources(val_sources, "val")
        meta = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tokenizer_hash": info.hash,
            "tokenizer_kind": info.kind,
            "vocab_size": info.vocab_size,
            "eod_id": info.eod_id,
            "val_mode": "inputs" if val_sources else cfg.val_mode,
            "sources": sources,
            "skipped": skips.to_dict(),
            "prepare_config": dataclasses.asdict(cfg),
        }
        writer.commit(tok.to_str(), meta)
    report = PrepareReport(out, writer.stats, skips, sources, info, workers, time.perf_counter() - start)
    if console is not None:
        print_report(report, console)
    return report


def _validate(cfg: PrepareConfig) -> None:
    if not cfg.out:
        raise HeadstartError("config out: empty; expected a directory for the shards")
    if not 0 <= cfg.val_fraction < 1:
        raise HeadstartError(f"config val_fraction={cfg.val_fraction}: expected 0 <= val_fraction < 1")
    if cfg.workers < 0:
        raise HeadstartError(f"config workers={cfg.workers}: expected 0 (one per CPU core) or more")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _no_documents(inputs: list[str], skips: SkipLog) -> HeadstartError:
    why = "; ".join(f"{r}: {n:,}" for r, n in skips.counts.items()) or "no records"
    return HeadstartError(f"inputs {', '.join(inputs)}: no documents to prepare ({why})")


def _check_splits(stats: dict[str, SplitStats], cfg: PrepareConfig, val_inputs: bool) -> None:
    if not stats["train"].tokens:  # only the hashed split can take every document
        raise HeadstartError(
            f"train split is empty: corpus too small for val_fraction={cfg.val_fraction} "
            f"({stats['val'].documents:,} documents, all picked for val); use more documents or val_mode=tail"
        )
    if stats["val"].tokens or not (val_inputs or cfg.val_fraction > 0):
        return
    if val_inputs:
        raise HeadstartError(f"val_inputs {', '.join(cfg.val_inputs)}: no documents")
    raise HeadstartError(
        f"val split is empty: corpus too small for val_fraction={cfg.val_fraction} "
        f"({stats['train'].documents:,} documents, none picked for val); "
        "use more documents, a larger val_fraction, val_mode=tail, or val_inputs"
    )


# ----------------------------------------------------------------------------- tokenizer


EXTEND_SAMPLE = 200_000  # documents whose words decide a tokenizer extension: frequent words show early


def _get_tokenizer(cfg: PrepareConfig, sources: list[Source], options: ReadOptions, hashed: bool) -> Tokenizer:
    if cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path)
        if cfg.tokenizer.extend > 0:
            documents = itertools.islice(iter_documents(sources, options, SkipLog()), EXTEND_SAMPLE)
            tok = extend_tokenizer(tok, documents, cfg.tokenizer.extend)
        return tok
    if cfg.tokenizer.extend > 0:
        raise HeadstartError("tokenizer.extend: extends a given tokenizer; set tokenizer.path too")
    seen = SkipLog()  # the encoding pass counts skips; this pass only needs them for an empty corpus
    count = 0

    def batches() -> Iterator[list[str]]:
        nonlocal count
        for first, docs in _chunks(iter_documents(sources, options, seen)):
            if hashed:
                keep = ~val_mask(np.arange(first, first + len(docs)), cfg.val_fraction)
                docs = list(itertools.compress(docs, keep))
            count += len(docs)
            yield docs

    tok = train_tokenizer(batches(), cfg.tokenizer)
    if not count:
        raise _no_documents(cfg.inputs, seen)
    return tok


def val_mask(indices: np.ndarray, fraction: float) -> np.ndarray:
    """Which document indices go to val: splitmix64(index) as a uniform number below ``fraction``.

    A fixed hash, so the split is the same on every machine, run and worker count.
    """
    x = indices.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def _chunks(docs: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """(index of the first document, documents) in chunks of ≤ CHUNK_DOCS docs or ~CHUNK_CHARS chars."""
    chunk: list[str] = []
    first = chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc)
        if len(chunk) >= CHUNK_DOCS or chars >= CHUNK_CHARS:
            yield first, chunk
            first += len(chunk)
            chunk, chars = [], 0
    if chunk:
        yield first, chunk


# ----------------------------------------------------------------------------- encoding


class _ChunkEncoder:
    """Encodes one job into per-split token arrays; lives in each worker process."""

    def __init__(self, tokenizer_json: str, eod_id: int, val_fraction: float) -> None:
        self.tokenizer_json = tokenizer_json
        self.tok = tokenizer_from_str(tokenizer_json)
        self.eod_id = eod_id
        self.val_fraction = val_fraction
        self.dtype = token_dtype(self.tok.get_vocab_size())

    def __call__(self, job: Job) -> Encoded:
        mode, first, docs = job
        ids = encode_documents(self.tok, docs, self.eod_id)
        if mode == "hash":
            is_val = val_mask(np.arange(first, first + len(docs)), self.val_fraction)
        else:
            is_val = np.full(len(docs), mode == "val")
        out: Encoded = {}
        for split, chosen in (("train", ~is_val), ("val", is_val)):
            picked = np.flatnonzero(chosen)
            if len(picked):
                seqs = [ids[i] for i in picked]
                flat = itertools.chain.from_iterable(seqs)
                tokens = np.fromiter(flat, dtype=self.dtype, count=sum(map(len, seqs)))
                out[split] = (tokens, len(picked), sum(utf8_len(docs[i]) for i in picked))
        return out


_WORKER: _ChunkEncoder | None = None


def _init_worker(tokenizer_json: str, eod_id: int, val_fraction: float) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _WORKER = _ChunkEncoder(tokenizer_json, eod_id, val_fraction)


def _work(job: Job) -> Encoded:
    assert _WORKER is not None
    return _WORKER(job)


def _encode_all(encoder: _ChunkEncoder, jobs: Iterable[Job], workers: int) -> Iterator[Encoded]:
    """Encoded jobs in submission order; at most 2 × workers chunks in flight, so memory stays bounded."""
    if workers == 1:
        yield from map(encoder, jobs)
        return
    args = (encoder.tokenizer_json, encoder.eod_id, encoder.val_fraction)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=args) as pool:
        pending: deque[Future[Encoded]] = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(_work, job))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise HeadstartError(
                f"workers={workers}: a tokenizing worker process died (out of memory, killed, or started "
                "from a script without an `if __name__ == '__main__':` guard); retry with workers=1"
            ) from None
        finally:
            for future in pending:
                future.cancel()


# ----------------------------------------------------------------------------- report


def print_report(report: PrepareReport, console: Console) -> None:
    """Documents, tokens and bytes per split, every skip reason, and the speed."""
    table = Table(title=f"shards → {report.out}")
    for column in ("split", "documents", "tokens", "bytes"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, s in report.splits.items():
        table.add_row(name, f"{s.documents:,}", f"{s.tokens:,}", f"{s.bytes:,}")
    console.print(table)
    info = report.tokenizer
    console.print(f"tokenizer: {info.kind}, {info.vocab_size:,} tokens, hash {info.hash[:12]}")
    if report.skips.total:
        console.print(f"skipped {report.skips.total:,}:")
        for line in report.skips.lines():
            console.print(f"  {line}", markup=False, highlight=False)
    console.print(
        f"{sum(report.tokens.values()):,} tokens in {report.elapsed_s:.1f} s "
        f"({report.tokens_per_s:,.0f} tokens/s, {report.workers} worker{'s' if report.workers != 1 else ''})"
    )
