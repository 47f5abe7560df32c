"""Self-supervised pretraining on unlabelled images: dataset + vision backbone + SimCLR or MAE,
through the same loop, checkpoints and resume as text.

While it trains, the frozen backbone is scored at every evaluation by kNN and a linear probe
on a labelled dataset (``data.eval_images``), so a run shows when its features stop improving
even while its own loss keeps falling.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from headstart.config import PretrainConfig, build, save_yaml, to_dict
from headstart.data.augment import build_views
from headstart.data.examples import ExampleBatches
from headstart.data.images import ImageSet, read_images
from headstart.errors import HeadstartError
from headstart.models.build import build_model
from headstart.objectives.base import Objective
from headstart.objectives.contrastive import SimCLR
from headstart.objectives.mae import MAE
from headstart.train import checkpoint as ckpt
from headstart.train.continued import carried_optimizer, lineage_of, write_lineage
from headstart.train.flops import counted_flops
from headstart.train.frozen_features import frozen_scores
from headstart.train.loop import Job, LoopResult, Outputs, Start, train_loop
from headstart.train.run_dir import open_run

IMAGE_OBJECTIVES = ("simclr", "mae")


def resolve_vision(config: PretrainConfig, images: ImageSet) -> PretrainConfig:
    """Fill the backbone's channels and image size from the data, and check the pairing."""
    _, height, width, channels = images.images.shape
    if height != width:
        raise HeadstartError(f"{config.data.images}: images are {width}×{height}; expected square images")
    vision = config.vision
    for name, value in (("channels", channels), ("image_size", height)):
        given = getattr(vision, name)
        if given and given != value:
            raise HeadstartError(f"vision.{name}={given}: the images in {config.data.images} have {value}")
    vision = replace(vision, channels=channels, image_size=height)
    if config.objective.name == "mae" and vision.kind != "vit":
        raise HeadstartError("objective.name=mae: masked autoencoding needs vision.kind=vit")
    name = config.run.name or f"{config.objective.name}-{Path(config.data.images).stem}"
    return replace(config, vision=vision, run=replace(config.run, name=name))


def continue_image_checkpoint(config: PretrainConfig) -> tuple[PretrainConfig, nn.Module, Path]:
    """``config`` with the backbone settings of the image checkpoint it continues, and that
    checkpoint's trained model and directory. Domain-adaptive pretraining on new images: the whole model
    carries over when the objective is the same, else only the backbone."""
    folder = ckpt.resolve_checkpoint(config.init)
    ckpt.verify(folder)
    source = build(PretrainConfig, ckpt.read_config(folder), "checkpoint config")
    if not source.data.images:
        raise HeadstartError(f"init={config.init}: a text checkpoint; continuing on images needs an image one")
    for name in ("channels", "image_size"):
        given, trained = getattr(config.vision, name), getattr(source.vision, name)
        if given != trained:
            raise HeadstartError(
                f"init={config.init}: trained on images with {name}={trained}; {config.data.images} has {given}"
            )
    trained = build_model(source)
    ckpt.load_weights(folder, trained)
    return replace(config, vision=source.vision), trained, folder


def load_continued(model: nn.Module, trained: nn.Module) -> str:
    """Copy the continued checkpoint's weights: all of them when the heads have the same shapes
    (the same objective), else the backbone's. Returns which."""
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    if shapes == {name: tensor.shape for name, tensor in trained.state_dict().items()}:
        model.load_state_dict(trained.state_dict())
        return "backbone and head"
    model.backbone.load_state_dict(trained.backbone.state_dict())
    return "backbone"


def build_image_objective(config: PretrainConfig) -> Objective:
    vision, objective = config.vision, config.objective
    if objective.name == "mae":
        return MAE((vision.image_size // vision.patch) ** 2, objective.mask_ratio)
    views = build_views((vision.image_size, vision.image_size), vision.channels, config.augment)
    return SimCLR(views, objective.temperature, objective.chunk)


def flops_per_image(model: nn.Module, objective: Objective, sample: torch.Tensor) -> float:
    """Training FLOPs per image: the objective's forward on a small batch, counted by torch's
    flop counter, times three (backward costs about twice the forward), or four with GradCache
    (which runs the forward twice)."""
    batch = objective.make_batch(sample, torch.Generator().manual_seed(0))
    model.eval()  # counting must not move batch-norm statistics
    with torch.no_grad():
        forward = counted_flops(lambda: objective.loss(model, batch))
    model.train()
    passes = 4.0 if getattr(objective, "chunk", 0) > 0 else 3.0
    return passes * forward / len(sample)


def eval_subset(images: ImageSet, count: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``count`` labelled images, spread evenly over the split (the same ones every time)."""
    if images.labels is None:
        raise HeadstartError(f"data.eval_images={images.source}: expected labelled images")
    rows = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(np.int64)
    return images.images[rows], images.labels[rows]


def pretrain_images(
    config: PretrainConfig, resume: bool = False, console: Console | None = None, quiet: bool = False
) -> LoopResult:
    """Run (or resume) one image pretraining run."""
    console = console or Console(stderr=True)
    if config.objective.name not in IMAGE_OBJECTIVES:
        raise HeadstartError(f"objective.name={config.objective.name}: images take simclr or mae")
    train = read_images(config.data.images, "train")
    config = resolve_vision(config, train)
    continued, folder = None, None
    if config.init:
        config, continued, folder = continue_image_checkpoint(config)
    run_dir, resume_from = open_run(config, resume, console)
    model = build_model(config)
    if continued is not None:
        console.print(f"continuing {folder}: its {load_continued(model, continued)}", highlight=False)
    lineage = lineage_of(folder) if folder else []
    carried = carried_optimizer(folder, config.init_optimizer) if folder else None
    objective = build_image_objective(config)
    backbone = model.backbone
    console.print(
        f"model: {config.vision.kind} ({sum(p.numel() for p in backbone.parameters()):,} parameters) + "
        f"{config.objective.name} head; {len(train):,} unlabelled images "
        f"{config.vision.image_size}×{config.vision.image_size}×{config.vision.channels}",
        highlight=False,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")
    evaluate = None
    if config.data.eval_images:
        fit = eval_subset(read_images(config.data.eval_images, "train"), config.data.eval_examples)
        test = eval_subset(read_images(config.data.eval_images, "test"), config.data.eval_examples)

        def evaluate(model: nn.Module) -> dict[str, float]:
            return frozen_scores(model.backbone, *fit, *test)

    sample = torch.from_numpy(train.images[: min(8, len(train))].copy())  # a view of read-only data
    source = ExampleBatches(len(train), lambda rows: torch.from_numpy(train.images[rows]), config.train.seed)
    job = Job(model, objective, source, config, flops_per_image(model, objective, sample))
    extras = (lambda into: write_lineage(lineage, into)) if lineage else None
    outputs = Outputs(run_dir, to_dict(config), evaluate, extras, console, quiet)
    return train_loop(job, outputs, Start(resume_from, carried_optimizer=carried))
