"""Use a pretrained checkpoint: sample text from a decoder, fill masks with an encoder."""

from __future__ import annotations

import torch

from headstart.errors import HeadstartError
from headstart.models import TextBackbone


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens and the smallest set whose probability reaches ``top_p``."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # drop a token once the ones before it reach top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def sample(
    model: TextBackbone,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_token: int | None = None,
) -> list[int]:
    """Autoregressive sampling (greedy when temperature is 0), the window sliding at the context."""
    if not model.config.causal:
        raise HeadstartError("generate: this checkpoint is an encoder (masked LM); use fill-mask instead")
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise HeadstartError("generate: expected temperature ≥ 0 and 0 < top_p ≤ 1")
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens = list(prompt)
    for _ in range(max_new_tokens):
        context = torch.tensor([tokens[-model.config.context :]], device=device)
        logits = model.logits(model(context)[:, -1]).float()
        if temperature == 0:
            next_token = int(logits.argmax(-1))
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            next_token = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        tokens.append(next_token)
        if next_token == stop_token:
            break
    return tokens[len(prompt) :]


@torch.no_grad()
def fill_mask(model: TextBackbone, tokens: list[int], mask_id: int, top_k: int = 5) -> list[list[tuple[int, float]]]:
    """For each mask position, the ``top_k`` (token, probability) predictions."""
    if model.config.causal:
        raise HeadstartError("fill-mask: this checkpoint is a decoder (causal LM); use generate instead")
    positions = [i for i, t in enumerate(tokens) if t == mask_id]
    if not positions:
        raise HeadstartError("fill-mask: the text has no <mask> token to predict")
    device = next(model.parameters()).device
    hidden = model(torch.tensor([tokens], device=device))[0, positions]
    probs = model.logits(hidden).float().softmax(-1)
    top = torch.topk(probs, top_k)
    return [list(zip(ids.tolist(), ps.tolist(), strict=True)) for ids, ps in zip(top.indices, top.values, strict=True)]
