"""Read any input into documents (``str``), one at a time, so corpora larger than RAM work.

Inputs are files, globs, directories, or ``hf:NAME`` (a Hugging Face dataset). A file's kind
comes from its suffix, looking through a trailing ``.gz``:

* ``.jsonl`` / ``.ndjson`` / ``.json``: one JSON object per line; the document is a field.
* ``.parquet``: a string column, read in record batches (``.parquet.gz`` is refused:
  Parquet compresses internally and needs random access).
* anything else named explicitly is plain UTF-8 text, split by ``text_mode``.

Directories are walked recursively in sorted order, skipping hidden entries, and take only
files with a known suffix (``DIRECTORY_SUFFIXES``, optionally ``.gz``); ``.json`` is left out
there because JSON files in a data directory are usually metadata.

Bad records are skipped and counted in a ``SkipLog`` (empty documents, missing or
non-string fields, invalid UTF-8 unless ``invalid_utf8="fail"``); bad files (missing, malformed
JSON, a field no record has) raise ``HeadstartError``.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from headstart.config import PrepareConfig
from headstart.errors import HeadstartError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
DIRECTORY_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".ndjson", ".parquet")
HF_PREFIX = "hf:"
_BATCH_ROWS = 1024
NEWLINE = b"\n"

SourceKind = Literal["text", "jsonl", "parquet", "hf"]


@dataclass(frozen=True)
class Source:
    """One resolved input: a file (``gz`` if gzip-compressed) or a Hugging Face dataset name."""

    path: str
    kind: SourceKind
    gz: bool = False


@dataclass(frozen=True)
class ReadOptions:
    """How to turn records into documents; the reading half of ``PrepareConfig``."""

    text_mode: Literal["line", "block", "file"] = "line"
    jsonl_field: str = "text"
    parquet_column: str = "text"  # also the column of hf: datasets (both are Arrow tables)
    hf_split: str = "train"
    invalid_utf8: Literal["skip", "fail"] = "skip"

    @classmethod
    def from_prepare(cls, cfg: PrepareConfig) -> ReadOptions:
        return cls(cfg.text_mode, cfg.jsonl_field, cfg.parquet_column, cfg.hf_split, cfg.invalid_utf8)


@dataclass
class SkipLog:
    """Why records were skipped: a count per reason and the first few places (``file:line``)."""

    max_examples: int = 3
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < self.max_examples:
            seen.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """One line per reason, most frequent first: ``empty: 120 (e.g. a.txt:3, a.txt:9)``."""
        ordered = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [f"{reason}: {n:,} (e.g. {', '.join(self.examples[reason])})" for reason, n in ordered]

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "reasons": dict(self.counts), "examples": dict(self.examples)}


# ----------------------------------------------------------------------------- resolving


def resolve_inputs(inputs: Sequence[str], skips: SkipLog | None = None) -> list[Source]:
    """Expand files, globs, directories and ``hf:`` names into sources, in order, without repeats.

    Files a directory holds with an unknown suffix are logged in ``skips`` (if given).
    """
    if not inputs:
        raise HeadstartError("inputs: none given; expected files, globs, directories or hf:NAME")
    sources: list[Source] = []
    for item in inputs:
        if item.startswith(HF_PREFIX):
            name = item[len(HF_PREFIX) :]
            if not name:
                raise HeadstartError(f"input {item!r}: expected hf:NAME (a hub dataset or a saved directory)")
            sources.append(Source(name, "hf"))
            continue
        path = Path(item)
        if glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise HeadstartError(f"input {item!r}: the glob matches no files")
            for match in matches:
                m = Path(match)
                sources.extend(_walk(m, skips) if m.is_dir() else [_file_source(m)])
        elif path.is_dir():
            _refuse_saved_dataset(path)
            found = _walk(path, skips)
            if not found:
                raise HeadstartError(
                    f"input {item}: the directory holds no files ending in {', '.join(DIRECTORY_SUFFIXES)} (.gz ok)"
                )
            sources.extend(found)
        elif path.is_file():
            sources.append(_file_source(path))
        else:
            raise HeadstartError(f"input {item}: no such file or directory")
    return list(dict.fromkeys(sources))


def _walk(root: Path, skips: SkipLog | None) -> list[Source]:
    found = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        inner = path.name.removesuffix(".gz")
        if inner.endswith(DIRECTORY_SUFFIXES):
            found.append(_file_source(path))
        elif skips is not None:
            skips.add("file ignored (unknown suffix)", str(path))
    return found


def _file_source(path: Path) -> Source:
    gz = path.name.endswith(".gz")
    inner = path.name.removesuffix(".gz")
    if inner.endswith(".parquet"):
        if gz:
            raise HeadstartError(f"input {path}: gzip-compressed Parquet is not supported; expected a plain .parquet")
        return Source(str(path), "parquet")
    kind: SourceKind = "jsonl" if inner.endswith(JSONL_SUFFIXES) else "text"
    return Source(str(path), kind, gz)


def _refuse_saved_dataset(path: Path) -> None:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        raise HeadstartError(f"input {path}: a saved Hugging Face dataset; expected it as hf:{path}")


# ----------------------------------------------------------------------------- reading


def read_documents(
    inputs: Sequence[str], options: ReadOptions | None = None, skips: SkipLog | None = None
) -> Iterator[str]:
    """Documents from ``inputs`` (resolved first, so a missing file fails before anything is read)."""
    return iter_documents(resolve_inputs(inputs, skips), options or ReadOptions(), skips or SkipLog())


def iter_documents(sources: Iterable[Source], options: ReadOptions, skips: SkipLog) -> Iterator[str]:
    """Every non-empty document of every source, in order; skipped records go to ``skips``."""
    readers = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet, "hf": _read_hf}
    for source in sources:
        for doc, where in readers[source.kind](source, options, skips):
            if doc.strip():
                yield doc
            else:
                skips.add("empty", where)


def _open(source: Source) -> IO[bytes]:
    return gzip.open(source.path, "rb") if source.gz else open(source.path, "rb")


def _decode(raw: bytes, where: str, first_line: int | None, options: ReadOptions, skips: SkipLog) -> str | None:
    """UTF-8 text, or None (counted) when it is invalid and the policy is to skip.

    ``first_line`` numbers the lines of ``raw`` so the error names the bad one (None: no lines).
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        place = where
        if first_line is not None:
            place = f"{where}:{first_line + raw.count(NEWLINE, 0, exc.start)}"
        if options.invalid_utf8 == "fail":
            raise HeadstartError(
                f"{place}: invalid UTF-8 (byte 0x{raw[exc.start]:02x}); expected UTF-8 text (or set invalid_utf8=skip)"
            ) from None
        skips.add("invalid UTF-8", place)
        return None


def _read_text(source: Source, options: ReadOptions, skips: SkipLog) -> Iterator[tuple[str, str]]:
    with _open(source) as f:
        if options.text_mode == "file":
            text = _decode(f.read(), source.path, 1, options, skips)
            if text is not None:
                yield text.removeprefix("\ufeff"), source.path
            return
        block: list[bytes] = []
        start = 1
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if options.text_mode == "line":
                text = _decode(raw.rstrip(b"\n").rstrip(b"\r"), source.path, lineno, options, skips)
                if text is not None:
                    yield text, f"{source.path}:{lineno}"
            elif raw.strip():
                if not block:
                    start = lineno
                block.append(raw)
            elif block:
                yield from _block(block, start, source, options, skips)
                block = []
        if block:
            yield from _block(block, start, source, options, skips)


def _block(
    lines: list[bytes], start: int, source: Source, options: ReadOptions, skips: SkipLog
) -> Iterator[tuple[str, str]]:
    raw = b"".join(lines)
    raw = raw[:-1] if raw.endswith(b"\n") else raw
    raw = raw[:-1] if raw.endswith(b"\r") else raw
    text = _decode(raw, source.path, start, options, skips)
    if text is not None:
        yield text, f"{source.path}:{start}"


_JSON_TYPES = {
    dict: "object",
    list: "array",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _field(record: dict[str, Any], name: str, where: str, skips: SkipLog) -> str | None:
    """The string at ``record[name]``, or None (counted) when it is missing or not a string. A
    list of strings (pre-tokenised words, as in NER datasets) is joined with spaces."""
    if name not in record:
        skips.add(f"missing field {name!r}", where)
        return None
    value = record[name]
    if isinstance(value, list) and all(isinstance(word, str) for word in value):
        return " ".join(value)
    if not isinstance(value, str):
        skips.add(f"field {name!r} is not a string ({_JSON_TYPES.get(type(value), type(value).__name__)})", where)
        return None
    return value


def _read_jsonl(source: Source, options: ReadOptions, skips: SkipLog) -> Iterator[tuple[str, str]]:
    """One document per record, or per listed field (``src,tgt``: both sides of a pair, unpaired)."""
    names = [n.strip() for n in options.jsonl_field.split(",") if n.strip()]
    name = options.jsonl_field
    records = missing = 0
    first_keys: list[str] = []
    with _open(source) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{source.path}:{lineno}"
            text = _decode(raw, source.path, lineno, options, skips)
            if text is None:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise HeadstartError(
                    f"{where}: malformed JSON ({exc.msg}, column {exc.colno}); expected one JSON object per line"
                ) from None
            if not isinstance(record, dict):
                kind = _JSON_TYPES.get(type(record), type(record).__name__)
                raise HeadstartError(f"{where}: expected a JSON object per line, got a JSON {kind}")
            records += 1
            first_keys = first_keys or list(record)
            missing += all(n not in record for n in names)
            for field_name in names:
                value = _field(record, field_name, where, skips)
                if value is not None:
                    yield value, where
    if records and missing == records:
        raise HeadstartError(
            f"{source.path}: no record has the field {name!r} "
            f"(the first has: {', '.join(first_keys) or 'no keys'}); set jsonl_field"
        )


def _read_parquet(source: Source, options: ReadOptions, skips: SkipLog) -> Iterator[tuple[str, str]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise HeadstartError(f"{source.path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    name = options.parquet_column
    try:
        pf = pq.ParquetFile(source.path)
    except (pa.ArrowException, OSError) as exc:
        raise HeadstartError(f"{source.path}: not a readable Parquet file ({exc})") from None
    schema = pf.schema_arrow
    if name not in schema.names:
        raise HeadstartError(
            f"{source.path}: no column {name!r} (columns: {', '.join(schema.names)}); set parquet_column"
        )
    kind = schema.field(name).type
    binary = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    if not (binary or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise HeadstartError(f"{source.path}: column {name!r} has type {kind}; expected string")
    row = 0
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=[name]):
        for value in batch.column(0).to_pylist():
            where = f"{source.path} row {row}"
            row += 1
            if value is None:
                skips.add(f"field {name!r} is not a string (null)", where)
                continue
            text = _decode(value, where, None, options, skips) if binary else value
            if text is not None:
                yield text, where


def _read_hf(source: Source, options: ReadOptions, skips: SkipLog) -> Iterator[tuple[str, str]]:
    """A dataset saved with ``save_to_disk`` (memory-mapped) or streamed from the hub."""
    label = f"{HF_PREFIX}{source.path}"
    rows = _hf_rows(source.path, options) if Path(source.path).is_dir() else _hf_stream(source.path, options)
    name = options.parquet_column
    records = missing = 0
    for i, record in enumerate(rows):
        records += 1
        missing += name not in record
        value = _field(record, name, f"{label} row {i}", skips)
        if value is not None:
            yield value, f"{label} row {i}"
    if records and missing == records:
        raise HeadstartError(f"{label}: no record has the field {name!r}; set parquet_column")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise HeadstartError("hf: inputs need the datasets package (pip install 'headstart[hf]')") from None
    return datasets


def _hf_rows(path: str, options: ReadOptions) -> Iterator[dict[str, Any]]:
    datasets = _datasets()
    try:
        ds = datasets.load_from_disk(path)
    except FileNotFoundError:
        raise HeadstartError(f"hf:{path}: not a directory written by save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if options.hf_split not in ds:
            raise HeadstartError(f"hf:{path}: no split {options.hf_split!r} (splits: {', '.join(ds)}); set hf_split")
        ds = ds[options.hf_split]
    name = options.parquet_column
    if name not in ds.column_names:
        raise HeadstartError(
            f"hf:{path}: no column {name!r} (columns: {', '.join(ds.column_names)}); set parquet_column"
        )
    for batch in ds.select_columns([name]).iter(batch_size=_BATCH_ROWS):
        for value in batch[name]:
            yield {name: value}


def _hf_stream(name: str, options: ReadOptions) -> Iterator[dict[str, Any]]:
    datasets = _datasets()
    try:
        ds = datasets.load_dataset(name, split=options.hf_split, streaming=True)
    except Exception as exc:  # the hub raises many types; the user needs one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise HeadstartError(
            f"hf:{name}: could not load split {options.hf_split!r} ({type(exc).__name__}: {first})"
        ) from None
    yield from ds


# ----------------------------------------------------------------------------- provenance


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_sources(sources: Iterable[Source], split: str) -> list[dict[str, Any]]:
    """What meta.json records per source: path, kind, size and sha256 (hub datasets: name only)."""
    out = []
    for s in sources:
        if s.kind == "hf":
            out.append({"path": f"{HF_PREFIX}{s.path}", "kind": "hf", "split": split})
        else:
            entry = {"path": s.path, "kind": s.kind, "split": split}
            out.append(entry | {"bytes": Path(s.path).stat().st_size, "sha256": file_sha256(s.path)})
    return out
