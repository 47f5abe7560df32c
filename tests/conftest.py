import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.config import PrepareConfig, TokenizerConfig
from headstart.data.prepare import prepare

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets beside the project (``../shared/data``). A user's fresh clone has none:
    tests that read them skip, with the reason. CI sets HEADSTART_REQUIRE_SHARED=1, where a
    missing folder fails them instead of letting them silently skip."""
    if not SHARED_DATA.is_dir():
        reason = f"{SHARED_DATA} is absent (the datasets beside the project)"
        if os.environ.get("HEADSTART_REQUIRE_SHARED") == "1":
            pytest.fail(reason + "; HEADSTART_REQUIRE_SHARED=1 requires it")
        pytest.skip(reason)
    return SHARED_DATA


WORDS = (
    "the cat sat on a mat while dogs ran far away from home and birds sang over green hills "
    "under blue skies near rivers where fish swim slowly past old stones"
).split()


POSITIVE = "good great fine lovely superb".split()
NEGATIVE = "bad awful poor dreadful terrible".split()
FILLER = "the cat sat on a mat while dogs ran far away".split()


def _write_task(path: Path, n: int, seed: int) -> Path:
    """A two-class sentiment-like task: one polar word among filler words."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            label = rng.randint(0, 1)
            words = [*rng.choices(FILLER, k=6), rng.choice(POSITIVE if label else NEGATIVE)]
            rng.shuffle(words)
            handle.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return path


def make_corpus(path: Path, documents: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(documents)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """A few hundred synthetic documents prepared with a small BPE tokenizer."""
    root = tmp_path_factory.mktemp("corpus")
    corpus = make_corpus(root / "corpus.txt")
    out = root / "shards"
    prepare(
        PrepareConfig(
            inputs=[str(corpus)],
            out=str(out),
            val_fraction=0.1,
            workers=1,
            tokenizer=TokenizerConfig(kind="bpe", vocab_size=400),
        )
    )
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The peak-FLOP/s probe caches under HEADSTART_CACHE; share one cache across the test session."""
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def write_task():
    """Writes a JSONL sentiment-like task: write_task(path, records, seed)."""
    return _write_task


def _tiny_checkpoint(shards: Path, out: Path, recipe: str, width: int) -> Path:
    from headstart import api

    # Random embeddings: skip-gram on the tiny corpus of random words collapses them.
    overrides = [f"data.shards={shards}", f"run.out_dir={out}", "run.name=p", "model.n_layer=2",
                 f"model.n_embd={width}", "model.n_head=2", "model.context=32", "train.seq_len=32",
                 "train.batch_size=4", "train.steps=10", "train.eval_every=0", "train.precision=fp32",
                 "embeddings.init=random"]  # fmt: skip
    return api.pretrain(recipe, overrides, quiet=True).checkpoint


@pytest.fixture(scope="session")
def tiny_encoder(tiny_shards, tmp_path_factory) -> Path:
    """A 2-layer masked-LM checkpoint pretrained for a few steps on the tiny corpus."""
    return _tiny_checkpoint(tiny_shards, tmp_path_factory.mktemp("encoder"), "bert-tiny", 32)


@pytest.fixture(scope="session")
def tiny_decoder(tiny_shards, tmp_path_factory) -> Path:
    """A 2-layer causal-LM checkpoint pretrained for a few steps on the tiny corpus."""
    return _tiny_checkpoint(tiny_shards, tmp_path_factory.mktemp("decoder"), "gpt-tiny", 64)


def fit_one_batch(objective, model, batch, steps: int, lr: float = 3e-3) -> tuple[list[float], dict]:
    """Adam on one fixed batch: the losses, and the last step's metrics (can the objective learn?)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses, metrics = [], {}
    for _ in range(steps):
        loss, metrics = objective.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, metrics


def two_class_images(path: Path, n: int = 64, seed: int = 0) -> Path:
    """An .npz of 8×8 grey images, class 0 bright on the left half and class 1 on the right,
    with noise on top; its test split is the first half of the training images."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 8, 8), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, :, 4 * label : 4 * label + 4] += 180
    np.savez(
        path,
        x_train=images,
        y_train=labels.astype(np.uint8),
        x_test=images[: n // 2],
        y_test=labels[: n // 2].astype(np.uint8),
    )
    return path


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    return two_class_images(tmp_path_factory.mktemp("images") / "images.npz", n=96)


@pytest.fixture(scope="session")
def tiny_simclr(tiny_images, tmp_path_factory) -> Path:
    """A small ResNet pretrained by SimCLR for a few steps on the two-class images."""
    from headstart import api

    out = tmp_path_factory.mktemp("simclr")
    overrides = [f"data.images={tiny_images}", f"run.out_dir={out}", "run.name=p", "objective.name=simclr",
                 "vision.width=8", "vision.depth=1", "objective.projection_hidden=32", "objective.projection_dim=16",
                 "train.batch_size=16", "train.steps=6", "train.eval_every=0", "train.precision=fp32"]  # fmt: skip
    return api.pretrain("simclr-fmnist", [*overrides, "data.eval_images="], quiet=True).checkpoint


SHARED_TESTS: set[str] = set()


def pytest_collection_modifyitems(items) -> None:
    SHARED_TESTS.update(item.nodeid for item in items if "shared_data" in getattr(item, "fixturenames", ()))


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many tests read ../shared/data and how many of them ran, so a skip is never silent."""
    if not SHARED_TESTS:
        return
    outcomes = {
        outcome: sum(1 for report in terminalreporter.stats.get(outcome, []) if report.nodeid in SHARED_TESTS)
        for outcome in ("passed", "failed", "skipped")
    }
    terminalreporter.write_line(
        f"tests on {SHARED_DATA}: {len(SHARED_TESTS)} collected, "
        + ", ".join(f"{count} {outcome}" for outcome, count in outcomes.items())
    )
