"""Continued (domain-adaptive) pretraining: what a run continues from, and what it carries over.

A continued checkpoint holds ``lineage.json``: the checkpoints it descends from, newest first
(path, model sha256, objective, data, steps and FLOPs spent), so every checkpoint says what it
was built on and what the whole chain cost. A run may also start from its parent's optimizer
moments instead of a cold optimizer (``init_optimizer=carry``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.files import read_jsonl
from headstart.train import checkpoint as ckpt

LINEAGE = "lineage.json"


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def lineage_of(folder: Path) -> list[dict[str, Any]]:
    """The lineage a run continuing ``folder`` records: ``folder`` itself, then ``folder``'s lineage."""
    config = ckpt.read_config(folder)
    compute = read_json(folder / "compute.json") or {}
    data = config.get("data", {})
    entry = {
        "checkpoint": str(folder.resolve()),
        "model_sha256": read_json(folder / "manifest.json")["sha256"]["model.safetensors"],
        "objective": config.get("objective", {}).get("name"),
        "data": data.get("shards") or data.get("images"),
        "steps": compute.get("steps"),
        "flops": compute.get("flops"),
        "wall_seconds": compute.get("wall_seconds"),
        "device": compute.get("device"),
    }
    return [entry, *(read_json(folder / LINEAGE) or [])]


def write_lineage(lineage: list[dict[str, Any]], folder: Path) -> None:
    """Into a checkpoint being written (its temporary directory, renamed whole)."""
    (folder / LINEAGE).write_text(json.dumps(lineage, indent=1), encoding="utf-8")


def forgetting(metrics_path: Path) -> tuple[float, float] | None:
    """The original domain's validation loss at the first and the last evaluation of a continued
    run (``origin_val_loss``), or None when it was not measured."""
    losses = [r["origin_val_loss"] for r in read_jsonl(metrics_path) if "origin_val_loss" in r]
    return (losses[0], losses[-1]) if len(losses) > 1 else None


def carried_optimizer(folder: Path, choice: str) -> tuple[dict[str, Any], str] | None:
    """The parent's optimizer state for ``init_optimizer=carry``; None for a fresh optimizer."""
    if choice != "carry":
        return None
    state = ckpt.load_state(folder)
    if "optimizer" not in state:
        raise HeadstartError(
            f"init_optimizer=carry: {folder} holds no single-file optimizer state (imported, or sharded by "
            "several processes); use init_optimizer=fresh"
        )
    return state["optimizer"], str(folder)


def grow_vocabulary(backbone: nn.Module, pieces: dict[int, list[int]]) -> None:
    """Append an embedding row per new token (and an output row, when untied): the mean of the
    rows of the old pieces it replaces, so a new token starts where its spelling pointed."""
    old_size = backbone.embed.num_embeddings
    if sorted(pieces) != list(range(old_size, old_size + len(pieces))):
        raise HeadstartError(f"tokenizer: new token ids {sorted(pieces)[:3]}… do not follow the old {old_size}")

    def grown(weight: torch.Tensor) -> nn.Parameter:
        rows = [weight[ids].mean(0) for _, ids in sorted(pieces.items())]
        return nn.Parameter(torch.cat([weight, torch.stack(rows)]) if rows else weight.clone())

    with torch.no_grad():
        embed = nn.Embedding(old_size + len(pieces), backbone.embed.embedding_dim)
        embed.weight = grown(backbone.embed.weight)
        backbone.embed = embed
        if backbone.lm_head is not None:
            head = nn.Linear(backbone.lm_head.in_features, embed.num_embeddings, bias=False)
            head.weight = grown(backbone.lm_head.weight)
            backbone.lm_head = head
