"""Self-supervised pretraining: prepared shards + transformer + objective, through the one loop."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from tokenizers import Tokenizer
from torch import nn

from headstart.config import EmbeddingsConfig, ModelConfig, PretrainConfig, build, merge, save_yaml, to_dict
from headstart.data.examples import ExampleBatches
from headstart.data.extend_vocab import check_extends, new_token_pieces
from headstart.data.shards import TokenShards, open_shards
from headstart.data.tokenizers import TokenizerInfo, load_tokenizer, tokenizer_info, word_start
from headstart.data.windows import WindowSampler, eval_windows
from headstart.errors import HeadstartError
from headstart.files import read_jsonl
from headstart.models import TextBackbone, resolve
from headstart.models.build import backbone_of, build_model
from headstart.objectives.base import Objective
from headstart.objectives.classify import pad_batch
from headstart.objectives.clm import CausalLM
from headstart.objectives.contrastive import SimCSE
from headstart.objectives.mlm import MaskedLM
from headstart.objectives.rtd import ReplacedTokenDetection, default_generator_layers
from headstart.objectives.skipgram import SkipGramVectors, train_skipgram
from headstart.train import checkpoint as ckpt
from headstart.train.continued import carried_optimizer, forgetting, grow_vocabulary, lineage_of, write_lineage
from headstart.train.distributed import launched
from headstart.train.flops import train_flops_per_token
from headstart.train.loop import Job, LoopResult, Outputs, Start, train_loop
from headstart.train.pretrain_images import pretrain_images
from headstart.train.run_dir import open_run
from headstart.train.validate import evaluate_windows


def build_objective(config: PretrainConfig, tokenizer: Tokenizer) -> Objective:
    if config.objective.name == "clm":
        return CausalLM()
    info = tokenizer_info(tokenizer)
    if config.objective.name == "simcse":
        return SimCSE(info.pad_id, config.objective.temperature, config.objective.chunk)
    masking = {
        "vocab_size": config.model.vocab_size,
        "mask_id": info.mask_id,
        "special_ids": info.special_ids,
        "mask_prob": config.objective.mask_prob,
        "word_start": word_start(tokenizer) if config.objective.whole_word else None,
    }
    if config.objective.name == "rtd":
        return ReplacedTokenDetection(**masking, detection_weight=config.objective.detection_weight)
    return MaskedLM(**masking)


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
    with torch.no_grad():
        backbone.embed.weight[seen] = vectors * (backbone.config.init_std / vectors.std())
    return trained


def transformer_passes(config: PretrainConfig) -> list[tuple[ModelConfig, float, float]]:
    """The transformer passes one training token costs: (shape, share of tokens the vocabulary
    head scores, how many times). SimCSE runs each sentence twice (GradCache adds a forward of
    each); ELECTRA adds its generator; masked LM scores only the masked tokens."""
    m, objective = config.model, config.objective
    if objective.name == "clm":
        return [(m, 1.0, 1.0)]
    if objective.name == "simcse":
        return [(m, 0.0, 2 * (4 / 3 if objective.chunk > 0 else 1.0))]
    if objective.name == "mlm":
        return [(m, objective.mask_prob, 1.0)]
    return [(m, 0.0, 1.0), (replace(m, n_layer=objective.generator_layers), objective.mask_prob, 1.0)]


def pretrain_flops_per_token(config: PretrainConfig) -> float:
    """Training FLOPs per input token, the generator's included for ELECTRA."""
    seq_len = config.train.seq_len
    return sum(times * train_flops_per_token(m, seq_len, head) for m, head, times in transformer_passes(config))


def resolve_config(config: PretrainConfig, info: TokenizerInfo) -> PretrainConfig:
    """Fill what the data decides (vocabulary, causal or not) and check what must agree."""
    model = config.model
    if model.vocab_size and model.vocab_size != info.vocab_size:
        raise HeadstartError(
            f"model.vocab_size={model.vocab_size}: the tokenizer of {config.data.shards} has "
            f"{info.vocab_size} tokens; they must match (leave vocab_size at 0 to take the tokenizer's)"
        )
    causal = model.causal if config.objective.name == "simcse" else config.objective.name == "clm"
    model = resolve(replace(model, vocab_size=info.vocab_size, causal=causal))
    objective = config.objective
    if objective.name == "rtd" and not objective.generator_layers:
        objective = replace(objective, generator_layers=default_generator_layers(model.n_layer))
    if config.train.seq_len > model.context:
        raise HeadstartError(f"train.seq_len={config.train.seq_len}: longer than model.context={model.context}")
    for name in ("steps", "batch_size", "grad_accum", "seq_len"):
        if getattr(config.train, name) < 1:
            raise HeadstartError(f"train.{name}={getattr(config.train, name)}: expected a positive integer")
    name = config.run.name or f"{config.objective.name}-{Path(config.data.shards).name}"
    return replace(config, model=model, objective=objective, run=replace(config.run, name=name))


def split_bytes_per_token(meta: dict[str, Any], split: str) -> float | None:
    """UTF-8 bytes per token of a prepared split (for bits per byte)."""
    stats = meta["splits"][split]
    return stats["bytes"] / stats["tokens"] if stats.get("tokens") else None


@dataclass
class Continued:
    """The checkpoint a run continues: where it is, how it was trained, its trained backbone."""

    folder: Path
    source: PretrainConfig
    backbone: nn.Module


def continue_from(config: PretrainConfig, shards_tokenizer: Path) -> tuple[PretrainConfig, Continued]:
    """``config`` with the model settings of the checkpoint it continues (dropout: its own), and
    that checkpoint. The shards' tokenizer is the checkpoint's, or extends it: then the trained
    embedding grows a row per new token (``grow_vocabulary``)."""
    folder = ckpt.resolve_checkpoint(config.init)
    ckpt.verify(folder)
    source = build(PretrainConfig, ckpt.read_config(folder), "checkpoint config")
    if source.data.images or not (folder / "tokenizer.json").is_file():
        raise HeadstartError(f"init={config.init}: an image checkpoint; continuing needs a text one")
    trained = build_model(source)
    ckpt.load_weights(folder, trained)
    backbone = backbone_of(trained)
    if (folder / "tokenizer.json").read_bytes() != shards_tokenizer.read_bytes():
        old, new = load_tokenizer(folder / "tokenizer.json"), load_tokenizer(shards_tokenizer)
        check_extends(old, new, f"data.shards={config.data.shards}")
        grow_vocabulary(backbone, new_token_pieces(old, new))
    model = replace(source.model, dropout=config.model.dropout, vocab_size=backbone.embed.num_embeddings)
    return replace(config, model=model), Continued(folder, source, backbone)


def origin_windows(continued: Continued, config: PretrainConfig) -> np.ndarray | None:
    """Validation windows of the data the continued checkpoint was trained on, to measure what
    continuing forgets; None when its loss is not comparable (another objective) or its data is gone."""
    source = continued.source
    if source.objective.name != config.objective.name or config.objective.name == "simcse":
        return None
    if not (Path(source.data.shards) / "meta.json").is_file():
        return None
    shards = open_shards(source.data.shards)
    return eval_windows(shards.val, config.train.seq_len + 1, config.train.eval_batches * config.train.batch_size)


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


class TrainWindows:
    """Token windows of the train split as tensors, by sample index."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int) -> None:
        self.sampler = WindowSampler(shards.train, seq_len + 1, seed)

    def batch(self, first: int, count: int) -> torch.Tensor:
        return torch.from_numpy(self.sampler.batch(first, count))


def describe(model: nn.Module, config: PretrainConfig, console: Console) -> None:
    m, backbone = config.model, backbone_of(model)
    generator = f", generator {config.objective.generator_layers} layers" if config.objective.name == "rtd" else ""
    mixing = f"Mamba (state {m.d_state}, expand {m.expand})" if m.kind == "mamba" else f"{m.n_head} heads"
    console.print(
        f"model: {'decoder' if m.causal else 'encoder'} {m.n_layer} layers × {m.n_embd} wide, {mixing}, "
        f"context {m.context}, vocab {m.vocab_size} — {backbone.num_params():,} parameters "
        f"({backbone.num_params(embedding=False):,} without the embedding){generator}; "
        f"{pretrain_flops_per_token(config) / 1e6:,.1f} MFLOP/token training",
        highlight=False,
    )


def pretrain(
    config: PretrainConfig, resume: bool = False, console: Console | None = None, quiet: bool = False
) -> LoopResult:
    """Run (or resume) one pretraining run; returns where it ended and its last evaluation."""
    console = console or Console(stderr=True)
    if config.data.images:
        return pretrain_images(config, resume, console, quiet)
    if not config.data.shards:
        raise HeadstartError("data.shards: expected the directory written by `headstart prepare`")
    shards = open_shards(config.data.shards)
    tokenizer_path = Path(config.data.shards) / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_path)
    info = tokenizer_info(tokenizer)
    continued = None
    if config.init:
        config, continued = continue_from(config, tokenizer_path)
    config = resolve_config(config, info)
    run_dir, resume_from = open_run(config, resume, console)
    model = build_model(config)
    describe(model, config, console)
    prior = (0.0, 0.0)
    lineage: list[dict[str, Any]] = []
    origin = None
    objective = build_objective(config, tokenizer)
    if continued is not None:
        backbone_of(model).load_state_dict(continued.backbone.state_dict())
        origin = origin_windows(continued, config)
        lineage = lineage_of(continued.folder)
        console.print(f"continuing {continued.folder}", highlight=False)
    elif config.embeddings.init == "skipgram" and resume_from is None:
        warm = skipgram_embeddings(backbone_of(model), shards, config.embeddings, config.train.seed)
        prior = (warm.flops, warm.seconds)
        console.print(
            f"token embeddings: skip-gram warm start, {warm.pairs:,} pairs in {warm.seconds:.0f} s", highlight=False
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = to_dict(config)
    save_yaml(config, run_dir / "config.yaml")
    evaluate, source = None, TrainWindows(shards, config.train.seq_len, config.train.seed)
    if config.objective.name == "simcse":  # its loss without dropout is trivial: probes measure it
        source = TrainSentences(shards, config.train.seq_len, info.pad_id, config.train.seed)
    else:
        val = eval_windows(shards.val, config.train.seq_len + 1, config.train.eval_batches * config.train.batch_size)
        bytes_per_token = split_bytes_per_token(shards.meta, "val")

        def evaluate(model: torch.nn.Module) -> dict[str, float]:
            scores = evaluate_windows(model, objective, val, config.train.batch_size, bytes_per_token)
            if origin is not None:  # what continuing costs the domain the checkpoint came from
                scores["origin_val_loss"] = evaluate_windows(model, objective, origin, config.train.batch_size)[
                    "val_loss"
                ]
            return scores

    def write_extras(folder: Path) -> None:
        shutil.copyfile(tokenizer_path, folder / "tokenizer.json")
        if lineage:
            write_lineage(lineage, folder)

    job = Job(model, objective, source, config, pretrain_flops_per_token(config))
    outputs = Outputs(run_dir, config_dict, evaluate, write_extras, console, quiet)
    carried = carried_optimizer(continued.folder, config.init_optimizer) if continued else None
    start = Start(resume_from, *prior, carried, eval_at_start=origin is not None)
    result = train_loop(job, outputs, start)
    if origin is not None and (change := forgetting(run_dir / "metrics.jsonl")):
        console.print(
            f"forgetting: validation loss on {continued.source.data.shards} {change[0]:.4f} → {change[1]:.4f}",
            highlight=False,
        )
    return result


def calibrate(config: PretrainConfig, steps: int = 12) -> dict[str, Any]:
    """The loop's own log record (``tokens_per_s``, ``mfu``) over the second half of a short run
    of ``config`` here, the first half being warm-up; its directory is removed afterwards. The
    skip-gram warm start and the final evaluation are not what is being timed."""
    probe = build(
        PretrainConfig,
        merge(
            to_dict(config),
            {
                "train": {
                    "steps": steps,
                    "eval_every": 0,
                    "checkpoint_every": 0,
                    "log_every": steps // 2,
                    "eval_batches": 1,
                },
                "embeddings": {"init": "random"},
                "run": {"name": (config.run.name or "run") + "-calibrate"},
            },
        ),
    )
    run_dir = Path(probe.run.out_dir) / probe.run.name
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        pretrain(probe, console=Console(quiet=True), quiet=True)
        records = read_jsonl(run_dir / "metrics.jsonl")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return [r for r in records if "tokens_per_s" in r][-1]


def steps_for_minutes(config: PretrainConfig, minutes: float) -> int:
    """How many steps of ``config`` fit in ``minutes`` here, from a short timed run of the same
    model and data, so a time budget still gets a complete schedule."""
    if launched():  # every rank would time itself and plan its own schedule
        raise HeadstartError("--minutes times one process; under torchrun set train.steps instead")
    tokens_per_s = calibrate(config)["tokens_per_s"]
    train = config.train
    tokens_per_sample = 1 if config.data.images else train.seq_len  # an image counts as one
    seconds_per_step = train.batch_size * train.grad_accum * tokens_per_sample / tokens_per_s
    steps = int(minutes * 60 / seconds_per_step)
    evaluations = steps // train.eval_every if train.eval_every else 0
    eval_seconds = evaluations * train.eval_batches * seconds_per_step / 3  # forward only
    return max(10, int((minutes * 60 - eval_seconds) / seconds_per_step * 0.95))
