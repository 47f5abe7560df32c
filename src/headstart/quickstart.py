"""The whole path offline: the Python standard library's docstrings as corpus → shards → a
small causal model pretrained for a few minutes → evaluation and a sample → a transfer study on
a task with real labels from the same installation (which package a docstring comes from),
pretrained against the same model from scratch and a bag-of-n-grams reference, five seeds →
a Markdown report.

The corpus is the task's own kind of text, unlabelled: the docstrings of every module outside
the test split (task-adaptive pretraining). Pretraining on the library's source code instead
bought nothing measurable at 40 labels (21% against 20% from scratch, 5 seeds), pretraining on
its docstrings 33% against 17% (benchmarks/RESULTS.md)."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from rich.console import Console

from headstart.config import (
    PrepareConfig,
    PretrainConfig,
    RunConfig,
    StudyConfig,
    TokenizerConfig,
    load_config,
)
from headstart.data.prepare import prepare
from headstart.data.stdlib_corpus import write_package_task, write_stdlib_corpus
from headstart.data.tokenizers import load_tokenizer, tokenizer_info
from headstart.evaluate import evaluate_checkpoint
from headstart.files import write_text_atomic
from headstart.generate import sample
from headstart.plots import loss_curve
from headstart.train.checkpoint import load_pretrained
from headstart.transfer.efficiency import label_efficiency
from headstart.transfer.report import grouped, mean_and_interval, mean_curve
from headstart.transfer.results import read_results
from headstart.transfer.study import run_study
from headstart.workflows.pretrain import pretrain

RECIPE = "quickstart"
PROMPT = "Return the "
BUDGETS = [40, 160, 0]  # docstrings per study cell; 0: the whole training split
TASK = "which standard-library package a docstring comes from"


def package_study(out: Path, checkpoint: Path, train: Path, test: Path, seeds: int) -> StudyConfig:
    """Pretrained vs scratch vs bag-of-n-grams on the docstring → package task."""
    return StudyConfig(
        finetune="classify",
        settings=[
            f"task.train={train}",
            f"task.eval={test}",
            "task.max_len=96",
            "train.steps=120",
            "train.batch_size=16",
            "train.eval_every=40",
            "train.log_every=40",
        ],
        inits={"pretrained": str(checkpoint), "scratch": "scratch", "ngrams": "ngrams"},
        budgets=BUDGETS,
        seeds=seeds,
        sweep={"probe": ["readout=logistic"], "full": ["optim.lr=1e-3"]},
        run=RunConfig(out_dir=str(out), name="transfer"),
    )


def run_quickstart(out: Path, minutes: float, console: Console, seeds: int = 5) -> Path:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]headstart quickstart")
    console.print("1/5 corpus: the Python standard library's docstrings (no downloads), and a labelled task")
    task_train, task_test, test_modules = write_package_task(out / "task")
    corpus = write_stdlib_corpus(out / "corpus", what="docstrings", exclude_modules=test_modules)
    shards_dir = out / "shards"
    console.print("2/5 prepare: byte-level BPE tokenizer and token shards")
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
    console.print(f"3/5 pretrain: about {minutes:g} min on this machine")
    shutil.rmtree(out / "pretrain", ignore_errors=True)
    result = pretrain(config, console=console, minutes=minutes)
    console.print("4/5 evaluate and sample")
    scores = evaluate_checkpoint(result.checkpoint)
    model, _, folder = load_pretrained(result.checkpoint)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    info = tokenizer_info(tokenizer)
    prompt_ids = [info.eod_id, *tokenizer.encode(PROMPT, add_special_tokens=False).ids]
    continuation = tokenizer.decode(sample(model, prompt_ids, 120, temperature=0.7, top_p=0.95, seed=0))
    plot = loss_curve(out / "pretrain" / "metrics.jsonl", out / "loss_curve.png", "quickstart: causal LM on docstrings")
    uniform = math.log(info.vocab_size)
    console.print("5/5 transfer: which package does a docstring come from? pretrained vs scratch vs n-grams")
    study = package_study(out, result.checkpoint, task_train, task_test, seeds)
    shutil.rmtree(out / study.run.name, ignore_errors=True)
    study_dir = run_study(study, console=console)
    records = read_results(study_dir / "results.jsonl")
    transfer, meaning = transfer_summary(records), head_start_sentence(records)
    summary = out / "report.md"
    text = f"""# headstart quickstart

Pretrained a {model.num_params():,}-parameter causal transformer on the docstrings of this Python
installation's standard library ({report.documents["train"]:,} docstrings, {report.tokens["train"]:,}
training tokens, BPE vocabulary {info.vocab_size:,}) for {result.step:,} steps
({result.tokens_seen:,} tokens, {result.flops / 1e12:,.1f} TFLOPs) in {result.elapsed_s / 60:.1f} minutes.

| metric (validation split: {report.tokens["val"]:,} held-out tokens) | value |
|---|---|
| loss (nats/token) | {scores["val_loss"]:.3f} (a uniform guess: {uniform:.2f}) |
| perplexity | {scores["val_ppl"]:.1f} (a uniform guess: {info.vocab_size:,}) |
| bits per byte | {scores.get("val_bpb", float("nan")):.3f} |

![loss curve]({plot.name})

A sample (prompt `{PROMPT}`, temperature 0.7):

```
{PROMPT}{continuation}
```

## The head start: {TASK}

Test accuracy (8 packages; chance 12.5%),
mean ± 95% interval over {seeds} seeds:

{transfer}

{meaning}

Whole modules were held out for the test split; their docstrings are in neither the
pretraining corpus nor the labelled training split. The corpus holds the docstrings of every
other module, without their labels: the task's own kind of text. Each cell is the better of a
logistic probe on frozen features and full fine-tuning, chosen on a validation split carved
from its own labels, never on the test split. Details, both label efficiencies, steps to target
and compute: [transfer/report.md](transfer/report.md).

![accuracy against labels](transfer/metric_vs_labels.png)

Checkpoint: `{result.checkpoint}` — try `headstart generate {result.checkpoint} --prompt "Create a "`.
Total wall time {(time.perf_counter() - started) / 60:.1f} minutes.
"""
    write_text_atomic(summary, text)
    console.print(f"report: {summary}")
    return summary


def head_start_sentence(records: list[dict]) -> str:
    """What the figure means, in one sentence: the pretrained model's accuracy at the smallest
    budget against scratch and n-grams, whether the intervals separate, and how many labels
    scratch needs to match it."""
    table = grouped(records)
    if not {"pretrained", "scratch", "ngrams"} <= table.keys():
        return ""
    smallest = min(table["pretrained"])
    stats = {init: mean_and_interval([100 * c["value"] for c in table[init][smallest]]) for init in table}
    (mean, half), rivals = stats["pretrained"], {k: v for k, v in stats.items() if k != "pretrained"}
    apart = all(mean - half > m + h for m, h in rivals.values())
    efficiency = label_efficiency(smallest, mean / 100, *mean_curve(table["scratch"]))
    return (
        f"With {smallest} labels the pretrained model reads {mean:.1f}% ± {half:.1f}, against "
        + " and ".join(f"{m:.1f}% ± {h:.1f} for {init}" for init, (m, h) in rivals.items())
        + f" ({'the 95% intervals do not overlap' if apart else 'the 95% intervals overlap: no clear difference'}); "
        f"scratch needs {efficiency} the labels to match it."
    )


def transfer_summary(records: list[dict]) -> str:
    """Test accuracy per init and label budget (mean ± 95% interval over seeds) as a table."""
    table = grouped(records)
    budgets = sorted({b for by_budget in table.values() for b in by_budget})
    lines = ["| init | " + " | ".join(f"{b:,} labels" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for init, by_budget in table.items():
        cells = []
        for budget in budgets:
            values = [100 * c["value"] for c in by_budget.get(budget, [])]
            mean, half = mean_and_interval(values) if values else (float("nan"), 0.0)
            cells.append(f"{mean:.1f}% ± {half:.1f}" if values else "—")
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
