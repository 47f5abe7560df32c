"""Contrastive objectives: two views of each example should match each other against every
other example in the batch (InfoNCE / NT-Xent; Oord et al. 2018, Chen et al. 2020).

- ``SimCLR``: two random augmentations of each image, through the backbone and a projection
  head.
- ``SimCSE``: each sentence twice through a text backbone with dropout on; the two dropout
  masks are the two views.

A contrastive loss wants large batches (more negatives), and activation memory grows with the
batch. With ``chunk`` set, the loss runs as GradCache (Gao et al. 2021): every embedding is
computed without a graph, the loss and its gradient with respect to the embeddings are taken
on the whole batch, then each chunk is recomputed with a graph and back-propagated with its
cached gradient. Memory is that of one chunk; the gradient is the whole batch's (exactly,
for a backbone without batch statistics; a ResNet's batch norm sees chunk statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from headstart.data.augment import augment, to_float
from headstart.objectives.base import Objective


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over 2B embeddings: for each, its pair is the positive and the other 2B − 2 are
    negatives; cosine similarity / temperature. Returns (loss, accuracy of picking the pair)."""
    z = F.normalize(torch.cat([first, second]).float(), dim=1)
    n = first.size(0)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(logits, target)
    accuracy = (logits.argmax(1) == target).float().mean()
    return loss, accuracy


@contextmanager
def replayed_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> Iterator[None]:
    """Run the block with the RNG as it was in ``state`` (so dropout draws the same masks), and
    leave the global RNG as the block found it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def cached_backward(
    encode: Callable[[torch.Tensor], torch.Tensor],
    views: list[torch.Tensor],
    chunk: int,
    loss_of: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
    scale: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GradCache: ``loss_of(*embeddings of views)`` back-propagated (times ``scale``) into
    ``encode``'s parameters, holding the activations of one ``chunk`` of examples at a time."""
    states, embeddings = [], []
    with torch.no_grad():
        for view in views:
            parts = []
            for piece in view.split(chunk):
                states.append(rng_state(piece.device))
                parts.append(encode(piece))
            embeddings.append(torch.cat(parts))
    leaves = [e.detach().requires_grad_() for e in embeddings]
    loss, extra = loss_of(*leaves)
    gradients = torch.autograd.grad(loss * scale, leaves)
    pieces = [(piece, grad) for view, g in zip(views, gradients, strict=True)
              for piece, grad in zip(view.split(chunk), g.split(chunk), strict=True)]  # fmt: skip
    for (piece, grad), state in zip(pieces, states, strict=True):
        with replayed_rng(state, piece.device):
            out = encode(piece)
        out.backward(grad.to(out.dtype))
    return loss.detach(), extra


class SimCLR(Objective):
    name = "simclr"
    head_fraction = 0.0
    unit = "img"  # throughput counts images
    couples_batch = True  # the other images of the batch are the negatives: not split across ranks

    def __init__(self, views: nn.Module, temperature: float = 0.2, chunk: int = 0) -> None:
        self.views = views
        self.temperature = temperature
        self.chunk = chunk  # > 0: GradCache with this many images per forward (the loop calls backward_loss)

    def make_batch(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, C) images → two augmented float views, drawn from the step's generator."""
        batch = to_float(images)
        seeds = torch.randint(0, 2**62, (2,), generator=generator).tolist()
        return {"first": augment(self.views, batch, seeds[0]), "second": augment(self.views, batch, seeds[1])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Each view through the model alone: batch-norm statistics shared across the two views
        # would let the network match pairs by batch composition instead of content.
        return self._loss(model(batch["first"]), model(batch["second"]))

    def backward_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss, already back-propagated (times ``scale``) chunk by chunk."""
        return cached_backward(model, [batch["first"], batch["second"]], self.chunk, self._loss, scale)

    def _loss(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, accuracy = nt_xent(first, second, self.temperature)
        return loss, {"pair_accuracy": accuracy.detach()}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["first"].size(0)


class SimCSE(Objective):
    """Unsupervised SimCSE (Gao et al. 2021): each sentence goes through the model twice, and
    the two dropout masks make the two views; the other sentences are the negatives."""

    name = "simcse"
    couples_batch = True  # the other sentences of the batch are the negatives: not split across ranks
    head_fraction = 0.0

    def __init__(self, pad_id: int, temperature: float = 0.05, chunk: int = 0) -> None:
        self.pad_id = pad_id
        self.temperature = temperature
        self.chunk = chunk  # > 0: GradCache with this many sentences per forward

    def make_batch(self, ids: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"input": ids}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids = batch["input"]
        mask = ids != self.pad_id
        return self._loss(model(ids, mask), model(ids, mask))

    def backward_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids = batch["input"]
        return cached_backward(lambda x: model(x, x != self.pad_id), [ids, ids], self.chunk, self._loss, scale)

    def _loss(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, accuracy = nt_xent(first, second, self.temperature)
        return loss, {"pair_accuracy": accuracy.detach()}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["input"] != self.pad_id).sum())
