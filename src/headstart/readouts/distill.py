"""Self-training (SimCLRv2's distillation): a teacher labels the unlabelled training examples
with class probabilities, and a student from the same init learns the budget and those soft
labels for ``distill_steps`` steps. The teacher is the fine-tuned model (``head_init=probe``
makes it LP-FT) or label propagation on the init's frozen features (``distill_teacher``).

Noisy student (Xie et al. 2020): with ``distill_noise`` the student learns from strongly
noised inputs (the consistency readout's strong views) while its teacher labelled clean ones;
with ``distill_rounds`` > 1 each student becomes the next round's teacher."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import numpy as np
from torch import nn

from headstart.models.heads import head_logits
from headstart.objectives.consistency import NoisedInputs
from headstart.readouts.consistency import image_views, text_views
from headstart.readouts.context import Finetuning, Outcome
from headstart.readouts.frozen import PoolGraph
from headstart.readouts.full import finetuned, fit_with_early_stopping, probe_head
from headstart.readouts.registry import ReadoutEntry, register


def concat_encoded(first: Any, second: Any) -> Any:
    """Two encoded sets of one task as one (each field: lists joined, arrays stacked)."""
    joined = {}
    for item in fields(first):
        a, b = getattr(first, item.name), getattr(second, item.name)
        joined[item.name] = a + b if isinstance(a, list) else np.concatenate([a, b])
    return type(first)(**joined)


def teacher_labels(ft: Finetuning, pool_set: Any) -> float:
    """Label ``pool_set`` with the teacher's class probabilities (in place); returns the FLOPs spent."""
    if ft.config.distill_teacher == "propagate":
        graph = PoolGraph.build(ft.task, ft.model, ft.fit_set, ft.held_set, pool_set)
        pool_set.labels = graph.spread(with_held=False)[graph.n_labelled :].numpy()
        return graph.flops(ft.forward_flops)
    flops = probe_head(ft) if ft.config.head_init == "probe" else 0.0
    result, best = fit_with_early_stopping(ft, ft.model, ft.fit_set, ft.config)
    ft.model.load_state_dict(best["state"])
    return flops + result.flops + label_with(ft, ft.model, pool_set)


def label_with(ft: Finetuning, model: nn.Module, pool_set: Any) -> float:
    """Label ``pool_set`` with ``model``'s class probabilities (in place; its own labels are never
    read); returns the FLOPs spent."""
    features, _ = ft.task.features(model, pool_set)
    pool_set.labels = head_logits(model.head, features).softmax(-1).numpy()
    return ft.features_flops(pool_set)


def self_train(ft: Finetuning) -> Outcome:
    config, pool_set = ft.config, ft.unlabelled_set()
    flops = teacher_labels(ft, pool_set)
    student_config = replace(config, train=replace(config.train, steps=config.distill_steps))
    noise = {}
    if config.distill_noise:
        _, strong = image_views(ft) if config.task.kind == "image" else text_views(ft)
        noise["objective"] = NoisedInputs(ft.task.objective, strong)
    one_hot = np.eye(pool_set.labels.shape[1], dtype=np.float32)[ft.fit_set.labels]
    for round_ in range(1, config.distill_rounds + 1):
        train_set = concat_encoded(replace(ft.fit_set, labels=one_hot), pool_set)
        message = f"distilling into student {round_} on {len(pool_set.labels):,} teacher-labelled examples"
        ft.console.print(message, highlight=False)
        student = ft.fresh_model()
        name = "student" if round_ == 1 else f"student-{round_}"
        outcome = finetuned(ft, student, train_set, student_config, name=name, **noise)
        flops += outcome.flops
        if round_ < config.distill_rounds:  # this student teaches the next one
            flops += label_with(ft, student, pool_set)
    return replace(outcome, flops=flops)


register(ReadoutEntry("distill", self_train, task_kinds=("classify", "image")))
