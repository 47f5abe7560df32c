"""Downstream tasks for fine-tuning: each reads its labelled data, encodes it (text tasks with
the checkpoint's tokenizer), builds its head on a backbone, and scores predictions with its
field's metric."""

from __future__ import annotations

from tokenizers import Tokenizer

from headstart.config import TaskConfig
from headstart.errors import HeadstartError
from headstart.tasks.base import Task
from headstart.tasks.classify import ClassifyTask
from headstart.tasks.image import ImageClassifyTask
from headstart.tasks.tag import TagTask
from headstart.tasks.translate import TranslateTask

TASKS = {"classify": ClassifyTask, "tag": TagTask, "translate": TranslateTask, "image": ImageClassifyTask}


def make_task(config: TaskConfig, tokenizer: Tokenizer | None) -> Task:
    if config.kind not in TASKS:
        raise HeadstartError(f"task.kind={config.kind!r}: expected one of {', '.join(TASKS)}")
    return TASKS[config.kind](config, tokenizer)


__all__ = ["Task", "make_task"]
