"""The zero-download corpus: the Python standard library's own source files.

Every Python install ships a few MB of real, well-documented code, so a pretraining run (and a
labelled task: "which stdlib package does this docstring come from?") works offline. Files
are visited in sorted order, one at a time, so memory stays bounded and output is
deterministic for a given Python version.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
import tokenize
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from headstart.files import atomic_path

# Tests, demos, generated data and the IDE are not representative library code.
EXCLUDED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "lib2to3",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "__phello__",
        "turtledemo",
        "pydoc_data",
        "ensurepip",
        "lib-dynload",
    }
)


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library (the base one under a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def iter_stdlib_files(root: Path | None = None, packages: Iterable[str] | None = None) -> Iterator[Path]:
    """The stdlib's ``.py`` files in sorted order; ``packages`` keeps only those top-level names."""
    root = root or stdlib_root()
    wanted = set(packages) if packages is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith(("config-", ".")))
        for name in sorted(filenames):
            path = here / name
            if name.endswith(".py") and (wanted is None or _module_name(path, root).split(".")[0] in wanted):
                yield path


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _read_source(path: Path) -> str | None:
    """The file's text (honouring a coding cookie), or None when it cannot be decoded."""
    try:
        with tokenize.open(path) as f:
            return f.read()
    except (SyntaxError, UnicodeDecodeError):
        return None


def iter_stdlib_sources(root: Path | None = None, packages: Iterable[str] | None = None) -> Iterator[dict[str, str]]:
    """One record per file: ``{"text": source, "module": "json.decoder", "package": "json", "path": ...}``."""
    root = root or stdlib_root()
    for path in iter_stdlib_files(root, packages):
        text = _read_source(path)
        if text and text.strip():
            module = _module_name(path, root)
            yield {
                "text": text,
                "module": module,
                "package": module.split(".")[0],
                "path": path.relative_to(root).as_posix(),
            }


def iter_stdlib_docstrings(root: Path | None = None, packages: Iterable[str] | None = None) -> Iterator[dict[str, str]]:
    """Module, class and function docstrings (methods included, nested functions not).

    Records look like ``{"text": doc, "package": "json", "module": "json.decoder",
    "name": "JSONDecoder.decode"}``; a module docstring has ``name == ""``.
    """
    for record in iter_stdlib_sources(root, packages):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # old-style escapes in a few modules
            try:
                tree = ast.parse(record["text"])
            except SyntaxError:
                continue
        for name, doc in _docstrings(tree, ""):
            yield {"text": doc, "package": record["package"], "module": record["module"], "name": name}


def _docstrings(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        doc = ast.get_docstring(node)
        if doc and doc.strip():
            yield prefix, doc
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return
    for child in getattr(node, "body", []):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _docstrings(child, f"{prefix}.{child.name}" if prefix else child.name)


def write_stdlib_corpus(
    out_dir: str | Path,
    what: Literal["source", "docstrings"] = "source",
    packages: Iterable[str] | None = None,
    root: Path | None = None,
    exclude_modules: Iterable[str] = (),
) -> Path:
    """Write ``stdlib_<what>.jsonl`` (document in field ``text``) under ``out_dir``; return its path.

    JSONL keeps multi-line documents whole, so ``prepare`` reads it like any other input.
    Written to a temporary name and renamed, so a crash never leaves half a file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"stdlib_{what}.jsonl"
    records = iter_stdlib_sources(root, packages) if what == "source" else iter_stdlib_docstrings(root, packages)
    excluded = set(exclude_modules)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            if record["module"] not in excluded:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def is_test_module(module: str, every: int = 5) -> bool:
    """A stable 1-in-``every`` choice of modules (by a hash of the name, not Python's salted one)."""
    return zlib.crc32(module.encode("utf-8")) % every == 0


def write_package_task(out_dir: str | Path, classes: int = 8, root: Path | None = None) -> tuple[Path, Path, set[str]]:
    """A labelled task with real labels: which standard-library package a docstring comes from.

    The ``classes`` packages (multi-module ones) with the most docstrings are the labels. Whole
    modules go to the test split (1 in 5, by name), so a test docstring's neighbours — and its
    module's source — are never in the training split or a pretraining corpus that excludes
    the returned test modules. Writes ``package_train.jsonl`` and ``package_test.jsonl``.
    """
    records = [r for r in iter_stdlib_docstrings(root) if "." in r["module"]]
    counts: dict[str, int] = {}
    for record in records:
        counts[record["package"]] = counts.get(record["package"], 0) + 1
    labels = set(sorted(counts, key=lambda p: (-counts[p], p))[:classes])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {split: out / f"package_{split}.jsonl" for split in ("train", "test")}
    test_modules = {r["module"] for r in records if r["package"] in labels and is_test_module(r["module"])}
    for split, path in paths.items():
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                if record["package"] in labels and (record["module"] in test_modules) == (split == "test"):
                    f.write(json.dumps({"text": record["text"], "label": record["package"]}, ensure_ascii=False) + "\n")
    return paths["train"], paths["test"], test_modules
