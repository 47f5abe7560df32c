"""``readout=consistency``: full fine-tuning on the budget with consistency training on the
unlabelled training examples (``objectives/consistency.py``), through the one loop. As in
FixMatch, the final weights are kept: the held-out part of the budget scores the run (and
chooses among the sweep's candidates) but does not stop it early, because a few held-out
examples cannot tell apart the late steps, which the unlabelled loss goes on improving."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from headstart.config import AugmentConfig
from headstart.data.augment import augment, build_views, to_float
from headstart.data.examples import ExampleBatches
from headstart.data.tokenizers import tokenizer_info
from headstart.objectives.consistency import Consistency, View, cutout, noised_tokens
from headstart.readouts.context import Finetuning, Outcome
from headstart.readouts.full import finetuned, full_finetune, probe_head
from headstart.readouts.registry import ReadoutEntry, register

WEAK = AugmentConfig(crop_min=0.8, jitter=0.0, blur_p=0.0)
STRONG = AugmentConfig(crop_min=0.3, jitter=0.5, jitter_p=0.8, blur_p=0.5)


class LabelledAndUnlabelled:
    """Each step's labelled batch and ``ratio`` times as many unlabelled examples, both by index."""

    def __init__(self, labelled: ExampleBatches, unlabelled: ExampleBatches, ratio: int) -> None:
        self.labelled, self.unlabelled, self.ratio = labelled, unlabelled, ratio

    def batch(self, first: int, count: int) -> dict[str, Any]:
        return {
            "labelled": self.labelled.batch(first, count),
            "unlabelled": self.unlabelled.batch(first * self.ratio, count * self.ratio),
        }


def text_views(ft: Finetuning) -> tuple[View, View]:
    """The clean sentence, and one with ``consistency_noise`` of its tokens masked or replaced."""
    info, prob = tokenizer_info(ft.task.tokenizer), ft.config.consistency_noise

    def weak(raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"input": raw["input"], "mask": raw["mask"]}

    def strong(raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        noised = noised_tokens(raw["input"], raw["mask"], generator, prob, info.mask_id, info.vocab_size)
        return {"input": noised, "mask": raw["mask"]}

    return weak, strong


def image_views(ft: Finetuning) -> tuple[View, View]:
    """Light crops, against heavy crops, colour jitter, blur and cutout; both flipped only where
    ``task.flip`` allows it (a mirrored digit is another symbol)."""
    _, height, width, channels = ft.task.train.images.shape
    flip = ft.config.task.flip
    light, heavy = (build_views((height, width), channels, replace(views, flip=flip)) for views in (WEAK, STRONG))

    def view(views: torch.nn.Module, erase: bool) -> Any:
        def make(raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
            images = augment(views, to_float(raw["input"]), int(torch.randint(2**62, (1,), generator=generator)))
            return {"input": cutout(images, generator) if erase else images}

        return make

    return view(light, erase=False), view(heavy, erase=True)


def consistency(ft: Finetuning) -> Outcome:
    config, task = ft.config, ft.task
    pool = ft.unlabelled_set()
    if task.size(pool) == 0:  # every training example is in the budget: nothing to be consistent on
        ft.console.print("consistency training: no unlabelled examples outside the budget, so plain fine-tuning")
        return full_finetune(ft)
    flops = probe_head(ft) if config.head_init == "probe" else 0.0
    weak, strong = image_views(ft) if config.task.kind == "image" else text_views(ft)
    objective = Consistency(task.objective, weak, strong, config.consistency_threshold, config.consistency_weight)
    source = LabelledAndUnlabelled(
        ExampleBatches(task.size(ft.fit_set), task.collate(ft.fit_set), config.train.seed),
        ExampleBatches(task.size(pool), task.collate(pool), config.train.seed + 1),
        config.unlabelled_ratio,
    )
    ft.console.print(f"consistency training on {task.size(pool):,} unlabelled examples", highlight=False)
    outcome = finetuned(ft, ft.model, ft.fit_set, config, keep_last=True, objective=objective, source=source)
    return replace(outcome, flops=outcome.flops + flops)


register(ReadoutEntry("consistency", consistency, task_kinds=("classify", "image")))
