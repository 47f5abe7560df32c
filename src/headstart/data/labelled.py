"""Labelled examples for fine-tuning: read JSONL records, fix the label set, draw label budgets.

A budget of n labels is a class-stratified subset drawn deterministically from the seed, so
every init in a study sees exactly the same examples at the same (budget, seed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.errors import HeadstartError


@dataclass(frozen=True)
class LabelledText:
    texts: list[str]
    labels: np.ndarray  # int64 class index per text
    classes: list[str]  # class index → the label as written in the data


def read_labelled_jsonl(
    path: str | Path, text_field: str = "text", label_field: str = "label", classes: list[str] | None = None
) -> LabelledText:
    """Records ``{text_field: str, label_field: label}``; labels become class indices.

    ``classes`` fixes the label set (pass the training set's when reading dev/test): a label
    outside it is an error naming the line, never a silent new class.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"task file {path}: no such file")
    texts: list[str] = []
    raw_labels: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise HeadstartError(f"task file {path}:{number}: not valid JSON") from None
            if not isinstance(record, dict) or text_field not in record or label_field not in record:
                raise HeadstartError(f"task file {path}:{number}: expected fields {text_field!r} and {label_field!r}")
            text = record[text_field]
            if not isinstance(text, str):
                raise HeadstartError(f"task file {path}:{number}: field {text_field!r} is not a string")
            texts.append(text)
            raw_labels.append(str(record[label_field]))
    if not texts:
        raise HeadstartError(f"task file {path}: no records")
    if classes is None:
        classes = sorted(set(raw_labels), key=_label_order)
    index = {name: i for i, name in enumerate(classes)}
    for number, label in enumerate(raw_labels, start=1):
        if label not in index:
            raise HeadstartError(
                f"task file {path}: record {number} has label {label!r}, outside the label set {classes}"
            )
    return LabelledText(texts, np.array([index[label] for label in raw_labels], dtype=np.int64), classes)


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
