"""Downstream tasks for fine-tuning: each reads its JSONL records, encodes them for a
tokenizer, builds its head on a backbone, and scores predictions with its field's metric."""

from __future__ import annotations

from headstart.config import TaskConfig
from headstart.errors import HeadstartError
from headstart.tasks.base import Task
from headstart.tasks.classify import ClassifyTask
from headstart.tasks.tag import TagTask
from headstart.tasks.translate import TranslateTask


def make_task(config: TaskConfig) -> Task:
    if config.kind == "classify":
        return ClassifyTask(config)
    if config.kind == "tag":
        return TagTask(config)
    if config.kind == "translate":
        return TranslateTask(config)
    raise HeadstartError(f"task.kind={config.kind!r}: expected classify, tag or translate")


__all__ = ["Task", "make_task"]
