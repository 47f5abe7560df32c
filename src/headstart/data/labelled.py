"""Labelled examples for fine-tuning: read JSONL records, fix the label set, draw label budgets.

A budget of n labels is a class-stratified subset drawn deterministically from the seed, so
every init in a study sees exactly the same examples at the same (budget, seed).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError


@dataclass(frozen=True)
class LabelledText:
    texts: list[str]
    labels: np.ndarray  # int64 class index per text
    classes: list[str]  # class index → the label as written in the data


def iter_task_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each JSON object of a task file; any other line is an error
    naming it, and a file without records is one too."""
    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"task file {path}: no such file")
    found = False
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise HeadstartError(f"task file {path}:{number}: not valid JSON") from None
            if not isinstance(record, dict):
                raise HeadstartError(f"task file {path}:{number}: expected a JSON object")
            found = True
            yield number, record
    if not found:
        raise HeadstartError(f"task file {path}: no records")


def read_labelled_jsonl(
    path: str | Path, text_field: str = "text", label_field: str = "label", classes: list[str] | None = None
) -> LabelledText:
    """Records ``{text_field: str, label_field: label}``; labels become class indices.

    ``classes`` fixes the label set (pass the training set's when reading dev/test): a label
    outside it is an error naming the line, never a silent new class.
    """
    texts: list[str] = []
    raw_labels: list[str] = []
    for number, record in iter_task_records(path):
        if text_field not in record or label_field not in record:
            raise HeadstartError(f"task file {path}:{number}: expected fields {text_field!r} and {label_field!r}")
        text = record[text_field]
        if not isinstance(text, str):
            raise HeadstartError(f"task file {path}:{number}: field {text_field!r} is not a string")
        texts.append(text)
        raw_labels.append(str(record[label_field]))
    if classes is None:
        classes = sorted(set(raw_labels), key=_label_order)
    index = {name: i for i, name in enumerate(classes)}
    for number, label in enumerate(raw_labels, start=1):
        if label not in index:
            raise HeadstartError(
                f"task file {path}: record {number} has label {label!r}, outside the training set's "
                f"{len(classes)} labels {shown(classes)}"
            )
    return LabelledText(texts, np.array([index[label] for label in raw_labels], dtype=np.int64), classes)


def shown(labels: list[str], most: int = 8) -> str:
    """A label set short enough for a one-line error."""
    listed = ", ".join(repr(label[:40]) for label in labels[:most])
    return f"[{listed}{', …' if len(labels) > most else ''}]"


def _label_order(label: str) -> tuple[int, float | str]:
    """Numeric labels in numeric order (0, 1, 2, 10), others alphabetically after them."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def stratified_budget(labels: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Indices of ``budget`` examples with each class's share kept (every class at least once
    when the budget allows), deterministic in ``seed``; ``budget <= 0`` means all."""
    n = len(labels)
    if budget <= 0 or budget == n:
        return np.arange(n)
    if budget > n:
        raise HeadstartError(f"label budget {budget}: larger than the {n} labelled examples available")
    rng = np.random.default_rng([seed, budget])
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(budget * counts / n).astype(np.int64)
    if budget >= len(classes):
        quota = np.maximum(quota, 1)
    while quota.sum() > budget:  # the at-least-one rule overshot: take from the largest classes
        quota[np.argmax(quota)] -= 1
    order = np.argsort(-(budget * counts / n - quota), kind="stable")  # largest rounding loss first
    quota[order[: budget - quota.sum()]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class TaggedText:
    words: list[list[str]]  # one list of words per sentence
    tags: list[np.ndarray]  # int64 tag index per word
    tag_names: list[str]  # tag index → the tag as written (IOB2, e.g. B-PER)

    @property
    def strata(self) -> np.ndarray:
        """Per sentence, its most frequent entity type (or O): what label budgets stratify on."""
        types = sorted({name.split("-", 1)[-1] for name in self.tag_names if name != "O"})
        index = {t: i + 1 for i, t in enumerate(types)}
        out = np.zeros(len(self.words), dtype=np.int64)
        for row, tags in enumerate(self.tags):
            found = Counter(self.tag_names[t].split("-", 1)[-1] for t in tags if self.tag_names[t] != "O")
            out[row] = index[found.most_common(1)[0][0]] if found else 0
        return out


def read_tagged_jsonl(
    path: str | Path, words_field: str = "tokens", tags_field: str = "tags", tag_names: list[str] | None = None
) -> TaggedText:
    """Records ``{words_field: [word, ...], tags_field: [tag, ...]}`` of equal length (IOB2 tags)."""
    sentences: list[list[str]] = []
    raw_tags: list[list[str]] = []
    for number, record in iter_task_records(path):
        words, tags = record.get(words_field), record.get(tags_field)
        if not isinstance(words, list) or not isinstance(tags, list):
            raise HeadstartError(f"task file {path}:{number}: expected list fields {words_field!r} and {tags_field!r}")
        if len(words) != len(tags):
            raise HeadstartError(
                f"task file {path}:{number}: {len(words)} words but {len(tags)} tags; expected one tag per word"
            )
        sentences.append([str(w) for w in words])
        raw_tags.append([str(t) for t in tags])
    if tag_names is None:
        tag_names = ["O", *sorted({t for tags in raw_tags for t in tags} - {"O"}, key=lambda t: (t[2:], t))]
    index = {name: i for i, name in enumerate(tag_names)}
    encoded = []
    for number, tags in enumerate(raw_tags, start=1):
        unknown = [t for t in tags if t not in index]
        if unknown:
            raise HeadstartError(
                f"task file {path}: record {number} has tag {unknown[0]!r}, outside the tag set {tag_names}"
            )
        encoded.append(np.array([index[t] for t in tags], dtype=np.int64))
    return TaggedText(sentences, encoded, tag_names)


def split_validation(
    strata: np.ndarray, chosen: np.ndarray, fraction: float, seed: int, most: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a stratified validation split from the budget (at least one example per class,
    at most ``most`` when it is positive)."""
    n_classes = len(np.unique(strata))
    size = max(n_classes, round(fraction * len(chosen)))
    size = min(size, max(most, n_classes)) if most > 0 else size
    if len(chosen) - size < n_classes:
        raise HeadstartError(
            f"budget {len(chosen)}: too small to hold out {size} validation examples and still train on every class"
        )
    held_local = stratified_budget(strata[chosen], size, seed + 7919)
    mask = np.zeros(len(chosen), dtype=bool)
    mask[held_local] = True
    return chosen[~mask], chosen[mask]
