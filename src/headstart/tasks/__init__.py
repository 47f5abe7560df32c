"""Downstream tasks for fine-tuning: each reads its JSONL records, encodes them for a
tokenizer, builds its head on a backbone, and scores predictions with its field's metric."""

from __future__ import annotations

from headstart.config import TaskConfig
from headstart.errors import HeadstartError
from headstart.tasks.base import Task
from headstart.tasks.classify import ClassifyTask
from headstart.tasks.tag import TagTask


def make_task(config: TaskConfig) -> Task:
    if config.kind == "classify":
        return ClassifyTask(config)
    if config.kind == "tag":
        return TagTask(config)
    raise HeadstartError(f"task.kind={config.kind!r}: expected classify or tag")


__all__ = ["Task", "make_task"]
