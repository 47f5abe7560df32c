"""Files every part of headstart writes or reads the same way: text written atomically (a
crash leaves the previous good file), and JSON-lines logs read past a torn last line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path, directory: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write into (a file, or with ``directory`` a folder),
    flushed to disk and renamed over ``path`` when the block ends; removed when it fails, so a
    crash or an error leaves the previous ``path`` as it was and nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if not directory else ""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        yield tmp
        for written in [*(tmp.rglob("*") if directory else []), tmp]:
            if written.is_file():
                with written.open("rb") as handle:
                    os.fsync(handle.fileno())
        if directory and path.exists():
            shutil.rmtree(path)
        tmp.replace(path)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise named(exc, path) from None
        raise


def named(error: OSError, path: Path) -> OSError:
    """``error`` naming ``path`` when it names no file (a write that fails on flush, e.g. a full
    disk), so the one-line message says what could not be written."""
    if error.filename is not None:
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_markdown(path: Path, lines: list[str]) -> Path:
    """A report's lines as one Markdown file, written atomically."""
    return write_text_atomic(path, "\n".join(lines) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a JSON-lines file (none when it is missing). A line that does not
    parse, as a run killed in the middle of a write leaves, is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
