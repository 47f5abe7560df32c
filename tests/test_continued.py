import json

import pytest
import torch

from headstart import api
from headstart.config import PrepareConfig, StudyConfig, TokenizerConfig
from headstart.data.prepare import prepare
from headstart.errors import HeadstartError
from headstart.train import checkpoint as ckpt
from headstart.transfer.report import compute_section
from headstart.workflows.continued import forgetting
from tests.conftest import make_corpus


@pytest.fixture(scope="module")
def domain_shards(tiny_decoder, tmp_path_factory):
    """Another corpus, prepared with the decoder checkpoint's own tokenizer."""
    root = tmp_path_factory.mktemp("domain")
    corpus = make_corpus(root / "domain.txt", documents=120, seed=7)
    tokenizer = TokenizerConfig(path=str(tiny_decoder / "tokenizer.json"))
    prepare(
        PrepareConfig(inputs=[str(corpus)], out=str(root / "shards"), val_fraction=0.1, workers=1, tokenizer=tokenizer)
    )
    return root / "shards"


def continue_run(tmp_path, shards, init, name, *extra):
    overrides = [f"init={init}", f"data.shards={shards}", f"run.out_dir={tmp_path}", f"run.name={name}",
                 "train.seq_len=32", "train.batch_size=4", "train.steps=3", "train.eval_every=0",
                 "train.precision=fp32", *extra]  # fmt: skip
    return api.pretrain("gpt-tiny", overrides, quiet=True)


def adam_steps(checkpoint):
    states = ckpt.load_state(checkpoint)["optimizer"]["state"].values()
    return {int(state["step"]) for state in states if "step" in state}  # Muon's matrices keep a momentum only


def test_a_continued_checkpoint_records_its_lineage_and_what_the_original_domain_forgets(
    tmp_path, tiny_decoder, domain_shards
):
    first = continue_run(tmp_path, domain_shards, tiny_decoder, "dapt")
    lineage = json.loads((first.checkpoint / "lineage.json").read_text())
    manifest = json.loads((tiny_decoder / "manifest.json").read_text())["sha256"]
    assert [entry["checkpoint"] for entry in lineage] == [str(tiny_decoder.resolve())]
    assert lineage[0]["model_sha256"] == manifest["model.safetensors"]
    assert lineage[0]["objective"] == "clm" and lineage[0]["steps"] == 10 and lineage[0]["flops"] > 0
    # continuing the continued run extends the chain, newest first
    second = continue_run(tmp_path, domain_shards, first.checkpoint, "dapt-again")
    chain = json.loads((second.checkpoint / "lineage.json").read_text())
    assert [entry["checkpoint"] for entry in chain] == [str(first.checkpoint.resolve()), str(tiny_decoder.resolve())]
    # a study's compute table charges a continued checkpoint for its ancestors too
    own = [json.loads((c / "compute.json").read_text())["flops"] for c in (second.checkpoint, first.checkpoint)]
    total = sum(own) + lineage[0]["flops"]
    rows = compute_section(
        {"dapt": {100: [{"sweep_flops": 1e9}]}}, StudyConfig(inits={"dapt": str(second.checkpoint)}), None
    )
    assert f"| dapt | {total:.3g} |" in "\n".join(rows) and "(+ 2 earlier runs)" in "\n".join(rows)

    # the original domain's validation loss is measured before the first step and at the end
    records = [json.loads(line) for line in (tmp_path / "dapt" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "origin_val_loss" in r]
    assert [r["step"] for r in evaluations] == [0, 3]
    before, after = forgetting(tmp_path / "dapt" / "metrics.jsonl")
    assert (before, after) == (evaluations[0]["origin_val_loss"], evaluations[-1]["origin_val_loss"])
    assert before != after and all(torch.isfinite(torch.tensor([before, after])))


def test_the_optimizer_starts_cold_or_carries_the_checkpoints_moments(tmp_path, tiny_decoder, domain_shards):
    assert adam_steps(tiny_decoder) == {10}
    fresh = continue_run(tmp_path, domain_shards, tiny_decoder, "fresh")
    carried = continue_run(
        tmp_path, domain_shards, tiny_decoder, "carried", "init_optimizer=carry", "optim.weight_decay=0.05"
    )
    assert adam_steps(fresh.checkpoint) == {3} and adam_steps(carried.checkpoint) == {13}
    # this run's hyperparameters, not the checkpoint's
    groups = ckpt.load_state(carried.checkpoint)["optimizer"]["param_groups"]
    assert {group["weight_decay"] for group in groups} == {0.0, 0.05}  # gpt-tiny: 0.1


def test_carrying_needs_the_same_parameters(tmp_path, tiny_decoder, domain_shards):
    with pytest.raises(HeadstartError, match=r"init_optimizer=carry: .* parameter groups"):
        continue_run(tmp_path, domain_shards, tiny_decoder, "simcse", "init_optimizer=carry", "objective.name=simcse")
