"""WikiText-2 with an 8k byte-level BPE: a causal and a masked model, each pretrained for a
fixed wall-time budget (20 minutes by default) on this machine; or, with --steps, for the same
number of tokens, as when a causal Mamba and a transformer of equal size are compared.

Reports validation perplexity and bits per byte for the decoders, masked-token accuracy and
MLM perplexity for the encoder, on the whole WikiText-2 validation file, with training
tokens/s. The last line printed is one JSON object with every figure.

    python benchmarks/wikitext.py [--minutes 20]
    python benchmarks/wikitext.py --objectives clm,mamba --steps 600
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, machine, wikitext_bpe8k
from headstart import api

RECIPES = {"clm": "gpt-tiny", "mlm": "bert-tiny", "mamba": "mamba-tiny"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="pretraining budget per model")
    parser.add_argument("--objectives", default="clm,mlm", help="clm, mlm and/or mamba")
    parser.add_argument("--steps", type=int, default=0, help="a fixed step count for every model instead of --minutes")
    args = parser.parse_args()
    shards = wikitext_bpe8k()
    facts = machine()
    results = {}
    for objective in args.objectives.split(","):
        recipe = RECIPES[objective]
        name = f"wikitext2-{recipe}" + (f"-{args.steps}steps" if args.steps else "")
        shutil.rmtree(CACHE / name, ignore_errors=True)
        overrides = [f"data.shards={shards}", f"run.out_dir={CACHE}", f"run.name={name}", "train.checkpoint_every=0"]
        overrides.append("embeddings.init=random")  # both objectives from the same random start, as measured
        if args.steps:
            overrides.append(f"train.steps={args.steps}")
        result = api.pretrain(recipe, overrides, minutes=None if args.steps else args.minutes)
        scores = api.evaluate(result.checkpoint)  # every window of the validation split
        results[objective] = {
            "recipe": recipe,
            "steps": result.step,
            "train_tokens": result.tokens_seen,
            "wall_minutes": round(result.elapsed_s / 60, 1),
            "tokens_per_s_with_evals": round(result.tokens_seen / result.elapsed_s),
            "pretrain_flops": result.flops,
            **{f"eval_{k}" if k in ("windows", "tokens") else k: round(v, 4) for k, v in scores.items()},
        }
        print(json.dumps({objective: results[objective]}))
    budget = {"steps": args.steps} if args.steps else {"minutes": args.minutes}
    print(json.dumps({"case": "wikitext2-bpe8k", **budget, "results": results, "machine": facts}))


if __name__ == "__main__":
    main()
