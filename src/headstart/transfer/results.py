"""A study's ``results.jsonl``: one record per finished cell, appended whole and fsynced, so a
study resumes by skipping the cells already there."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from headstart.files import read_jsonl


def append_line(path: Path, record: dict[str, Any]) -> None:
    """One whole line per finished cell, flushed to disk before the next cell starts."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_results(path: Path) -> list[dict[str, Any]]:
    """Finished cells; a torn last line (a crash mid-write) is ignored and its cell rerun."""
    return read_jsonl(path)
