"""``readout=prompt``: prompt-based fine-tuning (PET, Schick & Schütze 2021; LM-BFF, Gao et al.
2021). Each text becomes a cloze pattern ("{text} It was"), and a class's score is the pretrained
LM head's score of its label word where the pattern ends: the next token for a decoder, an
appended mask token for an encoder. The classifier thus starts as the pretrained LM's own guess
instead of a random head, and a few labels only have to sharpen it. Scratch gets the same pattern
and the same (random) head rows, so the comparison stays fair."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from tokenizers import Tokenizer

from headstart.data.tokenizers import tokenizer_info
from headstart.errors import HeadstartError
from headstart.readouts.context import Finetuning, Outcome
from headstart.readouts.full import finetuned
from headstart.readouts.registry import ReadoutEntry, register
from headstart.tasks.classify import EncodedTexts


def pattern_tokens(tokenizer: Tokenizer, pattern: str) -> tuple[list[int], list[int]]:
    """The token ids before and after ``{text}`` in ``pattern``."""
    before, after = pattern.split("{text}")
    encode = lambda piece: tokenizer.encode(piece, add_special_tokens=False).ids if piece.strip() else []  # noqa: E731
    return encode(before), encode(after)


def label_word_ids(tokenizer: Tokenizer, words: list[str], classes: list[str]) -> list[int]:
    """One token id per class: its label word, read with a leading space as it follows the pattern."""
    words = words or classes
    if len(words) != len(classes):
        raise HeadstartError(f"label_words: expected one word per label ({len(classes)}: {classes}), got {words}")
    ids = []
    for word in words:
        tokens = tokenizer.encode(f" {word.strip()}", add_special_tokens=False).ids
        if len(tokens) != 1:
            raise HeadstartError(
                f"label_words: {word!r} is {len(tokens)} tokens of this checkpoint's tokenizer; "
                "expected one token per label word (set label_words to words it knows whole)"
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise HeadstartError(f"label_words: {words} share a token; expected one distinct word per label")
    return ids


def with_pattern(encoded: EncodedTexts, before: list[int], after: list[int], max_len: int) -> EncodedTexts:
    """Each text (start token first) placed inside the pattern, the text cut so the pattern fits."""
    room = max_len - 1 - len(before) - len(after)
    if room < 1:
        raise HeadstartError(
            f"prompt_pattern: its {len(before) + len(after)} tokens leave no room for text in task.max_len={max_len}"
        )
    ids = [np.array([x[0], *before, *x[1 : 1 + room], *after], dtype=np.int64) for x in encoded.ids]
    return EncodedTexts(ids, encoded.labels)


def prompt_finetune(ft: Finetuning) -> Outcome:
    config, task, model = ft.config, ft.task, ft.model
    backbone = model.backbone
    if not hasattr(backbone, "output_weight"):
        raise HeadstartError(f"readout=prompt: init {config.init} has no language-model head to score label words")
    before, after = pattern_tokens(task.tokenizer, config.prompt_pattern)
    if not backbone.config.causal:  # an encoder predicts the label word at a mask token
        after = [*after, tokenizer_info(task.tokenizer).mask_id]
    words = label_word_ids(task.tokenizer, config.label_words, task.train.classes)
    model.pooling = "last"  # the pattern's last position: where the label word is predicted
    with torch.no_grad():
        model.head.weight.copy_(backbone.output_weight[words])
        model.head.bias.zero_()
    wrap = lambda encoded: with_pattern(encoded, before, after, config.task.max_len)  # noqa: E731
    cell = replace(ft, fit_set=wrap(ft.fit_set), held_set=wrap(ft.held_set), eval_set=wrap(ft.eval_set))
    zero_shot = task.score(model, cell.held_set)[task.metric]
    words = config.label_words or task.train.classes
    ft.console.print(
        f"prompt {config.prompt_pattern!r}, label words {words}: {task.metric} {zero_shot:.3f} "
        "on the held-out labels before fine-tuning",
        highlight=False,
    )
    return finetuned(cell, model, cell.fit_set, config)


register(ReadoutEntry("prompt", prompt_finetune, task_kinds=("classify",)))
