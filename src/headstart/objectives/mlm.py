"""Masked language modelling (BERT): hide 15% of tokens, predict them from both sides.

Of the selected positions 80% become ``<mask>``, 10% a random token, 10% stay as they are.
With whole-word masking, whole words are selected (all their sub-word tokens together).
Only selected positions are scored, so the vocabulary projection runs on 15% of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.errors import HeadstartError
from headstart.objectives.base import Objective
from headstart.train.tensor_parallel import vocab_argmax


class MaskedLM(Objective):
    name = "mlm"

    def __init__(
        self,
        vocab_size: int,
        mask_id: int,
        special_ids: Sequence[int],
        mask_prob: float = 0.15,
        word_start: np.ndarray | None = None,
    ) -> None:
        if not 0.0 < mask_prob < 1.0:
            raise HeadstartError(f"objective.mask_prob={mask_prob}: expected a fraction between 0 and 1")
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.mask_prob = mask_prob
        self.head_fraction = mask_prob
        self.maskable = torch.ones(vocab_size, dtype=torch.bool)
        self.maskable[list(special_ids)] = False
        self.word_start = None if word_start is None else torch.as_tensor(word_start, dtype=torch.bool)

    def select(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Boolean (B, T): which positions the model must predict."""
        maskable = self.maskable[tokens]
        if self.word_start is None:
            draw = torch.rand(tokens.shape, generator=generator)
            return (draw < self.mask_prob) & maskable
        # A word starts at a word-start token or after a special token; its tokens share one draw.
        starts = self.word_start[tokens] | ~maskable
        starts[:, 0] = True
        word_id = starts.long().cumsum(dim=1) - 1
        draw = torch.rand(tokens.shape, generator=generator)
        return (draw.gather(1, word_id) < self.mask_prob) & maskable

    def make_batch(self, windows: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        tokens = windows[:, :-1]
        selected = self.select(tokens, generator)
        action = torch.rand(tokens.shape, generator=generator)
        random_tokens = torch.randint(0, self.vocab_size, tokens.shape, generator=generator)
        inputs = torch.where(selected & (action < 0.8), self.mask_id, tokens)
        inputs = torch.where(selected & (action >= 0.9), random_tokens, inputs)
        return {"input": inputs, "target": tokens, "selected": selected}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hidden = model(batch["input"])
        selected = batch["selected"]
        logits = model.logits(hidden[selected]).float()
        target = batch["target"][selected]
        if target.numel() == 0:  # a tiny batch can draw no position; contribute nothing
            zero = hidden.sum() * 0.0
            return zero, {"masked_accuracy": zero.detach()}
        loss = F.cross_entropy(logits, target)
        accuracy = (vocab_argmax(logits) == target).float().mean()
        return loss, {"masked_accuracy": accuracy.detach()}

    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        """Positions the loss averages over (a rank's share of them weighs its loss)."""
        return int(batch["selected"].sum())

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input"].numel()
