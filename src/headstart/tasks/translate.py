"""Translation with a decoder-only model conditioned on the source (e.g. Multi30k en→de).

A pair becomes ``<eod> source <sep> target <eod>``; the loss is on the target tokens only.
Decoding is greedy or beam search, batched over sentences (right-padded rows, each growing at
its own length); reported as corpus BLEU (sacreBLEU, 13a tokenization, 0–100).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sacrebleu
import torch
from tokenizers import Tokenizer
from torch import nn

from headstart.config import TaskConfig
from headstart.data.labelled import iter_task_records
from headstart.data.tokenizers import tokenizer_info
from headstart.errors import HeadstartError
from headstart.objectives.classify import pad_batch
from headstart.objectives.tag import IGNORE, TokenTargets
from headstart.tasks.base import TextTask, length_batches

VAL_SENTENCES = 300  # decoded for early stopping; the reported set is decoded whole


@dataclass(frozen=True)
class Pairs:
    sources: list[str]
    targets: list[str]


def read_pairs(path: str | Path, source_field: str, target_field: str) -> Pairs:
    sources, targets = [], []
    for number, record in iter_task_records(path):
        pair = [record.get(source_field), record.get(target_field)]
        if not all(isinstance(x, str) and x.strip() for x in pair):
            raise HeadstartError(
                f"task file {path}:{number}: expected non-empty text fields {source_field!r} and {target_field!r}"
            )
        sources.append(pair[0])
        targets.append(pair[1])
    return Pairs(sources, targets)


@dataclass
class EncodedPairs:
    prompts: list[np.ndarray]  # <eod> source <sep>
    ids: list[np.ndarray]  # the training input: prompt + target (without the final <eod>)
    targets: list[np.ndarray]  # next token at target positions, IGNORE on the prompt
    references: list[str]
    truncated: int


class Translator(nn.Module):
    """A causal backbone read out through its own (tied) vocabulary projection."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if not backbone.config.causal:
            raise HeadstartError("task.kind=translate: needs a causal (decoder) checkpoint, got an encoder")
        self.backbone = backbone

    def forward(self, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.backbone.logits(self.backbone(idx, padding_mask=mask))


@torch.no_grad()
def decode(
    model: Translator, prompts: list[np.ndarray], max_new: int, stop: int, pad: int, beam: int = 1
) -> list[list[int]]:
    """Greedy (beam=1) or beam search for every prompt; returns the new tokens up to ``stop``.

    Rows are right-padded and each grows at its own length, so the causal model never attends
    to padding. Beams are ranked by log-probability over length (no length bonus beyond that).
    """
    device = next(model.parameters()).device
    context = model.backbone.config.context
    n = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device).repeat_interleave(beam)
    width = min(context, int(lengths.max()) + max_new)
    buffer = torch.full((n * beam, width), pad, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        buffer[row * beam : (row + 1) * beam, : len(prompt)] = torch.from_numpy(prompt).to(device)
    start = lengths.clone()
    scores = torch.zeros(n, beam, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    done = torch.zeros(n * beam, dtype=torch.bool, device=device)
    for _ in range(max_new):
        if bool(done.all()) or int(lengths.max()) >= width:
            break
        # Causal: nothing beyond the longest row can matter, and only each row's last position is read out.
        span = int(lengths.max())
        mask = torch.arange(span, device=device)[None, :] < lengths[:, None]
        hidden = model.backbone(buffer[:, :span], padding_mask=mask)
        logits = model.backbone.logits(hidden[torch.arange(n * beam, device=device), lengths - 1]).float()
        logprobs = logits.log_softmax(-1)
        logprobs[done] = float("-inf")
        logprobs[done, stop] = 0.0  # a finished beam only continues with nothing
        total = (scores.view(-1, 1) + logprobs).view(n, beam * logprobs.size(-1))
        scores, flat = total.topk(beam, dim=-1)
        parent = (flat // logprobs.size(-1)) + torch.arange(n, device=device)[:, None] * beam
        token = (flat % logprobs.size(-1)).view(-1)
        parent = parent.view(-1)
        buffer, lengths, was_done = buffer[parent], lengths[parent], done[parent]
        grow = ~was_done
        buffer[grow.nonzero().squeeze(-1), lengths[grow]] = token[grow]
        lengths = lengths + grow.long()
        done = was_done | (token == stop)
    new_tokens = (lengths - start).view(n, beam).float()
    ranked = (scores / new_tokens.clamp(min=1)).argmax(-1)
    out = []
    for row in range(n):
        flat_row = row * beam + int(ranked[row])
        tokens = buffer[flat_row, int(start[flat_row]) : int(lengths[flat_row])].tolist()
        out.append(tokens[: tokens.index(stop)] if stop in tokens else tokens)
    return out


class TranslateTask(TextTask):
    metric = "bleu"
    track_eval = False  # decoding the whole reported set at every evaluation costs too much

    def __init__(self, config: TaskConfig, tokenizer: Tokenizer | None) -> None:
        super().__init__(config, tokenizer)
        self.objective = TokenTargets("translate", head_fraction=1.0)
        self.train: Pairs | None = None
        self.eval: Pairs | None = None

    def read(self) -> None:
        c = self.config
        self.train = read_pairs(c.train, c.text_field, c.label_field)
        self.eval = read_pairs(c.eval, c.text_field, c.label_field)

    @property
    def strata(self) -> np.ndarray:
        assert self.train is not None
        return np.zeros(len(self.train.sources), dtype=np.int64)  # no classes: a uniform random subset

    def encode(self, split: str, rows: np.ndarray | None = None) -> EncodedPairs:
        data = self.train if split == "train" else self.eval
        assert data is not None
        info = tokenizer_info(self.tokenizer)
        rows = np.arange(len(data.sources)) if rows is None else rows
        sources = self.tokenizer.encode_batch([data.sources[i] for i in rows], add_special_tokens=False)
        targets = self.tokenizer.encode_batch([data.targets[i] for i in rows], add_special_tokens=False)
        max_len = self.config.max_len
        out = EncodedPairs([], [], [], [data.targets[i] for i in rows], 0)
        for source, target in zip(sources, targets, strict=True):
            src, tgt = source.ids[: max_len // 2 - 2], target.ids
            prompt = [info.eod_id, *src, info.sep_id]
            tgt = tgt[: max_len - len(prompt)]
            out.truncated += int(len(src) < len(source.ids) or len(tgt) < len(target.ids))
            sequence = [*prompt, *tgt, info.eod_id]
            target_ids = np.array(sequence[1:], dtype=np.int64)
            target_ids[: len(prompt) - 1] = IGNORE
            out.prompts.append(np.array(prompt, dtype=np.int64))
            out.ids.append(np.array(sequence[:-1], dtype=np.int64))
            out.targets.append(target_ids)
        return out

    def build_model(self, backbone: nn.Module, pooling: str) -> Translator:
        return Translator(backbone)

    def collate(self, encoded: EncodedPairs) -> Callable[[list[int]], dict[str, torch.Tensor]]:
        def batch(rows: list[int]) -> dict[str, torch.Tensor]:
            ids, mask = pad_batch([encoded.ids[r] for r in rows], self.pad_id)
            target, _ = pad_batch([encoded.targets[r] for r in rows], IGNORE)
            return {"input": ids, "mask": mask, "target": target}

        return batch

    def size(self, encoded: EncodedPairs) -> int:
        return len(encoded.ids)

    def features(self, model: nn.Module, encoded: EncodedPairs) -> tuple[torch.Tensor, torch.Tensor]:
        raise HeadstartError("task.kind=translate: a linear probe does not apply; use full fine-tuning")

    def translate(self, model: Translator, prompts: list[np.ndarray], beam: int) -> list[str]:
        info = tokenizer_info(self.tokenizer)
        was_training = model.training
        model.eval()
        hypotheses: list[str] = [""] * len(prompts)
        for rows in length_batches([len(p) for p in prompts], batch_size=64 // beam or 1):
            max_new = self.config.max_len - int(max(len(prompts[r]) for r in rows))
            decoded = decode(model, [prompts[r] for r in rows], max_new, info.eod_id, self.pad_id, beam)
            for row, tokens in zip(rows, decoded, strict=True):
                hypotheses[row] = self.tokenizer.decode(tokens).strip()
        model.train(was_training)
        return hypotheses

    def score(self, model: nn.Module, encoded: EncodedPairs, final: bool = False) -> dict[str, float]:
        count = len(encoded.prompts) if final else min(len(encoded.prompts), VAL_SENTENCES)
        beam = self.config.beam_size if final else 1
        hypotheses = self.translate(model, encoded.prompts[:count], beam)  # type: ignore[arg-type]
        bleu = sacrebleu.corpus_bleu(hypotheses, [encoded.references[:count]])
        return {"bleu": float(bleu.score), "truncated_pairs": float(encoded.truncated)}
