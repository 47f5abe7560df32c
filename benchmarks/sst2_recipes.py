"""Which pretraining recipe buys a head start on SST-2, at equal pretraining compute.

Each variant (objective, shape, corpus, length) is pretrained for the FLOPs that this CPU
sustains in the stated number of minutes (FLOPS_PER_CPU_MINUTE, measured by
benchmarks/wikitext.py), so the sweep may run on any device and still compare recipes a CPU
user could afford. Every pretrained init, and scratch, is then read out on SST-2 dev with
the same fine-tuning recipes, chosen by nothing but a validation split carved from the
label budget: a logistic-regression probe on frozen features, full fine-tuning, and LP-FT
(full fine-tuning from the fitted probe).

    python benchmarks/sst2_recipes.py --variants all --seeds 3 [--scale 0.01 for a smoke run]
    python benchmarks/sst2_recipes.py --variants clm-sg-20 --readouts full,full-lr1e-3,... (fine-tuning recipes)

Writes results.jsonl (one line per run) and prints a table of mean ± sd dev accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, DATA, wikitext_bpe8k
from headstart import api
from headstart.config import PrepareConfig, PretrainConfig, TokenizerConfig, load_config
from headstart.data.prepare import prepare
from headstart.data.shards import open_shards
from headstart.data.tokenizers import load_tokenizer, tokenizer_info
from headstart.workflows.pretrain_data import pretrain_flops_per_token, resolve_config

# Sustained training FLOP/s of the 6 × 192 encoder on this 2-core CPU (9.6M MLM tokens in 20 min), per minute.
FLOPS_PER_CPU_MINUTE = 1.0e13

SHAPE_WIDE = ["model.n_layer=4", "model.n_head=4", "model.n_embd=256"]
VARIANTS: dict[str, tuple[str, list[str], str, float]] = {
    # name: (recipe, overrides, corpus, CPU-minutes)
    "mlm-20": ("bert-tiny", [], "wikitext2+sst2", 20),
    "clm-20": ("gpt-tiny", ["embeddings.init=random"], "wikitext2+sst2", 20),
    # The default: ~4 CPU-minutes of skip-gram for the token embeddings, then 16 of causal LM.
    "clm-sg-20": ("gpt-tiny", [], "wikitext2+sst2", 16),
    "rtd-20": ("electra-tiny", [], "wikitext2+sst2", 20),
    "rtd-10": ("electra-tiny", [], "wikitext2+sst2", 10),
    "rtd-45": ("electra-tiny", [], "wikitext2+sst2", 45),
    "mlm-45": ("bert-tiny", [], "wikitext2+sst2", 45),
    "rtd-20-wikitext-only": ("electra-tiny", [], "wikitext2", 20),
    "rtd-20-4x256": ("electra-tiny", SHAPE_WIDE, "wikitext2+sst2", 20),
}
READOUTS = {  # name: (budgets, finetune overrides)
    "probe": ((100, 500, 2000), ["readout=logistic"]),
    "full": ((500,), []),
    "lpft": ((500,), ["head_init=probe"]),
    # The fine-tuning recipe around the default full fine-tune (lr 3e-4, 300 steps, mean pooling):
    "full-lr1e-4": ((500,), ["optim.lr=1e-4"]),
    "full-lr1e-3": ((500,), ["optim.lr=1e-3"]),
    "full-lr1e-3-decay0.7": ((500,), ["optim.lr=1e-3", "layer_decay=0.7"]),
    "full-last": ((500,), ["pooling=last"]),
    "full-warmup0": ((500,), ["schedule.warmup_steps=0"]),
    "full-900steps": ((500,), ["train.steps=900", "train.eval_every=75"]),
}


def wikitext_sst2_bpe8k() -> Path:
    """WikiText-2 train plus the SST-2 training sentences (task-adaptive text, no labels)."""
    out = CACHE / "shards-wikitext2-sst2-bpe8k"
    if not (out / "meta.json").is_file():
        prepare(
            PrepareConfig(
                inputs=[str(DATA / "text" / "wikitext2" / "train.txt"), str(DATA / "tasks" / "sst2" / "train.jsonl")],
                val_inputs=[str(DATA / "text" / "wikitext2" / "valid.txt")],
                out=str(out),
                text_mode="line",
                tokenizer=TokenizerConfig(kind="bpe", vocab_size=8192),
            )
        )
    open_shards(out)
    return out


def steps_for_flops(recipe: str, overrides: list[str], shards: Path, minutes: float) -> int:
    config = load_config(PretrainConfig, recipe, [*overrides, f"data.shards={shards}"])
    config = resolve_config(config, tokenizer_info(load_tokenizer(shards / "tokenizer.json")))
    tokens_per_step = config.train.batch_size * config.train.grad_accum * config.train.seq_len
    return max(10, round(minutes * FLOPS_PER_CPU_MINUTE / (pretrain_flops_per_token(config) * tokens_per_step)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every pretraining budget (smoke runs)")
    parser.add_argument("--out", default=str(CACHE / "sst2-recipes"))
    parser.add_argument("--no-scratch", action="store_true", help="leave out the scratch readouts")
    parser.add_argument("--readouts", default="all", help=f"comma-separated among {', '.join(READOUTS)}")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["init"], r["readout"], r["budget"], r["seed"]) for r in map(json.loads, _lines(results))}
    corpora = {"wikitext2+sst2": wikitext_sst2_bpe8k(), "wikitext2": wikitext_bpe8k()}
    sst2 = Path(os.environ.get("HEADSTART_SST2", DATA / "tasks" / "sst2"))
    task = [f"task.train={sst2 / 'train.jsonl'}", f"task.eval={sst2 / 'dev.jsonl'}"]
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    inits = ([] if args.no_scratch else ["scratch"]) + names
    readouts = READOUTS if args.readouts == "all" else {r: READOUTS[r] for r in args.readouts.split(",")}
    architecture = None
    for name in inits:
        if name != "scratch":
            architecture = architecture or str(out / name)
            pretrain_variant(name, corpora, out, args.scale)
        for readout, (budgets, settings) in readouts.items():
            for budget in budgets:
                for seed in range(args.seeds):
                    if (name, readout, budget, seed) in done:
                        continue
                    if name == "scratch":
                        architecture = architecture or str(out / pretrain_variant(names[0], corpora, out, args.scale))
                        init = ["init=scratch", f"architecture={architecture}"]
                    else:
                        init = [f"init={out / name}"]
                    result = api.finetune(
                        "sst2",
                        [*task, *init, *settings, f"budget={budget}", f"train.seed={seed}",
                         f"run.out_dir={out / 'finetune'}", f"run.name={name}-{readout}-{budget}-{seed}"],
                        quiet=True,
                    )  # fmt: skip
                    record = {"init": name, "readout": readout, "budget": budget, "seed": seed, **result.metrics}
                    with results.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
    table(results)


def pretrain_variant(name: str, corpora: dict[str, Path], out: Path, scale: float) -> str:
    """Pretrain one variant for its compute budget (once: a finished run is reused)."""
    recipe, overrides, corpus, minutes = VARIANTS[name]
    if (out / name / "checkpoints").is_dir():
        return name
    steps = steps_for_flops(recipe, overrides, corpora[corpus], minutes * scale)
    start = time.perf_counter()
    result = api.pretrain(
        recipe,
        [*overrides, f"data.shards={corpora[corpus]}", f"run.out_dir={out}", f"run.name={name}",
         f"train.steps={steps}", "train.checkpoint_every=0", f"train.eval_every={max(1, steps // 4)}"],
        quiet=True,
    )  # fmt: skip
    print(f"{name}: {steps} steps in {time.perf_counter() - start:.0f} s, {result.last_eval}", flush=True)
    return name


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def table(results: Path) -> None:
    rows: dict[tuple[str, str, int], list[float]] = {}
    for record in map(json.loads, _lines(results)):
        rows.setdefault((record["init"], record["readout"], record["budget"]), []).append(100 * record["accuracy"])
    print(f"{'init':24} {'readout':20} {'budget':>6}  accuracy (mean ± sd, n)")
    for (init, readout, budget), values in sorted(rows.items()):
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{init:24} {readout:20} {budget:>6}  {statistics.mean(values):5.1f} ± {spread:3.1f} ({len(values)})")


if __name__ == "__main__":
    main()
