"""The transfer study: inits × label budgets × seeds on one task, each cell a normal fine-tune.

Fairness is built in: every init gets the same sweep of fine-tuning candidates, and each
cell keeps the candidate that scores best on the validation split carved from its own label
budget — never on the set the report shows. The study is resumable: a cell is one line of
``results.jsonl``, written when the cell finishes, and a rerun skips the cells already there.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from headstart.config import (
    FinetuneConfig,
    ModelConfig,
    StudyConfig,
    TaskConfig,
    VisionConfig,
    build,
    load_config,
    save_yaml,
)
from headstart.data.images import read_images
from headstart.data.labelled import iter_task_records
from headstart.errors import HeadstartError, Interrupted
from headstart.files import write_text_atomic
from headstart.readouts import READOUTS
from headstart.train import checkpoint as ckpt
from headstart.train.device import pick_device
from headstart.transfer.reference import REFERENCES, References
from headstart.transfer.report import write_report
from headstart.transfer.results import append_line, read_results
from headstart.workflows.finetune import finetune

# What must not change between a study and its resumption (budgets and seeds may grow).
FIXED = ("finetune", "settings", "architecture", "sweep", "sweep_max_budget", "reference_text")


def check_inits(config: StudyConfig) -> str:
    """Validate the inits; returns the architecture that scratch copies."""
    if not config.inits:
        raise HeadstartError("inits: expected at least one init, e.g. {pretrained: CHECKPOINT, scratch: scratch}")
    checkpoints = [v for v in config.inits.values() if v not in ("scratch", *REFERENCES)]
    for path in checkpoints:
        ckpt.verify(ckpt.resolve_checkpoint(path))
    if config.supervised and config.inits.get(config.supervised) != "scratch":
        raise HeadstartError(
            f"supervised={config.supervised}: expected the name of an init from scratch (inits: {{NAME: scratch}})"
        )
    architecture = config.architecture or (checkpoints[0] if checkpoints else "")
    if "scratch" in config.inits.values() and not architecture:
        raise HeadstartError("architecture: a scratch init needs a checkpoint whose shape and tokenizer to copy")
    if "scratch" in config.inits.values():
        for name, path in config.inits.items():
            if path in checkpoints and (mismatch := differs_from(path, architecture)):
                raise HeadstartError(
                    f"inits.{name}={path}: its {mismatch} differs from the architecture's ({architecture}), "
                    "so scratch would not be the same model; give it a study of its own"
                )
    if "skipgram" in config.inits.values() and not config.reference_text:
        raise HeadstartError("reference_text: the skipgram init needs unlabelled text files to train word vectors on")
    for name in config.init_settings:
        if name not in config.inits or config.inits[name] in REFERENCES:
            raise HeadstartError(f"init_settings.{name}: expected the name of a fine-tuned init among the inits")
    if not config.sweep:
        raise HeadstartError("sweep: expected at least one fine-tuning candidate")
    for budget in config.budgets:
        if all(name in config.sweep_max_budget and not 0 < budget <= config.sweep_max_budget[name]
               for name in config.sweep):  # fmt: skip
            raise HeadstartError(f"sweep_max_budget: no sweep candidate runs at budget {budget} (0: all labels)")
    if config.seeds < 1:
        raise HeadstartError(f"seeds={config.seeds}: expected at least 1")
    return architecture


def differs_from(path: str, architecture: str) -> str:
    """What makes the checkpoint at ``path`` a different model from ``architecture``: its
    tokenizer, its model (or vision backbone) settings, or nothing (empty)."""
    folders = [ckpt.resolve_checkpoint(p) for p in (path, architecture)]
    tokenizers = [(f / "tokenizer.json").read_bytes() if (f / "tokenizer.json").is_file() else b"" for f in folders]
    if tokenizers[0] != tokenizers[1]:
        return "tokenizer"
    configs = [ckpt.read_config(f) for f in folders]
    images = [bool(c.get("data", {}).get("images")) for c in configs]
    section = "vision" if images[0] else "model"
    if images[0] != images[1]:
        return f"{section} settings"
    # Built with defaults filled in: a checkpoint older than a settings field lacks its key.
    settings = [build(VisionConfig if images[0] else ModelConfig, c.get(section, {}), section) for c in configs]
    return f"{section} settings" if settings[0] != settings[1] else ""


def resumed_study(run_dir: Path, config: StudyConfig) -> StudyConfig:
    """The study as its directory holds it after this run: the saved inits (a run may list only
    some of them, or new ones) joined with this run's. Raises when a finished cell would no
    longer be comparable."""
    saved_path = run_dir / "study.yaml"
    if not saved_path.is_file():
        return config
    saved = load_config(StudyConfig, str(saved_path))
    for name in FIXED:
        if getattr(saved, name) != getattr(config, name):
            raise HeadstartError(
                f"study {run_dir}: {name} was {getattr(saved, name)!r}, now {getattr(config, name)!r}; "
                "finished cells would not be comparable (set run.name for a new study)"
            )
    for name, source in saved.inits.items():  # new inits may join; a finished one keeps its source
        settings = saved.init_settings.get(name, [])
        changed = name in config.inits and (config.inits[name], init_settings(config, name)) != (source, settings)
        if changed:
            raise HeadstartError(
                f"study {run_dir}: init {name!r} was {source!r} {settings}, now {config.inits[name]!r} "
                f"{init_settings(config, name)}; its finished cells would not be comparable (give the new "
                "one another init name, or set run.name)"
            )
    inits = {**saved.inits, **config.inits}
    settings = {name: init_settings(saved if name not in config.inits else config, name) for name in inits}
    return replace(config, inits=inits, init_settings={name: s for name, s in settings.items() if s})


def init_settings(config: StudyConfig, init: str) -> list[str]:
    return config.init_settings.get(init, [])


def finetune_cell(
    config: StudyConfig, init: str, source: str, architecture: str, budget: int, seed: int, runs: Path
) -> dict[str, Any]:
    """Every sweep candidate on this (init, budget, seed); keep the best on the carved validation split."""
    origin = ["init=scratch", f"architecture={architecture}"] if source == "scratch" else [f"init={source}"]
    candidates, tried = {}, []
    for name, overrides in config.sweep.items():
        if name in config.sweep_max_budget and not 0 < budget <= config.sweep_max_budget[name]:
            continue
        run_name = f"{init}-{budget}-{seed}-{name}"
        settings = [*config.settings, *origin, *overrides, *init_settings(config, init), f"budget={budget}",
                    f"train.seed={seed}", f"run.out_dir={runs}", f"run.name={run_name}"]  # fmt: skip
        run_config = load_config(FinetuneConfig, config.finetune, settings)
        if (same := replace(run_config, run=replace(run_config.run, name=""))) in tried:
            continue  # the init's own settings made this candidate one already run: it would repeat it exactly
        tried.append(same)
        result = finetune(run_config, quiet=True)
        shutil.rmtree(result.run_dir / "checkpoints", ignore_errors=True)  # the study keeps metrics, not weights
        candidates[name] = (result, run_name)
        if READOUTS[run_config.readout].frozen and init_settings(config, init):
            break  # a frozen init: its readout trains nothing, so the other candidates would repeat it
    best_name = max(candidates, key=lambda n: candidates[n][0].best_val)  # ties: the first in sweep order
    best, run_name = candidates[best_name]
    summary = json.loads((best.run_dir / "result.json").read_text(encoding="utf-8"))
    return {
        "metric": best.metric,
        "budget": summary["budget"],
        "best_val": best.best_val,
        "chosen": best_name,
        "sweep_val": {n: r.best_val for n, (r, _) in candidates.items()},
        "steps": best.steps,
        "best_step": best.best_step,
        "flops": best.flops,
        "sweep_flops": sum(r.flops for r, _ in candidates.values()),
        "run": run_name,
        "device": pick_device(run_config.train.device).type,
        **best.metrics,
    }


def task_name(train: str) -> str:
    """What a report calls the task: the training file's name without its split
    (``package_train.jsonl`` → package), or its folder's (``sst2/train.jsonl`` → sst2)."""
    path = Path(train)
    name = path.stem.removesuffix(".jsonl")
    for split in ("_train", "-train", ".train"):
        name = name.removesuffix(split)
    return path.parent.name if name in ("train", "") else name


def count_train(task: TaskConfig) -> int:
    """Labelled training examples the budgets draw from."""
    if task.kind == "image":
        return len(read_images(task.train, task.train_split))
    return sum(1 for _ in iter_task_records(task.train))


def round_fits(last_round_seconds: float | None, left: float) -> bool:
    """Whether another seed round (every budget and init for one more seed) fits in ``left``
    seconds, judged by the last round's time; the first round always runs. The first round also
    pays for one-off work (the references' word vectors), so the judgement errs on the safe side."""
    return last_round_seconds is None or last_round_seconds <= left


def run_study(config: StudyConfig, console: Console | None = None, deadline: float | None = None) -> Path:
    """Run every missing cell, then write the report; returns the study directory.

    Cells run budget by budget, smallest first. With a ``deadline`` (a ``time.monotonic()``
    value) they run seed by seed instead, every budget for seed 0 first: whenever the time runs
    out, each budget has the same seeds, and a seed round that would not finish by then is left out."""
    console = console or Console(stderr=True)
    architecture = check_inits(config)
    base = load_config(FinetuneConfig, config.finetune, config.settings)
    for name, source in config.inits.items():
        if source in REFERENCES and base.task.kind != REFERENCES[source]:
            raise HeadstartError(
                f"inits.{name}={source}: this reference reads task.kind={REFERENCES[source]}, "
                f"not task.kind={base.task.kind}"
            )
    train_size = count_train(base.task)
    for budget in config.budgets:
        if budget > train_size:
            raise HeadstartError(f"budgets: {budget} labels asked, but {base.task.train} has {train_size} records")
    run_dir = Path(config.run.out_dir) / config.run.name
    whole = resumed_study(run_dir, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(whole, run_dir / "study.yaml")
    results_path = run_dir / "results.jsonl"
    finished = read_results(results_path)
    if results_path.is_file():  # drop a line torn by a crash before appending after it
        write_text_atomic(results_path, "".join(json.dumps(r) + "\n" for r in finished))
    done = {(r["init"], r["budget_asked"], r["seed"]) for r in finished}
    references = References(config, base, run_dir, console)
    budgets = sorted(config.budgets, key=lambda b: b or train_size)
    cells = [(b, s, i) for b in budgets for s in range(config.seeds) for i in config.inits]
    if deadline is not None:
        cells = [(b, s, i) for s in range(config.seeds) for b in budgets for i in config.inits]
    todo = [c for c in cells if (c[2], c[0], c[1]) not in done]
    console.print(f"study {run_dir}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run")
    round_seed, round_started, last_round = None, time.monotonic(), None
    for number, (budget, seed, init) in enumerate(todo, start=1):
        if deadline is not None and seed != round_seed:
            if round_seed is not None:
                last_round = time.monotonic() - round_started
            if not round_fits(last_round, deadline - time.monotonic()):
                console.print(f"the time is up: seed {seed} and later seeds are left out")
                break
            round_seed, round_started = seed, time.monotonic()
        source = config.inits[init]
        started = time.perf_counter()
        try:
            if source in REFERENCES:
                cell = {**references.cell(source, budget, seed), "device": "cpu"}
            else:
                cell = finetune_cell(config, init, source, architecture, budget, seed, run_dir / "runs")
        except KeyboardInterrupt as stop:
            done_now = len(cells) - len(todo) + number - 1
            raise Interrupted(
                f"study {run_dir} interrupted during {init} · {budget or 'all'} labels · seed {seed}; "
                f"{done_now} of {len(cells)} cells are saved; rerun the same command to go on"
            ) from stop
        metric = cell.pop("metric")
        record = {"init": init, "task": task_name(base.task.train), "budget_asked": budget, "seed": seed,
                  "metric": metric, "value": cell[metric], **cell,
                  "sweep_seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
        append_line(results_path, record)
        console.print(
            f"[{number}/{len(todo)}] {init} · {record['budget']} labels · seed {seed}: "
            f"{metric} {record['value']:.3f} ({record['chosen']})",
            highlight=False,
        )
    write_report(run_dir, whole, architecture, references)
    return run_dir
