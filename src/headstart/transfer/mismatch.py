"""How far a target corpus is from the source a checkpoint was pretrained on, and whether
continued (domain-adaptive) pretraining on the target is likely to pay — measured in under a
minute, before any compute is spent.

Measures, each on a seeded sample of documents from either side:

* **vocabulary overlap** (Gururangan et al. 2020, "Don't Stop Pretraining"): the share of the
  top-k lower-cased word unigrams the two corpora have in common, with punctuation and
  scikit-learn's English stop words removed, as they removed stop words;
* with a checkpoint, **tokenizer fertility** (sub-word tokens per word or punctuation mark) and
  the **unknown-token rate**, and the **perplexity** of both sides under the checkpoint: next-token
  for causal models, for masked LMs the exponentiated masked-LM loss at the checkpoint's masking
  rate with a fixed seed (a pseudo-perplexity: comparable between the two sides, not with causal);
* a **distance between the two distributions** of document representations (mean-pooled
  checkpoint embeddings, or bags of n-grams without a checkpoint): MMD with a Gaussian kernel
  and the proxy A-distance of a logistic domain classifier scored on held-out documents.

The recommendation is calibrated on measured gains: the gain continued pretraining bought on
targets where it was tried, against their vocabulary overlap, predicts this target's gain with
an interval (:mod:`headstart.transfer.adaptation_gain`). Overlap is the measure that ranked the
measured gains; perplexity ranked them backwards (surface form such as lower-casing raises it),
and a linear classifier separates almost any two corpora by style alone, so those are reported,
not decided on. A tokenizer that splits or cannot spell the target's words is flagged apart.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from tokenizers import Tokenizer
from torch import nn

from headstart.config import PretrainConfig
from headstart.data.sources import ReadOptions, read_documents
from headstart.data.tokenizers import encode_documents, load_tokenizer, tokenizer_info
from headstart.data.windows import eval_windows
from headstart.embed import embed_texts
from headstart.errors import HeadstartError
from headstart.models import backbone_of
from headstart.models.pretraining import ElectraPair
from headstart.objectives.base import Objective
from headstart.objectives.registry import build_objective, objective_entry
from headstart.readouts.probe import fit_logistic
from headstart.train.checkpoint import load_pretrained
from headstart.train.validate import evaluate_windows
from headstart.transfer.adaptation_gain import (
    MEASURED,
    WORTHWHILE_GAIN,
    GainForecast,
    GainModel,
    MeasuredPair,
    leave_one_out,
    read_pairs,
)
from headstart.transfer.reference import ngram_features, words

SEED = 0
TOP_K = 10_000  # Gururangan et al.'s vocabulary size for the overlap
MAX_DOCUMENTS = 100_000  # per side: enough words for a stable top 10k, few enough to count in seconds
SAMPLE_TOKENS = 32_768  # per side, scored for perplexity and fertility: seconds on one CPU core
DISTANCE_DOCUMENTS = 256  # per side, embedded for the distances: a held-out quarter still has 128
MIN_DISTANCE_DOCUMENTS = 8  # per side: fewer leave the classifier's held-out split nearly empty
BOW_FEATURES = 4_096  # n-grams in the bag-of-words representation, kept dense and small
ENCODE_BATCH = 64

HIGH_FERTILITY_RATIO = 1.25  # target words split into a quarter more pieces: a vocabulary not built for them
HIGH_UNKNOWN_RATE = 0.01  # over 1% of target tokens are <unk>: text the model cannot see at all


@dataclass
class Corpus:
    """One side: a seeded, shuffled sample of its documents and their word counts."""

    name: str
    documents: list[str]
    read: int  # documents in the whole corpus
    counts: Counter[str]


@dataclass
class Mismatch:
    """Every measure of one source → target comparison (None: not measured, see ``notes``)."""

    source: Corpus
    target: Corpus
    overlap: float
    top_k: int
    checkpoint: str | None = None
    representation: str = "bag of n-grams"
    fertility: tuple[float, float] | None = None
    unknown_rate: tuple[float, float] | None = None
    perplexity: tuple[float, float] | None = None
    perplexity_kind: str = ""
    mmd: float | None = None
    proxy_a_distance: float | None = None
    notes: list[str] = field(default_factory=list)

    forecast: GainForecast | None = None  # continued pretraining's predicted gain (None: not forecast)
    pairs: list[MeasuredPair] = field(default_factory=list)  # the measured gains the forecast was fitted on

    def tokenizer_notes(self) -> list[str]:
        """What the tokenizer does to the target, where it calls for extending it when continuing."""
        notes = []
        if self.fertility is not None and self.fertility[1] / self.fertility[0] > HIGH_FERTILITY_RATIO:
            ratio = self.fertility[1] / self.fertility[0]
            notes.append(f"the tokenizer splits the target's words into ×{ratio:.2f} the pieces of the source's")
        if self.unknown_rate is not None and self.unknown_rate[1] > HIGH_UNKNOWN_RATE:
            notes.append(f"{self.unknown_rate[1]:.1%} of the target's tokens are unknown to the tokenizer")
        return notes


# ----------------------------------------------------------------------------- reading and counting


def sample_corpus(name: str, options: ReadOptions, cap: int = MAX_DOCUMENTS, seed: int = SEED) -> Corpus:
    """A uniform sample of at most ``cap`` documents (reservoir sampling: one pass, bounded
    memory), shuffled so that any prefix of it is a sample too, and its word counts."""
    rng = random.Random(seed)
    sample: list[str] = []
    read = 0
    for read, doc in enumerate(read_documents([name], options), 1):
        if len(sample) < cap:
            sample.append(doc)
        elif (slot := rng.randrange(read)) < cap:
            sample[slot] = doc
    if not sample:
        raise HeadstartError(
            f"corpus {name}: no documents; expected non-empty text (JSONL: field {options.jsonl_field!r})"
        )
    rng.shuffle(sample)
    counts: Counter[str] = Counter()
    for doc in sample:
        counts.update(words(doc))
    return Corpus(name, sample, read, counts)


def top_words(counts: Counter[str], k: int) -> list[str]:
    """The ``k`` most frequent words, punctuation and stop words left out (ties: first seen first)."""
    ranked = (w for w, _ in counts.most_common() if w not in ENGLISH_STOP_WORDS and any(c.isalnum() for c in w))
    return list(itertools.islice(ranked, k))


def vocabulary_overlap(source: Counter[str], target: Counter[str], k: int = TOP_K) -> tuple[float, int]:
    """|top_k(S) ∩ top_k(T)| / k, and the k used: it shrinks to the smaller vocabulary so that a
    corpus with fewer than ``k`` distinct words is not counted as mismatched for that alone."""
    top_s, top_t = top_words(source, k), top_words(target, k)
    k = min(len(top_s), len(top_t))
    if k == 0:
        return 0.0, 0
    return len(set(top_s[:k]) & set(top_t[:k])) / k, k


# ----------------------------------------------------------------------------- under a checkpoint


@dataclass(frozen=True)
class Tokenized:
    """A prefix of a side's sample as the checkpoint's tokenizer sees it."""

    tokens: np.ndarray  # each document's ids followed by the end-of-document token
    words: int
    subwords: int  # tokens other than the end-of-document markers
    unknown: int

    @property
    def fertility(self) -> float:
        return self.subwords / max(1, self.words)

    @property
    def unknown_rate(self) -> float:
        return self.unknown / max(1, self.subwords)


def tokenize_sample(tokenizer: Tokenizer, documents: list[str], max_tokens: int = SAMPLE_TOKENS) -> Tokenized:
    """Whole documents from the start of the sample until they hold ``max_tokens`` tokens (words and
    punctuation marks counted as ``words`` splits them, the units fertility divides by)."""
    info = tokenizer_info(tokenizer)
    ids: list[int] = []
    n_words = n_docs = 0
    for start in range(0, len(documents), ENCODE_BATCH):
        batch = documents[start : start + ENCODE_BATCH]
        ids += [t for doc in encode_documents(tokenizer, batch, info.eod_id) for t in doc]
        n_words += sum(len(words(doc)) for doc in batch)
        n_docs += len(batch)
        if len(ids) >= max_tokens:
            break
    tokens = np.asarray(ids, dtype=np.int64)
    return Tokenized(tokens, n_words, len(tokens) - n_docs, int((tokens == info.unk_id).sum()))


def language_model(
    model: nn.Module, config: PretrainConfig, tokenizer: Tokenizer
) -> tuple[nn.Module, Objective, str] | None:
    """The model and objective whose loss is a perplexity, and its name; ELECTRA's generator is
    its masked LM; None for sentence encoders (SimCSE), which keep no trained LM head."""
    entry = objective_entry(config.objective.name)
    if not entry.comparable_loss:
        return None
    if isinstance(model, ElectraPair):
        model, config = model.generator, replace(config, objective=replace(config.objective, name="mlm"))
    if entry.causal:
        return model, build_objective(config, tokenizer), "next-token"
    masked = f"masked-LM, {config.objective.mask_prob:.0%} masked, fixed seed"
    return model, build_objective(config, tokenizer), masked


def perplexity(model: nn.Module, objective: Objective, tokens: np.ndarray, seq_len: int) -> float:
    """Perplexity over non-overlapping windows of ``tokens`` (masking fixed by the evaluation seed)."""
    windows = eval_windows(tokens, seq_len + 1, 0)
    with torch.no_grad():
        return evaluate_windows(model, objective, windows, batch_size=16)["val_ppl"]


# ----------------------------------------------------------------------------- distances


def mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Maximum mean discrepancy with a Gaussian kernel exp(-d²/m), m the median squared distance
    (the median heuristic); the biased estimate, so identical samples give exactly 0."""
    z = torch.cat([x, y]).double()
    d2 = torch.cdist(z, z).pow(2)
    off_diagonal = d2[~torch.eye(len(z), dtype=torch.bool)]
    kernel = torch.exp(-d2 / off_diagonal.median().clamp(min=1e-12))
    n = len(x)
    squared = kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
    return float(squared.clamp(min=0).sqrt())


def proxy_a_distance(features: torch.Tensor, labels: torch.Tensor, seed: int = SEED) -> float:
    """2(1 − 2·err) of the project's logistic probe telling the domains apart (Ben-David et al.):
    fitted on half the rows, L2 chosen on a quarter, err on the held-out quarter; clipped at 0,
    since a classifier worse than chance means the domains are indistinguishable."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    half, three_quarters = len(order) // 2, 3 * len(order) // 4
    fit, val, test = order[:half], order[half:three_quarters], order[three_quarters:]
    probe = fit_logistic(features[fit], labels[fit], features[val], labels[val], n_classes=2)
    error = (probe.predict(features[test]) != labels[test]).float().mean().item()
    return max(0.0, 2 * (1 - 2 * error))


def domain_distances(
    source: list[str], target: list[str], featurize: Callable[[list[str]], torch.Tensor]
) -> tuple[float, float]:
    """MMD and proxy A-distance between the representations of equally many documents per side."""
    n = min(len(source), len(target), DISTANCE_DOCUMENTS)
    features = featurize(source[:n] + target[:n]).float()
    labels = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    return mmd(features[:n], features[n:]), proxy_a_distance(features, labels)


def bag_of_ngrams(texts: list[str]) -> torch.Tensor:
    """Unigram + bigram indicators over the pooled texts' most frequent n-grams (the study's n-gram reference)."""
    return ngram_features(texts, [texts], BOW_FEATURES)[0].to_dense()


# ----------------------------------------------------------------------------- the comparison


def measure_mismatch(
    source: str,
    target: str,
    checkpoint: str | Path | None = None,
    options: ReadOptions | None = None,
    pairs: list[MeasuredPair] | None = None,
    worthwhile: float = WORTHWHILE_GAIN,
) -> Mismatch:
    """Sample both corpora, measure what a checkpoint (if given) makes measurable, and forecast
    continued pretraining's gain from ``pairs`` (default: the measured ones headstart ships)."""
    options = options or ReadOptions()
    src, tgt = sample_corpus(source, options), sample_corpus(target, options)
    overlap, k = vocabulary_overlap(src.counts, tgt.counts)
    pairs = read_pairs(MEASURED) if pairs is None else pairs
    forecast = GainModel.fit(pairs).forecast(overlap, worthwhile)
    result = Mismatch(src, tgt, overlap, k, forecast=forecast, pairs=pairs)
    featurize = bag_of_ngrams
    if checkpoint is None:
        result.notes.append("no checkpoint: fertility, unknown rate and perplexity not measured")
    else:
        featurize = _measure_checkpoint(result, checkpoint)
    if min(len(src.documents), len(tgt.documents)) < MIN_DISTANCE_DOCUMENTS:
        result.notes.append(f"distances not measured: fewer than {MIN_DISTANCE_DOCUMENTS} documents on a side")
    else:
        result.mmd, result.proxy_a_distance = domain_distances(src.documents, tgt.documents, featurize)
    return result


def _measure_checkpoint(result: Mismatch, checkpoint: str | Path) -> Callable[[list[str]], torch.Tensor]:
    """Fill in fertility, unknown rate and perplexity; return the checkpoint's embedding function."""
    model, config, folder = load_pretrained(checkpoint)
    if not (folder / "tokenizer.json").is_file():
        raise HeadstartError(f"checkpoint {checkpoint}: an image checkpoint; mismatch reads text checkpoints")
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    result.checkpoint = str(folder)
    src = tokenize_sample(tokenizer, result.source.documents)
    tgt = tokenize_sample(tokenizer, result.target.documents)
    result.fertility = (src.fertility, tgt.fertility)
    result.unknown_rate = (src.unknown_rate, tgt.unknown_rate)
    lm = language_model(model, config, tokenizer)
    if lm is None:
        result.notes.append(f"perplexity not measured: a {config.objective.name} checkpoint has no language-model head")
    else:
        scorer, objective, result.perplexity_kind = lm
        seq_len = min(config.train.seq_len, scorer.config.context)
        result.perplexity = (
            perplexity(scorer, objective, src.tokens, seq_len),
            perplexity(scorer, objective, tgt.tokens, seq_len),
        )
    result.representation = "checkpoint embeddings"
    backbone = backbone_of(model)
    return lambda texts: torch.from_numpy(embed_texts(backbone, tokenizer, texts))


# ----------------------------------------------------------------------------- the report


def table_rows(m: Mismatch) -> list[tuple[str, str, str, str]]:
    """(measure, source, target, comparison): the console table and the report's."""
    rows = [
        ("documents (read / sampled)", f"{m.source.read:,} / {len(m.source.documents):,}",
         f"{m.target.read:,} / {len(m.target.documents):,}", ""),
        ("words and marks (distinct)", f"{m.source.counts.total():,} ({len(m.source.counts):,})",
         f"{m.target.counts.total():,} ({len(m.target.counts):,})", ""),
        (f"top-{m.top_k:,} vocabulary overlap", "", "", f"{m.overlap:.3f}"),
    ]  # fmt: skip
    if m.fertility is not None:
        rows.append(("fertility (tokens per word)", f"{m.fertility[0]:.3f}", f"{m.fertility[1]:.3f}",
                     f"×{m.fertility[1] / m.fertility[0]:.2f}"))  # fmt: skip
    if m.unknown_rate is not None:
        rows.append(("unknown-token rate", f"{m.unknown_rate[0]:.2%}", f"{m.unknown_rate[1]:.2%}", ""))
    if m.perplexity is not None:
        rows.append((f"perplexity ({m.perplexity_kind})", f"{m.perplexity[0]:,.1f}", f"{m.perplexity[1]:,.1f}",
                     f"×{m.perplexity[1] / m.perplexity[0]:.2f}"))  # fmt: skip
    if m.mmd is not None and m.proxy_a_distance is not None:
        rows.append((f"MMD ({m.representation})", "", "", f"{m.mmd:.3f}"))
        rows.append((f"proxy A-distance ({m.representation})", "", "", f"{m.proxy_a_distance:.3f}"))
    return rows


def recommendation(m: Mismatch) -> str:
    """The verdict in plain words, with the forecast and the measure that decided it."""
    f = m.forecast
    if f is None:
        return "No forecast: no measured pairs to calibrate it on."
    where = f"top-{m.top_k:,} vocabulary overlap {m.overlap:.2f}"
    if f.clamped_to is not None:
        where += f", outside the measured pairs' overlaps, so read at the nearest, {f.clamped_to:.2f}"
    forecast = (
        f"predicted gain {f.gain:+.1f} points at about 500 labels (95% interval {f.low:+.1f} to {f.high:+.1f}), "
        f"from {f.pairs} measured pairs, at {where}"
    )
    worth = f"a gain of {f.worthwhile:g} point{'s' * (f.worthwhile != 1)}, the least worth a continued run"
    verdict = {
        "continue": f"Continue pretraining on the target domain (domain-adaptive pretraining): {forecast}; "
        f"even its low end clears {worth}.",
        "not worth it": f"Not worth continuing pretraining on the target domain: {forecast}; even its high end "
        f"stays under {worth}.",
        "unclear": f"Unclear: run the pilot (`headstart pilot` with a continued checkpoint as an init) to measure "
        f"it: {forecast}, an interval that spans {worth}.",
    }[f.verdict]
    if notes := m.tokenizer_notes():
        verdict += f" If you continue: {'; '.join(notes)}, so extend it (`headstart prepare --extend-vocab`)."
    if not m.checkpoint:
        verdict += " Pass --checkpoint to measure fertility and perplexity as well."
    return verdict


def report_lines(m: Mismatch) -> list[str]:
    """The Markdown report: the measures, the recommendation and how they were measured."""
    lines = [
        f"# Domain mismatch: {m.source.name} → {m.target.name}",
        "",
        f"Checkpoint: `{m.checkpoint}`" if m.checkpoint else "No checkpoint.",
        "",
        "| measure | source | target | comparison |",
        "|---|---:|---:|---:|",
        *(f"| {' | '.join(row)} |" for row in table_rows(m)),
        "",
        "## Recommendation",
        "",
        recommendation(m),
        "",
        "## How it was measured",
        "",
        f"- Up to {MAX_DOCUMENTS:,} documents per side, sampled with seed {SEED}. Words: lower-cased, "
        "punctuation and English stop words removed for the overlap (Gururangan et al. 2020).",
    ]
    if m.checkpoint:
        lines.append(f"- Fertility, unknown rate and perplexity on the first ~{SAMPLE_TOKENS:,} tokens of each sample.")
    if m.mmd is not None:
        what = "mean-pooled checkpoint embeddings" if m.checkpoint else f"the {BOW_FEATURES:,} most frequent n-grams"
        lines.append(
            f"- Distances on {what} of up to {DISTANCE_DOCUMENTS} documents per side: MMD with a "
            "Gaussian kernel (median heuristic); proxy A-distance 2(1 − 2·err) of a logistic domain classifier "
            "on held-out documents (0: indistinguishable, 2: fully separable). They do not decide the "
            "recommendation: style alone separates most corpora."
        )
    lines += [f"- {note}." for note in m.notes]
    if m.pairs:
        lines += ["", *forecast_basis(m.pairs)]
    return lines


def forecast_basis(pairs: list[MeasuredPair]) -> list[str]:
    """The measured pairs the forecast rests on, each with the forecast the others make for it."""
    lines = [
        "## What the forecast rests on",
        "",
        "Continued pretraining's gain over the general checkpoint where it was measured, against the vocabulary "
        "overlap (a line weighted by each gain's standard error, the scatter between pairs added to the "
        "interval); each pair's leave-one-out column is the forecast the other pairs make for it.",
        "",
        "| target | adaptation | task, labels | overlap | measured gain | leave-one-out forecast |",
        "|---|---|---|---:|---:|---|",
    ]
    for pair, f in zip(pairs, leave_one_out(pairs), strict=True):
        loo = "— (too few others)" if f is None else f"{f.gain:+.1f} ({f.low:+.1f} to {f.high:+.1f}): {f.verdict}"
        lines.append(
            f"| {pair.name} | {pair.adaptation} | {pair.task}, {pair.budget:,} | {pair.overlap:.3f} | "
            f"{pair.gain:+.1f} ± {pair.standard_error:.1f} (s.e., {pair.seeds} seeds) | {loo} |"
        )
    return lines


def print_mismatch(m: Mismatch, console: Console) -> None:
    table = Table(title=f"{m.source.name} → {m.target.name}")
    for column in ("measure", "source", "target", "comparison"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for row in table_rows(m):
        table.add_row(*row)
    console.print(table)
    for note in m.notes:
        console.print(note, highlight=False)
    console.print(recommendation(m), highlight=False)
