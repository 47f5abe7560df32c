"""What a pretraining run reads, by modality: token shards for text, an image set for images.

``pretrain`` runs the same steps for both (open the data, adopt a continued checkpoint, resolve
the config, build, warm-start, train); each class here answers the questions whose answers
differ: which samples, which evaluation, what one unit costs, what a checkpoint adds.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from headstart.config import EmbeddingsConfig, PretrainConfig
from headstart.data.examples import ExampleBatches
from headstart.data.extend_vocab import check_extends, new_token_pieces
from headstart.data.images import ImageSet, read_images
from headstart.data.shards import TokenShards, open_shards
from headstart.data.tokenizers import TokenizerInfo, load_tokenizer, tokenizer_info
from headstart.data.windows import WindowSampler, eval_windows
from headstart.errors import HeadstartError
from headstart.models import TextBackbone, backbone_of, resolve
from headstart.objectives.base import Objective
from headstart.objectives.classify import pad_batch
from headstart.objectives.registry import ObjectiveEntry, Passes, objective_entry
from headstart.objectives.skipgram import SkipGramVectors, train_skipgram
from headstart.readouts.frozen_features import frozen_scores
from headstart.train.checkpoint import Opened
from headstart.train.flops import counted_flops, train_flops_per_token
from headstart.train.loop import SampleSource
from headstart.train.validate import evaluate_windows
from headstart.workflows.continued import grow_vocabulary

Evaluate = Callable[[nn.Module], dict[str, float]]


class TrainWindows:
    """Token windows of the train split as tensors, by sample index."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int) -> None:
        self.sampler = WindowSampler(shards.train, seq_len + 1, seed)

    def batch(self, first: int, count: int) -> torch.Tensor:
        return torch.from_numpy(self.sampler.batch(first, count))


class TrainSentences:
    """Whole documents (sentences, for a line-per-sentence corpus) of the train split, a start
    token in front, cut to ``seq_len`` and right-padded per batch: what SimCSE compares."""

    def __init__(self, shards: TokenShards, seq_len: int, pad_id: int, seed: int) -> None:
        self.documents = shards.documents("train")
        self.start, self.seq_len, self.pad_id = shards.eod_id, seq_len, pad_id
        self.examples = ExampleBatches(len(self.documents), self.collate, seed)

    def collate(self, rows: list[int]) -> torch.Tensor:
        return pad_batch([np.concatenate([[self.start], self.documents[r][: self.seq_len - 1]]) for r in rows],
                         self.pad_id)[0]  # fmt: skip

    def batch(self, first: int, count: int) -> torch.Tensor:
        return self.examples.batch(first, count)


def transformer_passes(config: PretrainConfig) -> Passes:
    """The transformer passes one training token costs: (shape, share of tokens the vocabulary
    head scores, how many times), as the objective declares them."""
    passes = objective_entry(config.objective.name).passes
    if passes is None:
        raise HeadstartError(f"objective.name={config.objective.name}: not a text objective")
    return passes(config)


def pretrain_flops_per_token(config: PretrainConfig) -> float:
    """Training FLOPs per input token, every pass the objective runs included (ELECTRA's generator)."""
    seq_len = config.train.seq_len
    return sum(times * train_flops_per_token(m, seq_len, head) for m, head, times in transformer_passes(config))


def split_bytes_per_token(meta: dict[str, Any], split: str) -> float | None:
    """UTF-8 bytes per token of a prepared split (for bits per byte)."""
    stats = meta["splits"][split]
    return stats["bytes"] / stats["tokens"] if stats.get("tokens") else None


def resolve_config(config: PretrainConfig, info: TokenizerInfo) -> PretrainConfig:
    """Fill what the data decides (vocabulary, causal or not) and check what must agree."""
    entry, model, vocab_size = objective_entry(config.objective.name), config.model, info.vocab_size
    if model.vocab_size and model.vocab_size != vocab_size:
        raise HeadstartError(
            f"model.vocab_size={model.vocab_size}: the tokenizer of {config.data.shards} has "
            f"{vocab_size} tokens; they must match (leave vocab_size at 0 to take the tokenizer's)"
        )
    causal = model.causal if entry.causal is None else entry.causal
    config = entry.resolve(replace(config, model=resolve(replace(model, vocab_size=vocab_size, causal=causal))))
    if config.train.seq_len > config.model.context:
        raise HeadstartError(f"train.seq_len={config.train.seq_len}: longer than model.context={config.model.context}")
    name = config.run.name or f"{config.objective.name}-{Path(config.data.shards).name}"
    return replace(config, run=replace(config.run, name=name))


def skipgram_embeddings(
    backbone: TextBackbone, shards: TokenShards, settings: EmbeddingsConfig, seed: int
) -> SkipGramVectors:
    """Train skip-gram over the train split's documents and start the token embedding from it.

    The vectors are rescaled to the model's ``init_std`` so the residual stream starts at the
    scale the rest of the initialisation assumes; tokens the split never uses keep their
    random start."""
    tokens = np.asarray(shards.train, dtype=np.int64)
    ends = np.flatnonzero(tokens == shards.eod_id)
    documents = [doc[:-1] for doc in np.split(tokens, ends + 1) if len(doc) > 2]
    counts = np.bincount(tokens, minlength=backbone.config.vocab_size)
    counts[shards.eod_id] = 0
    trained = train_skipgram(
        documents,
        counts,
        dim=backbone.config.n_embd,
        window=settings.window,
        negatives=settings.negatives,
        epochs=settings.epochs,
        seed=seed,
    )
    seen = torch.from_numpy(counts > 0)
    vectors = trained.vectors[seen]
    backbone.start_embedding(seen, vectors * (backbone.config.init_std / vectors.std()))
    return trained


class TextData:
    """Prepared token shards (``headstart prepare``) and their tokenizer."""

    def __init__(self, config: PretrainConfig, entry: ObjectiveEntry) -> None:
        if not config.data.shards:
            raise HeadstartError("data.shards: expected the directory written by `headstart prepare`")
        self.entry = entry
        self.shards = open_shards(config.data.shards)
        self.tokenizer_path = Path(config.data.shards) / "tokenizer.json"
        self.tokenizer: Tokenizer | None = load_tokenizer(self.tokenizer_path)

    def adopt(self, config: PretrainConfig, opened: Opened) -> PretrainConfig:
        """``config`` with the model settings of the checkpoint it continues (dropout: its own). The
        shards' tokenizer is the checkpoint's, or extends it: then the trained embedding grows a
        row per new token (``grow_vocabulary``)."""
        if opened.tokenizer is None:
            raise HeadstartError(f"init={config.init}: an image checkpoint; continuing needs a text one")
        backbone = opened.backbone
        if (opened.folder / "tokenizer.json").read_bytes() != self.tokenizer_path.read_bytes():
            check_extends(opened.tokenizer, self.tokenizer, f"data.shards={config.data.shards}")
            grow_vocabulary(backbone, new_token_pieces(opened.tokenizer, self.tokenizer))
        model = replace(opened.config.model, dropout=config.model.dropout, vocab_size=backbone.embed.num_embeddings)
        return replace(config, model=model)

    def resolve(self, config: PretrainConfig) -> PretrainConfig:
        return resolve_config(config, tokenizer_info(self.tokenizer))

    def describe(self, config: PretrainConfig, model: nn.Module) -> str:
        m, backbone = config.model, backbone_of(model)
        mixing = f"Mamba (state {m.d_state}, expand {m.expand})" if m.kind == "mamba" else f"{m.n_head} heads"
        extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in backbone.parameters())
        around = f", {extra:,} more around it for {config.objective.name}" if extra else ""
        return (
            f"model: {'decoder' if m.causal else 'encoder'} {m.n_layer} layers × {m.n_embd} wide, {mixing}, "
            f"context {m.context}, vocab {m.vocab_size} — {backbone.num_params():,} parameters "
            f"({backbone.num_params(embedding=False):,} without the embedding){around}; "
            f"{pretrain_flops_per_token(config) / 1e6:,.1f} MFLOP/token training"
        )

    def warm_start(self, model: nn.Module, config: PretrainConfig) -> tuple[float, float, str]:
        """Skip-gram token embeddings when the config asks: (FLOPs, seconds, what was done)."""
        if config.embeddings.init != "skipgram":
            return 0.0, 0.0, ""
        warm = skipgram_embeddings(backbone_of(model), self.shards, config.embeddings, config.train.seed)
        note = f"token embeddings: skip-gram warm start, {warm.pairs:,} pairs in {warm.seconds:.0f} s"
        return warm.flops, warm.seconds, note

    def source(self, config: PretrainConfig) -> SampleSource:
        if self.entry.samples == "sentences":
            pad_id = tokenizer_info(self.tokenizer).pad_id
            return TrainSentences(self.shards, config.train.seq_len, pad_id, config.train.seed)
        return TrainWindows(self.shards, config.train.seq_len, config.train.seed)

    def flops_per_unit(self, config: PretrainConfig, model: nn.Module, objective: Objective) -> float:
        return pretrain_flops_per_token(config)

    def evaluator(self, config: PretrainConfig, objective: Objective, opened: Opened | None) -> Evaluate | None:
        """Validation loss, perplexity and bits per byte on fixed windows; for a continued run
        also the loss on the data the checkpoint came from (what continuing forgets)."""
        if not self.entry.comparable_loss:  # SimCSE: its loss without dropout is trivial; probes measure it
            return None
        train = config.train
        val = eval_windows(self.shards.val, train.seq_len + 1, train.eval_batches * train.batch_size)
        bytes_per_token = split_bytes_per_token(self.shards.meta, "val")
        origin = self.origin_windows(config, opened)

        def evaluate(model: nn.Module) -> dict[str, float]:
            scores = evaluate_windows(model, objective, val, train.batch_size, bytes_per_token)
            if origin is not None:
                scores["origin_val_loss"] = evaluate_windows(model, objective, origin, train.batch_size)["val_loss"]
            return scores

        return evaluate

    def origin_windows(self, config: PretrainConfig, opened: Opened | None) -> np.ndarray | None:
        """Validation windows of the data a continued checkpoint was trained on; None when its loss
        is not comparable (another objective) or its data is gone."""
        if opened is None or opened.config.objective.name != config.objective.name:
            return None
        if not (Path(opened.config.data.shards) / "meta.json").is_file():
            return None
        shards, train = open_shards(opened.config.data.shards), config.train
        return eval_windows(shards.val, train.seq_len + 1, train.eval_batches * train.batch_size)

    def write_extras(self, folder: Path) -> None:
        shutil.copyfile(self.tokenizer_path, folder / "tokenizer.json")


def eval_subset(images: ImageSet, count: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``count`` labelled images, spread evenly over the split (the same ones every time)."""
    if images.labels is None:
        raise HeadstartError(f"data.eval_images={images.source}: expected labelled images")
    rows = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(np.int64)
    return images.images[rows], images.labels[rows]


class ImageData:
    """Unlabelled images (IDX, .npz, image folders); while training, the frozen backbone is scored
    by kNN and a linear probe on a labelled set (``data.eval_images``), so a run shows when its
    features stop improving even while its own loss keeps falling."""

    tokenizer: Tokenizer | None = None

    def __init__(self, config: PretrainConfig, entry: ObjectiveEntry) -> None:
        if not config.data.images:
            raise HeadstartError(f"objective.name={entry.name}: expected data.images (an image dataset)")
        self.images = read_images(config.data.images, "train")

    def adopt(self, config: PretrainConfig, opened: Opened) -> PretrainConfig:
        """``config`` with the backbone settings of the image checkpoint it continues."""
        if opened.tokenizer is not None:
            raise HeadstartError(f"init={config.init}: a text checkpoint; continuing on images needs an image one")
        config = self.resolve(config)
        for name in ("channels", "image_size"):
            given, trained = getattr(config.vision, name), getattr(opened.config.vision, name)
            if given != trained:
                raise HeadstartError(
                    f"init={config.init}: trained on images with {name}={trained}; {config.data.images} has {given}"
                )
        return replace(config, vision=opened.config.vision)

    def resolve(self, config: PretrainConfig) -> PretrainConfig:
        """Fill the backbone's channels and image size from the data, and check the pairing."""
        _, height, width, channels = self.images.images.shape
        if height != width:
            raise HeadstartError(f"{config.data.images}: images are {width}×{height}; expected square images")
        vision = config.vision
        for name, value in (("channels", channels), ("image_size", height)):
            given = getattr(vision, name)
            if given and given != value:
                raise HeadstartError(f"vision.{name}={given}: the images in {config.data.images} have {value}")
        name = config.run.name or f"{config.objective.name}-{Path(config.data.images).stem}"
        vision = replace(vision, channels=channels, image_size=height)
        return replace(config, vision=vision, run=replace(config.run, name=name))

    def describe(self, config: PretrainConfig, model: nn.Module) -> str:
        v, size = config.vision, sum(p.numel() for p in backbone_of(model).parameters())
        return (
            f"model: {v.kind} ({size:,} parameters) + {config.objective.name} head; "
            f"{len(self.images):,} unlabelled images {v.image_size}×{v.image_size}×{v.channels}"
        )

    def warm_start(self, model: nn.Module, config: PretrainConfig) -> tuple[float, float, str]:
        return 0.0, 0.0, ""

    def source(self, config: PretrainConfig) -> SampleSource:
        images = self.images.images
        return ExampleBatches(len(self.images), lambda rows: torch.from_numpy(images[rows]), config.train.seed)

    def flops_per_unit(self, config: PretrainConfig, model: nn.Module, objective: Objective) -> float:
        """Training FLOPs per image: the objective's forward on a small batch, counted by torch's
        flop counter, times three (backward costs about twice the forward), or four with GradCache
        (which runs the forward twice)."""
        sample = torch.from_numpy(self.images.images[: min(8, len(self.images))].copy())  # a view of read-only data
        batch = objective.make_batch(sample, torch.Generator().manual_seed(0))
        model.eval()  # counting must not move batch-norm statistics
        with torch.no_grad():
            forward = counted_flops(lambda: objective.loss(model, batch))
        model.train()
        return (4.0 if objective.chunk > 0 else 3.0) * forward / len(sample)

    def evaluator(self, config: PretrainConfig, objective: Objective, opened: Opened | None) -> Evaluate | None:
        if not config.data.eval_images:
            return None
        fit = eval_subset(read_images(config.data.eval_images, "train"), config.data.eval_examples)
        test = eval_subset(read_images(config.data.eval_images, "test"), config.data.eval_examples)
        return lambda model: frozen_scores(backbone_of(model), *fit, *test)

    def write_extras(self, folder: Path) -> None:
        return None


def open_data(config: PretrainConfig) -> TextData | ImageData:
    """The data of ``config``'s objective: token shards for a text objective, images for an image one."""
    entry = objective_entry(config.objective.name)
    return ImageData(config, entry) if entry.modality == "image" else TextData(config, entry)
