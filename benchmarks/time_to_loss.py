"""WikiText-2, BPE 8k, the gpt-tiny shape: how much sooner headstart's recipes reach each
baseline's final validation loss, on this machine, in one run.

The baselines train for ``--baseline-minutes`` (20) each, on the same windows of 256 tokens,
batch 16, from the same shards:
- ``nanogpt``: nanoGPT's recipe on a GPT-2 of the same size (transformers' GPT2LMHeadModel:
  learned positions, LayerNorm, GELU; AdamW lr 6e-4, β2 0.95, weight decay 0.1, warmup, cosine
  to a tenth), in headstart's loop;
- ``trainer``: transformers' ``Trainer`` with its defaults (AdamW lr 5e-5, β2 0.999, no weight
  decay, linear decay without warmup) on the same GPT2LMHeadModel.
Each headstart variant trains as ``headstart pretrain gpt-tiny --minutes M`` would
(``--headstart-minutes``, skip-gram warm start included): ``default`` is gpt-tiny's defaults,
other variants join changes to it with "+" (``random``: no warm start; ``adamw``; ``cosine``;
``noqknorm``; ``eager``; ``compile``; ``lr2x``; see CHANGES; ``before`` is the recipe before
Muon, WSD, QK-norm and compilation became the defaults). Every run is scored on the same validation windows about
once a minute of training, and each precision is the one the machine's probe picks (bf16 where
its matmul is faster). A headstart variant's time to a baseline's final loss is the wall time of
its first evaluation at or below it, warm start and evaluations included, as for the baselines;
where it never gets there, the baseline's time to the variant's final loss is the ratio reported.
The last line printed is one JSON object with every figure and ``speedup`` per baseline.

    python benchmarks/time_to_loss.py [--baseline-minutes 20] [--headstart-minutes 5] [--variants default,random+muon]
    python benchmarks/time_to_loss.py --variants ... --baselines-from earlier.log   # more variants, same targets
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, hf_gpt2, machine, wikitext_bpe8k
from headstart.config import PretrainConfig, load_config, merge, to_dict
from headstart.data.shards import open_shards
from headstart.data.windows import eval_windows
from headstart.objectives.clm import CausalLM
from headstart.train.device import pick_precision
from headstart.train.flops import train_flops_per_token
from headstart.train.loop import Job, Outputs, train_loop
from headstart.train.validate import evaluate_windows
from headstart.workflows.pretrain import pretrain, seconds_per_step
from headstart.workflows.pretrain_data import TrainWindows

VAL_WINDOWS = 128  # 33k tokens: scored about once a minute, a few % of the training time
NANOGPT = {
    "optim": {"name": "adamw", "lr": 6e-4, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1},
    "schedule": {"kind": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1},
    "embeddings": {"init": "random"},
}
BASELINES = ("nanogpt", "trainer")
# A headstart variant is `default` or changes to gpt-tiny's defaults joined by "+", e.g. muon+wsd.
CHANGES: dict[str, dict[str, Any]] = {
    "random": {"embeddings": {"init": "random"}},  # no skip-gram warm start
    "adamw": {"optim": {"name": "adamw"}},  # instead of Muon for the blocks' matrices
    "cosine": {"schedule": {"kind": "cosine"}},  # instead of warmup-stable-decay
    "noqknorm": {"model": {"qk_norm": False}},
    "eager": {"train": {"compile": False}},  # never compiled (auto compiles runs of 500+ steps)
    "compile": {"train": {"compile": True}},
    "lr2x": {"optim": {"lr": 2e-3}},
}
# gpt-tiny's recipe before Muon, WSD, QK-norm and compilation became its defaults
BEFORE = "adamw+cosine+noqknorm+eager"


class GPT2Adapter(torch.nn.Module):
    """GPT2LMHeadModel behind headstart's model interface (hidden states, then logits)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model.transformer(input_ids=idx).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)


def base_config(shards: Path, name: str, extra: dict[str, Any]) -> PretrainConfig:
    settings = {"data": {"shards": str(shards)}, "run": {"out_dir": str(CACHE), "name": name}, **extra}
    config = load_config(PretrainConfig, "gpt-tiny", settings)
    config.train.checkpoint_every, config.train.eval_batches = 0, VAL_WINDOWS // config.train.batch_size
    shutil.rmtree(CACHE / name, ignore_errors=True)
    return config


def every_minute(config: PretrainConfig, minutes: float) -> None:
    """Evaluations about once a minute of the run's planned steps."""
    config.train.eval_every = max(10, round(config.train.steps / max(1.0, minutes)))


def curve_of(metrics: Path) -> list[dict[str, float]]:
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [
        {"elapsed_s": r["elapsed_s"], "tokens": r["tokens"], "val_loss": r["val_loss"]}
        for r in records
        if "val_loss" in r
    ]


def variant_settings(variant: str) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    changes = variant.replace("before", BEFORE).split("+")
    for change in [] if variant == "default" else changes:
        if change not in CHANGES:
            raise SystemExit(f"--variants: {change!r} is not one of default, before, {', '.join(CHANGES)}")
        settings = merge(settings, CHANGES[change])
    return settings


def run_headstart(shards: Path, variant: str, minutes: float) -> dict[str, Any]:
    """One headstart variant with ``--minutes`` as a user would run it: the warm start counts."""
    config = base_config(shards, f"ttl-{variant}", variant_settings(variant))
    config.train.eval_every = max(10, round(60 / seconds_per_step(config)))  # about once a minute
    result = pretrain(config, quiet=True, minutes=minutes)
    return {"steps": result.step, "curve": curve_of(CACHE / config.run.name / "metrics.jsonl")}


def run_nanogpt(shards: Path, minutes: float) -> dict[str, Any]:
    config = base_config(shards, "ttl-nanogpt", NANOGPT)
    data, m = open_shards(shards), config.model
    gpt2_shape = m.__class__(**{**to_dict(m), "vocab_size": data.vocab_size, "mlp": "gelu"})
    flops = train_flops_per_token(gpt2_shape, m.context)
    objective, val = CausalLM(), eval_windows(data.val, config.train.seq_len + 1, VAL_WINDOWS)

    def train(steps: int, run_dir: Path, scored: bool = True) -> None:
        config.train.steps = steps
        every_minute(config, minutes)
        config.train.eval_every = config.train.eval_every if scored else 0
        torch.manual_seed(config.train.seed)
        model = GPT2Adapter(hf_gpt2(data.vocab_size, m.n_layer, m.n_head, m.n_embd, m.context))
        evaluate = lambda mod: evaluate_windows(mod, objective, val, config.train.batch_size)  # noqa: E731
        job = Job(model, objective, TrainWindows(data, config.train.seq_len, config.train.seed), config, flops)
        train_loop(job, Outputs(run_dir, to_dict(config), evaluate, quiet=True))

    probe_dir = CACHE / "ttl-nanogpt-probe"

    def probe(steps: int) -> None:
        train(steps, probe_dir, scored=False)
        shutil.rmtree(probe_dir, ignore_errors=True)

    steps = int(minutes * 60 / marginal_step_seconds(probe) * 0.95)
    train(steps, CACHE / config.run.name)
    return {"steps": steps, "curve": curve_of(CACHE / config.run.name / "metrics.jsonl")}


def run_trainer(shards: Path, minutes: float, bf16: bool) -> dict[str, Any]:
    """transformers' Trainer at its defaults, scored by the same function on the same windows."""
    import transformers

    data = open_shards(shards)
    config = base_config(shards, "ttl-trainer", {})
    m, batch, seq = config.model, config.train.batch_size, config.train.seq_len
    train_tokens = np.asarray(data.train, dtype=np.int64)
    windows = train_tokens[: len(train_tokens) // seq * seq].reshape(-1, seq)
    dataset = [{"input_ids": torch.from_numpy(row), "labels": torch.from_numpy(row)} for row in windows]
    objective, val = CausalLM(), eval_windows(data.val, seq + 1, VAL_WINDOWS)
    curve: list[dict[str, float]] = []

    class Scoring(transformers.TrainerCallback):
        def __init__(self, every: int) -> None:
            self.every, self.started = every, 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step % self.every == 0 or state.global_step == state.max_steps:
                model.eval()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = evaluate_windows(GPT2Adapter(model), objective, val, batch)["val_loss"]
                model.train()
                elapsed = time.perf_counter() - self.started
                curve.append({"elapsed_s": elapsed, "tokens": state.global_step * batch * seq, "val_loss": loss})

    def train(steps: int, every: int) -> None:
        torch.manual_seed(0)
        model = hf_gpt2(data.vocab_size, m.n_layer, m.n_head, m.n_embd, m.context)
        args = transformers.TrainingArguments(
            output_dir=str(CACHE / "ttl-trainer"), per_device_train_batch_size=batch, max_steps=steps,
            save_strategy="no", report_to=[], logging_strategy="no", use_cpu=True, bf16=bf16,
            disable_tqdm=True, seed=0,
        )  # fmt: skip
        trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Scoring(every)])
        trainer.train()

    steps = int(minutes * 60 / marginal_step_seconds(lambda n: train(n, 10**9)) * 0.95)
    curve.clear()
    train(steps, max(10, round(steps / max(1.0, minutes))))
    return {"steps": steps, "curve": curve}


def marginal_step_seconds(train: Callable[[int], None]) -> float:
    """Wall seconds one more training step costs, from unscored runs of 10 and 30 steps, so that
    start-up and the final save cancel and a 20-minute plan fills 20 minutes."""
    seconds = []
    for steps in (10, 30):
        started = time.perf_counter()
        train(steps)
        seconds.append(time.perf_counter() - started)
    return (seconds[1] - seconds[0]) / 20


def first_at_or_below(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((point for point in curve if point["val_loss"] <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-minutes", type=float, default=20.0, help="0: headstart's variants only")
    parser.add_argument("--headstart-minutes", type=float, default=5.0)
    parser.add_argument(
        "--variants", default="default,random,before", help=f"comma-separated; each default or {'+'.join(CHANGES)}"
    )
    parser.add_argument(
        "--baselines-from", help="an earlier run's output: its baselines instead of training them again"
    )
    args = parser.parse_args()
    shards = wikitext_bpe8k()
    facts = machine()
    bf16 = pick_precision("auto", torch.device("cpu")) == torch.bfloat16
    runs: dict[str, dict[str, Any]] = {}
    for variant in args.variants.split(","):
        try:
            runs[variant] = run_headstart(shards, variant, args.headstart_minutes)
        except Exception as error:  # one failing variant (say, no compiler for `compile`) must not lose the rest
            runs[variant] = {"error": f"{type(error).__name__}: {error}", "curve": []}
        print(json.dumps({variant: runs[variant]}))
    if args.baseline_minutes <= 0:  # headstart's variants side by side, no baselines
        print(json.dumps({"case": "wikitext2-bpe8k-gpt-tiny", "precision_bf16": bf16, "runs": runs,
                          "machine": facts}))  # fmt: skip
        return
    if args.baselines_from:  # an earlier run's baselines: repeat one of its variants to see the drift
        lines = [line for line in Path(args.baselines_from).read_text().splitlines() if line.startswith('{"')]
        earlier = json.loads(lines[-1])["runs"]
        runs.update({name: earlier[name] for name in BASELINES})
    else:
        runs["nanogpt"] = run_nanogpt(shards, args.baseline_minutes)
        print(json.dumps({"nanogpt": runs["nanogpt"]}))
        runs["trainer"] = run_trainer(shards, args.baseline_minutes, bf16)
        print(json.dumps({"trainer": runs["trainer"]}))

    speedup: dict[str, dict[str, Any]] = {}
    for baseline in BASELINES:
        end = runs[baseline]["curve"][-1]
        for variant in (v for v in args.variants.split(",") if runs[v]["curve"]):
            reached = first_at_or_below(runs[variant]["curve"], end["val_loss"])
            final = runs[variant]["curve"][-1]
            matched = first_at_or_below(runs[baseline]["curve"], final["val_loss"])  # the baseline at our end
            speedup.setdefault(baseline, {})[variant] = {
                "target_val_loss": round(end["val_loss"], 4),
                "baseline_s": round(end["elapsed_s"], 1),
                "headstart_s": round(reached["elapsed_s"], 1) if reached else None,
                "headstart_tokens": reached["tokens"] if reached else None,
                "speedup": round(end["elapsed_s"] / reached["elapsed_s"], 2) if reached else None,
                "headstart_final_val_loss": round(final["val_loss"], 4),
                "headstart_final_s": round(final["elapsed_s"], 1),
                "baseline_s_to_headstart_final": round(matched["elapsed_s"], 1) if matched else None,
                "ratio_at_headstart_final": round(matched["elapsed_s"] / final["elapsed_s"], 2) if matched else None,
            }
    ratios = {b: max((v["speedup"] or 0.0 for v in s.values()), default=0.0) for b, s in speedup.items()}
    print(json.dumps({"case": "wikitext2-bpe8k-gpt-tiny", "precision_bf16": bf16, "speedup": ratios,
                      "detail": speedup, "baselines_from": args.baselines_from, "runs": runs,
                      "machine": facts}))  # fmt: skip


if __name__ == "__main__":
    main()
