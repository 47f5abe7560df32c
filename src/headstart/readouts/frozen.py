"""Readouts of a frozen backbone, no loop: a logistic probe, weighted kNN of the budget's
features, or the budget's labels propagated over a kNN graph of the budget and the unlabelled
training examples (whose own labels are never read), then read by kNN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headstart.config import to_dict
from headstart.readouts.context import Finetuning, Outcome
from headstart.readouts.frozen_features import knn_votes
from headstart.readouts.label_propagation import NeighbourGraph, neighbour_graph, propagate_labels
from headstart.readouts.probe import fit_logistic
from headstart.readouts.registry import ReadoutEntry, register
from headstart.tasks import Task
from headstart.train import checkpoint as ckpt


def logistic_probe(ft: Finetuning) -> Outcome:
    """The backbone never changes; the head is the convex fit, its L2 chosen on the held-out part."""
    task, model = ft.task, ft.model
    (x, y), (vx, vy) = task.features(model, ft.fit_set), task.features(model, ft.held_set)
    probe = fit_logistic(x, y, vx, vy, model.head.out_features)
    model.head = probe.as_linear().to(next(model.parameters()).device)
    best_val = task.score(model, ft.held_set)[task.metric]
    metrics = task.score(model, ft.eval_set, final=True)
    ckpt.write_checkpoint(ft.run_dir / "checkpoints", 0, model, {"step": 0, "l2": probe.l2}, to_dict(ft.config))
    return Outcome(metrics, best_val, ft.features_flops(ft.fit_set, ft.held_set))


def knn(ft: Finetuning) -> Outcome:
    """No head: the budget's features vote (weighted kNN)."""
    task, n_classes = ft.task, ft.model.head.out_features
    (x, y), (vx, vy), (ex, ey) = (task.features(ft.model, part) for part in (ft.fit_set, ft.held_set, ft.eval_set))
    best_val = float((knn_votes(x, y, vx, n_classes).argmax(1) == vy).float().mean())
    metrics = task.metrics(knn_votes(torch.cat([x, vx]), torch.cat([y, vy]), ex, n_classes), ey.numpy())
    return Outcome(metrics, best_val, ft.features_flops(ft.fit_set, ft.held_set, ft.eval_set))


@dataclass
class PoolGraph:
    """Frozen features of the budget's fit and held-out parts and of the unlabelled pool, in
    that order, with their kNN graph: what label propagation spreads the budget's labels over."""

    features: torch.Tensor  # (fit + held + pool, D)
    labels: torch.Tensor  # (fit + held,) the budget's labels
    n_fit: int
    graph: NeighbourGraph
    n_classes: int
    units: int  # what the features cost to compute, in the task's units (images, tokens)

    @classmethod
    def build(cls, task: Task, model: nn.Module, fit_set: Any, held_set: Any, pool_set: Any) -> PoolGraph:
        parts = (fit_set, held_set, pool_set)
        (x, y), (vx, vy), (px, _) = (task.features(model, part) for part in parts)
        features = torch.cat([x, vx, px])  # the pool's own labels are never read
        units = sum(task.units(part) for part in parts)
        return cls(features, torch.cat([y, vy]), len(x), neighbour_graph(features), model.head.out_features, units)

    @property
    def n_labelled(self) -> int:
        return len(self.labels)

    def held_accuracy(self) -> float:
        """How well the fit part's labels, spread, label the held-out part: the readout's validation score."""
        guess = self.spread(with_held=False)[self.n_fit : self.n_labelled].argmax(1)
        return float((guess == self.labels[self.n_fit :]).float().mean())

    def flops(self, forward_flops: float) -> float:
        """Embedding every node (``forward_flops`` per unit) and the neighbour search."""
        return forward_flops * self.units + self.graph.flops(self.features.size(1))

    def spread(self, with_held: bool) -> torch.Tensor:
        """Class probabilities of every node from the fit part's labels (and the held-out part's)."""
        known = self.n_labelled if with_held else self.n_fit
        return propagate_labels(self.graph, torch.arange(known), self.labels[:known], self.n_classes)


def propagate(ft: Finetuning) -> Outcome:
    pool_set = ft.unlabelled_set()
    message = f"propagating {len(ft.chosen):,} labels over {ft.task.size(pool_set):,} unlabelled examples"
    ft.console.print(message, highlight=False)
    graph = PoolGraph.build(ft.task, ft.model, ft.fit_set, ft.held_set, pool_set)
    labels = graph.spread(with_held=True).argmax(1)
    labels[: graph.n_labelled] = graph.labels
    ex, ey = ft.task.features(ft.model, ft.eval_set)
    metrics = ft.task.metrics(knn_votes(graph.features, labels, ex, graph.n_classes), ey.numpy())
    flops = graph.flops(ft.forward_flops) + ft.features_flops(ft.eval_set)
    return Outcome(metrics, graph.held_accuracy(), flops)


register(ReadoutEntry("logistic", logistic_probe, task_kinds=("classify", "tag", "image"), frozen=True))
register(ReadoutEntry("knn", knn, task_kinds=("classify", "image"), frozen=True))
register(ReadoutEntry("propagate", propagate, task_kinds=("classify", "image"), frozen=True))
