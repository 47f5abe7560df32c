"""The whole path offline: the Python standard library as corpus → shards → a small causal
model pretrained for a few minutes → evaluation, a sample, a Markdown summary and a loss curve."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from rich.console import Console

from headstart.config import PrepareConfig, PretrainConfig, TokenizerConfig, load_config, merge, to_dict
from headstart.data.prepare import prepare
from headstart.data.stdlib_corpus import write_stdlib_corpus
from headstart.data.tokenizers import load_tokenizer, tokenizer_info
from headstart.evaluate import evaluate_checkpoint
from headstart.generate import sample
from headstart.plots import loss_curve
from headstart.train.pretrain import load_pretrained, pretrain, steps_for_minutes

RECIPE = "quickstart"
PROMPT = "def "


def run_quickstart(out: Path, minutes: float, console: Console) -> Path:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]headstart quickstart")
    console.print("1/4 corpus: the Python standard library's own source (no downloads)")
    corpus = write_stdlib_corpus(out / "corpus", what="source")
    shards_dir = out / "shards"
    console.print("2/4 prepare: byte-level BPE tokenizer and token shards")
    report = prepare(
        PrepareConfig(
            inputs=[str(corpus)],
            out=str(shards_dir),
            text_mode="line",
            val_fraction=0.02,
            tokenizer=TokenizerConfig(kind="bpe", vocab_size=4096),
        ),
        console=console,
    )
    config = load_config(
        PretrainConfig, RECIPE, {"data": {"shards": str(shards_dir)}, "run": {"out_dir": str(out), "name": "pretrain"}}
    )
    steps = steps_for_minutes(config, minutes)
    config = load_config(PretrainConfig, None, merge(to_dict(config), {"train": {"steps": steps}}))
    console.print(f"3/4 pretrain: {steps} steps (about {minutes:g} min on this machine)")
    shutil.rmtree(out / "pretrain", ignore_errors=True)
    result = pretrain(config, console=console)
    console.print("4/4 evaluate and sample")
    scores = evaluate_checkpoint(result.checkpoint)
    model, _, folder = load_pretrained(result.checkpoint)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    info = tokenizer_info(tokenizer)
    prompt_ids = [info.eod_id, *tokenizer.encode(PROMPT, add_special_tokens=False).ids]
    continuation = tokenizer.decode(sample(model, prompt_ids, 120, temperature=0.7, top_p=0.95, seed=0))
    plot = loss_curve(out / "pretrain" / "metrics.jsonl", out / "loss_curve.png", "quickstart: causal LM on the stdlib")
    uniform = math.log(info.vocab_size)
    summary = out / "report.md"
    text = f"""# headstart quickstart

Pretrained a {model.num_params():,}-parameter causal transformer on this Python installation's
standard library ({report.documents["train"]:,} files, {report.tokens["train"]:,} training tokens,
BPE vocabulary {info.vocab_size:,}) for {result.step:,} steps ({result.tokens_seen:,} tokens,
{result.flops / 1e12:,.1f} TFLOPs) in {result.elapsed_s / 60:.1f} minutes.

| metric (validation split: {report.tokens["val"]:,} held-out tokens) | value |
|---|---|
| loss (nats/token) | {scores["val_loss"]:.3f} (a uniform guess: {uniform:.2f}) |
| perplexity | {scores["val_ppl"]:.1f} (a uniform guess: {info.vocab_size:,}) |
| bits per byte | {scores.get("val_bpb", float("nan")):.3f} |

![loss curve]({plot.name})

A sample (prompt `{PROMPT}`, temperature 0.7):

```python
{PROMPT}{continuation}
```

Checkpoint: `{result.checkpoint}` — try `headstart generate {result.checkpoint} --prompt "import "`.
Total wall time {(time.perf_counter() - started) / 60:.1f} minutes.
"""
    tmp = summary.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(summary)
    console.print(f"report: {summary}")
    return summary
