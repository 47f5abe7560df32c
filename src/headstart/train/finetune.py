"""Supervised fine-tuning through the one loop: a pretrained checkpoint (or the same
architecture from random init) + a task head, on a label budget, with early stopping on a
validation split carved from that budget — never on the set it reports."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from tokenizers import Tokenizer

from headstart.config import FinetuneConfig, PretrainConfig, build, save_yaml, to_dict
from headstart.data.labelled import LabelledText, read_labelled_jsonl, stratified_budget
from headstart.data.tokenizers import load_tokenizer, tokenizer_info
from headstart.errors import HeadstartError
from headstart.models.heads import SequenceClassifier, pool
from headstart.models.transformer import Transformer
from headstart.objectives.classify import Classify, accuracy_and_macro_f1, pad_batch
from headstart.train import checkpoint as ckpt
from headstart.train.flops import forward_flops_per_token
from headstart.train.loop import train_loop
from headstart.train.pretrain import backbone_of, build_model
from headstart.train.probe import fit_logistic


@dataclass
class FinetuneResult:
    metrics: dict[str, float]  # on the reported set, with the weights of the best validation step
    best_step: int
    best_val: float
    steps: int
    flops: float
    run_dir: Path


def load_backbone(config: FinetuneConfig) -> tuple[Transformer, Tokenizer]:
    """The pretrained backbone, or the same architecture freshly initialised from the seed."""
    source = config.architecture if config.init == "scratch" else config.init
    if not source:
        raise HeadstartError("architecture: init=scratch needs a checkpoint whose shape and tokenizer to copy")
    folder = ckpt.resolve_checkpoint(source)
    ckpt.verify(folder)
    pretrained = build(PretrainConfig, ckpt.read_config(folder), "checkpoint config")
    torch.manual_seed(config.train.seed)
    pretrained = replace(pretrained, model=replace(pretrained.model, dropout=0.0))
    trained = build_model(pretrained)
    if config.init != "scratch":
        ckpt.load_weights(folder, trained)
    return backbone_of(trained), load_tokenizer(folder / "tokenizer.json")


def encode(tokenizer: Tokenizer, texts: list[str], max_len: int) -> list[np.ndarray]:
    """Token ids with the end-of-document token in front (the start marker both kinds of model saw)."""
    eod = tokenizer_info(tokenizer).eod_id
    return [
        np.array([eod, *enc.ids[: max_len - 1]], dtype=np.int64)
        for enc in tokenizer.encode_batch(texts, add_special_tokens=False)
    ]


class ExampleBatches:
    """Seeded epoch permutations over the training examples; sample i is a pure function of i."""

    def __init__(self, ids: list[np.ndarray], labels: np.ndarray, pad_id: int, seed: int) -> None:
        self.ids, self.labels, self.pad_id, self.seed = ids, labels, pad_id, seed
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def batch(self, first: int, count: int) -> dict[str, torch.Tensor]:
        rows = []
        for index in range(first, first + count):
            epoch, position = divmod(index, len(self.ids))
            if epoch != self._epoch:
                self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))
            rows.append(int(self._order[position]))
        ids, mask = pad_batch([self.ids[r] for r in rows], self.pad_id)
        return {"input": ids, "mask": mask, "label": torch.from_numpy(self.labels[rows])}


@torch.no_grad()
def pooled_features(
    model: SequenceClassifier, ids: list[np.ndarray], pad_id: int, batch_size: int = 64
) -> torch.Tensor:
    """The pooled backbone output the head reads, batched by length so little is spent on padding."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = np.argsort([len(x) for x in ids], kind="stable")
    features = torch.empty(len(ids), model.head.in_features)
    for start in range(0, len(ids), batch_size):
        rows = order[start : start + batch_size]
        batch, mask = pad_batch([ids[r] for r in rows], pad_id)
        batch, mask = batch.to(device), mask.to(device)
        features[torch.from_numpy(rows)] = (
            pool(model.backbone(batch, padding_mask=mask), mask, model.pooling).float().cpu()
        )
    model.train(was_training)
    return features


def predict(model: SequenceClassifier, ids: list[np.ndarray], pad_id: int) -> np.ndarray:
    """Class predictions of the whole classifier."""
    features = pooled_features(model, ids, pad_id)
    head = model.head
    with torch.no_grad():
        return (features @ head.weight.detach().float().cpu().T + head.bias.detach().float().cpu()).argmax(-1).numpy()


def layer_scale(depth: int, decay: float):
    """lr scale by parameter name: the head 1, block l decay^(depth − l), the embedding decay^(depth + 1)."""

    def scale(name: str) -> float:
        if not name.startswith("backbone."):
            return 1.0
        parts = name.split(".")
        if parts[1] == "blocks":
            return decay ** (depth - int(parts[2]))
        if parts[1] == "norm":
            return 1.0
        return decay ** (depth + 1)

    return scale


def finetune(config: FinetuneConfig, console: Console | None = None, quiet: bool = False) -> FinetuneResult:
    console = console or Console(stderr=True)
    task = config.task
    if task.kind != "classify":
        raise HeadstartError(f"task.kind={task.kind!r}: expected classify")
    if not task.train or not task.eval:
        raise HeadstartError("task.train and task.eval: expected JSONL files of labelled records")
    backbone, tokenizer = load_backbone(config)
    if task.max_len > backbone.config.context:
        raise HeadstartError(
            f"task.max_len={task.max_len}: longer than the model's context of {backbone.config.context}"
        )
    train_data = read_labelled_jsonl(task.train, task.text_field, task.label_field)
    eval_data = read_labelled_jsonl(task.eval, task.text_field, task.label_field, classes=train_data.classes)
    chosen = stratified_budget(train_data.labels, config.budget, config.train.seed)
    fit, held = split_validation(train_data, chosen, config.val_fraction, config.train.seed)
    pad_id = tokenizer_info(tokenizer).pad_id
    fit_ids = encode(tokenizer, [train_data.texts[i] for i in fit], task.max_len)
    held_ids = encode(tokenizer, [train_data.texts[i] for i in held], task.max_len)
    eval_ids = encode(tokenizer, eval_data.texts, task.max_len)

    n_classes = len(train_data.classes)
    model = SequenceClassifier(backbone, n_classes, config.pooling)
    name = config.run.name or f"finetune-{Path(config.init).name}-{config.budget}-{config.train.seed}"
    run_dir = Path(config.run.out_dir) / name
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a fine-tune is short: rerun, not resumed
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")
    fit_labels, held_labels = torch.from_numpy(train_data.labels[fit]), torch.from_numpy(train_data.labels[held])
    forward_flops = forward_flops_per_token(backbone.config, task.max_len, head_fraction=0.0)
    probe_flops = forward_flops * sum(len(x) for x in (*fit_ids, *held_ids))

    if config.freeze_backbone or config.head_init == "probe":
        probe = fit_logistic(
            pooled_features(model, fit_ids, pad_id), fit_labels, pooled_features(model, held_ids, pad_id), held_labels,
            n_classes,
        )  # fmt: skip
        model.head = probe.as_linear()
    if config.freeze_backbone:  # the linear probe: the backbone never changes, the head is the convex fit
        metrics = accuracy_and_macro_f1(predict(model, eval_ids, pad_id), eval_data.labels, n_classes)
        ckpt.write_checkpoint(run_dir / "checkpoints", 0, model, {"step": 0, "l2": probe.l2}, to_dict(config))
        return _finish(config, run_dir, len(chosen), metrics, 0, probe.val_accuracy, 0, probe_flops)

    best: dict[str, object] = {"score": -1.0, "state": None, "step": 0}
    every, steps = config.train.eval_every, config.train.steps
    step_of_eval = iter([*range(every, steps, every), steps] if every else [steps])  # when the loop evaluates

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        step = next(step_of_eval, steps)
        scores = accuracy_and_macro_f1(predict(model, held_ids, pad_id), train_data.labels[held], n_classes)
        if scores["accuracy"] > float(best["score"]):  # the first best: the earliest step that reached it
            best.update(score=scores["accuracy"], state=copy.deepcopy(model.state_dict()), step=step)
        # The reported set's score along the way, for curves only; the choice above never sees it.
        reported = accuracy_and_macro_f1(predict(model, eval_ids, pad_id), eval_data.labels, n_classes)
        return {**{f"val_{k}": v for k, v in scores.items()}, **{f"eval_{k}": v for k, v in reported.items()}}

    result = train_loop(
        model,
        Classify(),
        ExampleBatches(fit_ids, train_data.labels[fit], pad_id, config.train.seed),
        config.train,
        config.optim,
        config.schedule,
        run_dir,
        to_dict(config),
        3 * forward_flops,
        evaluate=evaluate,
        lr_scale=layer_scale(backbone.config.n_layer, config.layer_decay) if config.layer_decay != 1.0 else None,
        console=console,
        quiet=quiet,
    )
    model.load_state_dict(best["state"])  # type: ignore[arg-type]
    metrics = accuracy_and_macro_f1(predict(model, eval_ids, pad_id), eval_data.labels, n_classes)
    flops = result.flops + (probe_flops if config.head_init == "probe" else 0.0)
    return _finish(config, run_dir, len(chosen), metrics, int(best["step"]), float(best["score"]), result.step, flops)


def _finish(
    config: FinetuneConfig,
    run_dir: Path,
    budget: int,
    metrics: dict[str, float],
    best_step: int,
    best_val: float,
    steps: int,
    flops: float,
) -> FinetuneResult:
    summary = {
        "init": config.init,
        "budget": budget,
        "seed": config.train.seed,
        "best_step": best_step,
        "best_val_accuracy": best_val,
        "steps": steps,
        "flops": flops,
        **metrics,
    }
    (run_dir / "result.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return FinetuneResult(metrics, best_step, best_val, steps, flops, run_dir)


def split_validation(
    data: LabelledText, chosen: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a class-stratified validation split from the budget (at least one example per class)."""
    n_classes = len(data.classes)
    size = max(n_classes, round(fraction * len(chosen)))
    if len(chosen) - size < n_classes:
        raise HeadstartError(
            f"budget {len(chosen)}: too small to hold out {size} validation examples and still train on every class"
        )
    held_local = stratified_budget(data.labels[chosen], size, seed + 7919)
    mask = np.zeros(len(chosen), dtype=bool)
    mask[held_local] = True
    return chosen[~mask], chosen[mask]
