"""Tiny Shakespeare, char-level, nanoGPT's CPU shape: wall time and tokens to validation loss 1.88.

Two runs per seed through the same loop, data and evaluation: headstart's recipe
(`shakespeare-char`: RoPE, RMSNorm, SwiGLU, tied embeddings, scaled init, its schedule)
and a GPT-2 of the same shape (transformers' GPT2LMHeadModel: learned positions, LayerNorm,
GELU) with nanoGPT's Shakespeare settings (lr 1e-3, warmup 100, cosine to 1e-4, β2 0.99,
fp32) — the nanoGPT reference, measured in the same run. Both train 2,000 iterations of
12 × 64 tokens (1.54M tokens) and are evaluated every 100 steps on the same 240 windows of
the last 10% of the text. The last line printed is one JSON object with every figure.

    python benchmarks/shakespeare.py [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, hf_gpt2, machine, shakespeare_char
from headstart.config import PretrainConfig, load_config, to_dict
from headstart.data.shards import open_shards
from headstart.data.windows import eval_windows
from headstart.objectives.clm import CausalLM
from headstart.train.flops import train_flops_per_token
from headstart.train.loop import Job, Outputs, train_loop
from headstart.train.validate import evaluate_windows
from headstart.workflows.pretrain import pretrain
from headstart.workflows.pretrain_data import TrainWindows

TARGET = 1.88
EVAL = {"train": {"eval_every": 100, "eval_batches": 20, "checkpoint_every": 0, "log_every": 100}}
NANOGPT = {
    "optim": {"lr": 1e-3, "beta2": 0.99, "weight_decay": 0.1},
    "schedule": {"kind": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1},
    "train": {"precision": "fp32"},
}


class GPT2Adapter(nn.Module):
    """transformers' GPT2LMHeadModel behind headstart's model interface (hidden states, logits)."""

    def __init__(self, vocab: int, config: PretrainConfig) -> None:
        super().__init__()
        m = config.model
        self.model = hf_gpt2(vocab, m.n_layer, m.n_head, m.n_embd, m.context)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model.transformer(input_ids=idx).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)


def first_below(metrics: Path, target: float) -> dict[str, float] | None:
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "val" and record["val_loss"] <= target:
            return {"step": record["step"], "tokens": record["tokens"], "elapsed_s": round(record["elapsed_s"], 1)}
    return None


def run_headstart(shards: Path, seed: int) -> dict[str, object]:
    config = load_config(
        PretrainConfig,
        "shakespeare-char",
        {
            **EVAL,
            "data": {"shards": str(shards)},
            "run": {"out_dir": str(CACHE), "name": f"shakespeare-headstart-{seed}"},
        },
    )
    config.train.seed = seed
    shutil.rmtree(Path(config.run.out_dir) / config.run.name, ignore_errors=True)
    result = pretrain(config, quiet=True)
    return summarize(Path(config.run.out_dir) / config.run.name, result)


def run_gpt2(shards: Path, seed: int) -> dict[str, object]:
    config = load_config(
        PretrainConfig,
        "shakespeare-char",
        {**EVAL, **NANOGPT, "train": {**EVAL["train"], **NANOGPT["train"]}, "data": {"shards": str(shards)}},
    )
    config.train.seed = seed
    data = open_shards(shards)
    torch.manual_seed(seed)
    model = GPT2Adapter(data.vocab_size, config)
    objective = CausalLM()
    val = eval_windows(data.val, config.train.seq_len + 1, config.train.eval_batches * config.train.batch_size)
    run_dir = CACHE / f"shakespeare-gpt2-nanogpt-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    m = config.model
    flops = train_flops_per_token(m.__class__(**{**to_dict(m), "vocab_size": data.vocab_size, "mlp": "gelu"}), 64)
    source = TrainWindows(data, config.train.seq_len, seed)
    evaluate = lambda mod: evaluate_windows(mod, objective, val, config.train.batch_size)  # noqa: E731
    outputs = Outputs(run_dir, to_dict(config), evaluate, quiet=True)
    result = train_loop(Job(model, objective, source, config, flops), outputs)
    return summarize(run_dir, result)


def summarize(run_dir: Path, result) -> dict[str, object]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    return {
        "final_val_loss": round(result.last_eval["val_loss"], 4),
        "tokens_per_s": round(statistics.median(speeds)),
        "wall_s": round(result.elapsed_s, 1),
        "tokens": result.tokens_seen,
        "reached_1.88": first_below(run_dir / "metrics.jsonl", TARGET),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    shards = shakespeare_char()
    facts = machine()
    runs: dict[str, list[dict[str, object]]] = {"headstart": [], "gpt2_nanogpt_recipe": []}
    for seed in range(args.seeds):  # interleaved: the machine's speed drifts
        runs["headstart"].append(run_headstart(shards, seed))
        print(json.dumps({"headstart": runs["headstart"][-1]}))
        runs["gpt2_nanogpt_recipe"].append(run_gpt2(shards, seed))
        print(json.dumps({"gpt2_nanogpt_recipe": runs["gpt2_nanogpt_recipe"][-1]}))

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name]]
        if key == "reached_1.88":
            values = [v["elapsed_s"] for v in values if v] if all(values) else []
        return statistics.median(values) if values else None

    summary = {
        "case": "tinyshakespeare-char-4x128-ctx64-b12",
        "headstart_time_to_1.88_s": median("headstart", "reached_1.88"),
        "baseline_time_to_1.88_s": median("gpt2_nanogpt_recipe", "reached_1.88"),
        "headstart_final_val_loss": median("headstart", "final_val_loss"),
        "baseline_final_val_loss": median("gpt2_nanogpt_recipe", "final_val_loss"),
        "headstart_tokens_per_s": median("headstart", "tokens_per_s"),
        "baseline_tokens_per_s": median("gpt2_nanogpt_recipe", "tokens_per_s"),
        "runs": runs,
        "machine": facts,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
