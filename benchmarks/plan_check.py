"""Does `headstart plan` predict what a run costs here? For two model sizes, gpt-tiny and the
same depth twice as wide (4× the non-embedding parameters), plan a wall-time budget on
WikiText-2, run exactly the planned steps through `headstart pretrain`, and compare:

- the plan's training FLOPs per token against torch's FLOP counter over a forward and backward
  of the planned model on a real batch (goal: within 3%);
- the plan's FLOPs against the run's compute.json;
- the plan's wall time against the run's own clock: the elapsed time of its last training step
  in metrics.jsonl, evaluations and checkpoints off (goal: within 20%).

    python benchmarks/plan_check.py [--minutes 1.5] [--shards DIR] [--smoke]

--smoke runs the same path at toy sizes for a few seconds. The last line printed is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, machine, wikitext_bpe8k
from headstart import api
from headstart.data.shards import open_shards
from headstart.data.tokenizers import load_tokenizer
from headstart.objectives.registry import build_objective
from headstart.train.checkpoint import load_pretrained
from headstart.train.flops import counted_flops

SIZES = {"gpt-tiny": [], "gpt-tiny-4x": ["model.n_embd=384", "model.n_head=6"]}
TOY = ["model.n_layer=2", "model.n_head=2", "train.seq_len=32", "train.batch_size=4", "train.precision=fp32"]
SMOKE = {"toy": [*TOY, "model.n_embd=32"], "toy-4x": [*TOY, "model.n_embd=64"]}


def counted_per_token(checkpoint: Path, shards: Path) -> float:
    """Training FLOPs per token of the run's own model and objective, as torch's counter sees them."""
    model, config, folder = load_pretrained(checkpoint)
    objective = build_objective(config, load_tokenizer(folder / "tokenizer.json"))
    tokens = torch.from_numpy(open_shards(shards).train[: 2 * (config.train.seq_len + 1)].astype("int64"))
    batch = objective.make_batch(tokens.view(2, -1), torch.Generator().manual_seed(0))
    model.train()
    return counted_flops(lambda: objective.loss(model, batch)[0].backward()) / objective.tokens(batch)


def check(name: str, shape: list[str], shards: Path, minutes: float, out: Path, steps: int) -> dict[str, float]:
    """Plan ``minutes`` of training for the shape, run the planned steps, compare."""
    overrides = [f"data.shards={shards}", "embeddings.init=random", "train.eval_every=0", "train.checkpoint_every=0",
                 f"run.out_dir={out}", f"run.name=plan-{name}", *shape]  # fmt: skip
    planned = api.plan("gpt-tiny", overrides, minutes=minutes, calibration_steps=steps)
    shutil.rmtree(out / f"plan-{name}", ignore_errors=True)
    result = api.pretrain(planned.recipe, planned.overrides, quiet=True)
    compute = json.loads((result.checkpoint / "compute.json").read_text())
    records = [json.loads(line) for line in (out / f"plan-{name}" / "metrics.jsonl").read_text().splitlines()]
    measured_s = [r["elapsed_s"] for r in records if "tokens_per_s" in r][-1]
    return {
        "steps": planned.steps,
        "flops_per_token_plan": planned.flops_per_token,
        "flops_per_token_counter": counted_per_token(result.checkpoint, shards),
        "flops_plan": planned.flops,
        "flops_run": compute["flops"],
        "seconds_plan": planned.seconds,
        "seconds_run": measured_s,
        "timing": planned.timing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.5, help="wall-time budget planned per size")
    parser.add_argument("--shards", type=Path, help="prepared shards (default: WikiText-2, BPE 8k)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, seconds")
    args = parser.parse_args()
    shards = args.shards or wikitext_bpe8k()
    out, steps = CACHE / "plan-check", 4 if args.smoke else 12
    sizes = SMOKE if args.smoke else SIZES
    results = {name: check(name, shape, shards, args.minutes, out, steps) for name, shape in sizes.items()}
    table = Table("size", "steps", "FLOPs/token plan ÷ counter", "FLOPs plan ÷ run", "wall plan", "wall run", "ratio")
    for name, r in results.items():
        flop_ratio = r["flops_per_token_plan"] / r["flops_per_token_counter"]
        wall_ratio = r["seconds_plan"] / r["seconds_run"]
        table.add_row(
            name,
            f"{r['steps']:,}",
            f"{flop_ratio:.4f} ({'within' if abs(flop_ratio - 1) <= 0.03 else 'outside'} 3%)",
            f"{r['flops_plan'] / r['flops_run']:.4f}",
            f"{r['seconds_plan']:.1f} s",
            f"{r['seconds_run']:.1f} s",
            f"{wall_ratio:.3f} ({'within' if abs(wall_ratio - 1) <= 0.2 else 'outside'} 20%)",
        )
    Console().print(table)
    print(json.dumps({"machine": machine(), "minutes": args.minutes, "results": results}))


if __name__ == "__main__":
    main()
