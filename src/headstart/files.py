"""Files every part of headstart writes or reads the same way: text written atomically (a
crash leaves the previous good file), and JSON-lines logs read past a torn last line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary sibling, fsynced, then renamed over ``path``; the
    temporary file is removed if the write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
