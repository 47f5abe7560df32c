"""Hugging Face interop: exported checkpoints load in transformers with the same logits, greedy
tokens and token ids; import → export → import is exact; what cannot map is one clear line."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headstart import api
from headstart.config import to_dict
from headstart.data.tokenizers import load_tokenizer, tokenizer_hash
from headstart.errors import HeadstartError
from headstart.generate import sample
from headstart.models import backbone_of
from headstart.objectives.registry import build_model
from headstart.train import checkpoint as ckpt
from headstart.train.checkpoint import load_pretrained
from tests.test_cli import assert_one_line_error, headstart

transformers = pytest.importorskip("transformers")

SENTENCE = "the cat sat on a mat while dogs ran far away"


def write_variant(source: Path, out: Path, std: float = 0.1, **model: object) -> Path:
    """``source``'s checkpoint with model fields changed, random N(0, std) matrices (big enough
    that greedy decoding wanders instead of repeating one token) and random norm gains (so that
    a gain read in the wrong channel order shows)."""
    _, config, folder = load_pretrained(source)
    config = replace(config, model=replace(config.model, **model))
    torch.manual_seed(0)
    trained = build_model(config)
    with torch.no_grad():
        for param in trained.parameters():
            if param.dim() > 1:
                param.normal_(0.0, std)
            else:
                param.uniform_(0.5, 1.5)
    tokenizer = folder / "tokenizer.json"
    return ckpt.write_checkpoint(out, 0, trained, {"step": 0}, to_dict(config),
                                 lambda into: shutil.copyfile(tokenizer, into / "tokenizer.json"))  # fmt: skip


@pytest.fixture(scope="module")
def random_decoder(tiny_decoder, tmp_path_factory) -> Path:
    return write_variant(tiny_decoder, tmp_path_factory.mktemp("random-decoder"), qk_norm=False)  # a Llama


@pytest.fixture(scope="module")
def untied_decoder(tiny_decoder, tmp_path_factory) -> Path:
    return write_variant(tiny_decoder, tmp_path_factory.mktemp("untied-decoder"), tie_embeddings=False)


CHECKPOINTS = {"decoder": "tiny_decoder", "encoder": "tiny_encoder", "random": "random_decoder",
               "untied": "untied_decoder"}  # fmt: skip


def checkpoint_of(name: str, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(CHECKPOINTS[name])


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    return {name: api.export_hf(checkpoint_of(name, request), root / name) for name in CHECKPOINTS}


def max_logit_difference(checkpoint: Path, hf_dir: Path, padded: bool = False) -> float:
    backbone = backbone_of(load_pretrained(checkpoint)[0])
    auto = transformers.AutoModelForCausalLM if backbone.config.causal else transformers.AutoModelForMaskedLM
    model = auto.from_pretrained(hf_dir).eval()
    torch.manual_seed(1)
    ids = torch.randint(0, backbone.config.vocab_size, (3, backbone.config.context))
    mask = torch.ones_like(ids, dtype=torch.bool)
    if padded:
        mask[0, 20:], mask[1, 5:] = False, False
    with torch.no_grad():
        ours = backbone.logits(backbone(ids, padding_mask=mask if padded else None))
        theirs = model(input_ids=ids, attention_mask=mask.long()).logits
    return (ours - theirs)[mask].abs().max().item()


@pytest.mark.parametrize(
    ("name", "architecture"),
    [("decoder", "Qwen3ForCausalLM"), ("random", "LlamaForCausalLM"), ("untied", "Qwen3ForCausalLM"),
     ("encoder", "EuroBertForMaskedLM")],
)  # fmt: skip
def test_exported_logits_equal_headstart(name, architecture, exported, request):
    hf_dir = exported[name]
    files = {p.name for p in hf_dir.iterdir()}
    assert files >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert ("generation_config.json" in files) == architecture.endswith("ForCausalLM")
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == [architecture]
    difference = max_logit_difference(checkpoint_of(name, request), hf_dir)
    print(f"{name}: max abs logit difference {difference:.2e}")
    assert difference <= 1e-5
    if architecture == "EuroBertForMaskedLM":
        padded = max_logit_difference(checkpoint_of(name, request), hf_dir, padded=True)
        print(f"{name} with padding: max abs logit difference {padded:.2e}")
        assert padded <= 1e-5


def test_transformers_greedy_generate_matches_headstart(random_decoder, exported):
    backbone = backbone_of(load_pretrained(random_decoder)[0])
    model = transformers.AutoModelForCausalLM.from_pretrained(exported["random"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported["random"])
    produced = []
    for prompt in ("the cat", "dogs ran far away", "birds sang over green"):
        ids = tokenizer(prompt, return_tensors="pt")
        theirs = model.generate(**ids, do_sample=False, max_new_tokens=16)[0, ids.input_ids.size(1) :].tolist()
        ours = sample(backbone, ids.input_ids[0].tolist(), 16, temperature=0.0, stop_token=tokenizer.eos_token_id)
        assert theirs == ours
        produced.append(ours)
    assert len({token for tokens in produced for token in tokens}) > 3  # not one token repeated


@pytest.mark.parametrize("name", ["decoder", "encoder"])
def test_auto_tokenizer_encodes_like_headstart(name, exported, request):
    ours = load_tokenizer(checkpoint_of(name, request) / "tokenizer.json")
    theirs = transformers.AutoTokenizer.from_pretrained(exported[name])
    ids = ours.encode(SENTENCE, add_special_tokens=False).ids
    assert theirs(SENTENCE, add_special_tokens=False).input_ids == ids
    # a decoder's prompt starts with <|endoftext|>, as `headstart generate` starts it
    assert theirs(SENTENCE).input_ids == ([0] if name == "decoder" else []) + ids
    specials = (theirs.bos_token, theirs.eos_token, theirs.pad_token, theirs.mask_token, theirs.unk_token)
    assert specials == ("<|endoftext|>", "<|endoftext|>", "<pad>", "<mask>", "<unk>")
    assert [theirs.convert_tokens_to_ids(t) for t in specials] == [0, 0, 1, 2, 3]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt.resolve_checkpoint(checkpoint) / "model.safetensors")


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", ["decoder", "random", "encoder", "untied"])
def test_import_export_import_is_exact(name, exported, request, tmp_path):
    original = checkpoint_of(name, request)
    first = api.import_hf(exported[name], tmp_path / "first")
    second = api.import_hf(api.export_hf(first, tmp_path / "hf"), tmp_path / "second")
    assert_bitwise_equal(weights(original), weights(first))
    assert_bitwise_equal(weights(first), weights(second))
    model = [load_pretrained(path)[1].model for path in (original, first, second)]
    assert model[1] == model[2]
    assert replace(model[0], mlp_hidden=model[1].mlp_hidden, dropout=0.0) == model[1]
    hashes = {tokenizer_hash(load_tokenizer(path / "tokenizer.json")) for path in (original, first, second)}
    assert len(hashes) == 1  # the original shards and evaluate still fit an imported checkpoint


def test_imported_checkpoints_are_inits(exported, tiny_shards, tmp_path, write_task):
    decoder, encoder = (api.import_hf(exported[name], tmp_path / name) for name in ("decoder", "encoder"))
    runs = [f"run.out_dir={tmp_path}", "train.steps=2", "train.eval_every=0", "train.precision=fp32"]
    common = [*runs, f"data.shards={tiny_shards}", "train.seq_len=32", "train.batch_size=2", "embeddings.init=random"]
    result = api.pretrain("gpt-tiny", [*common, f"init={tmp_path / 'decoder'}", "run.name=continued"], quiet=True)
    assert result.step == 2 and decoder.parent.parent == tmp_path / "decoder"
    with pytest.raises(HeadstartError, match="no single-file optimizer state"):
        api.pretrain("gpt-tiny", [*common, f"init={decoder}", "init_optimizer=carry", "run.name=carry"], quiet=True)
    task = write_task(tmp_path / "task.jsonl", 60, 0)
    tuned = api.finetune(
        "sst2", [*runs, f"task.train={task}", f"task.eval={task}", "task.max_len=16", "budget=40", f"init={encoder}"],
        quiet=True,
    )  # fmt: skip
    assert 0.0 <= tuned.metrics["accuracy"] <= 1.0


def test_import_appends_headstart_special_tokens(tmp_path):
    """A transformers Llama whose tokenizer lacks headstart's special tokens: they are appended,
    each embedding row the mean of its spelling's pieces."""
    from tokenizers import Tokenizer, models

    vocab = {char: i for i, char in enumerate(sorted(set("<|endoftext|><pad><mask><unk><cls><sep> ab")))}
    tokenizer = Tokenizer(models.BPE(vocab, merges=[]))  # characters only: "<pad>" is five pieces
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                      rms_norm_eps=1e-6, tie_word_embeddings=True)  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "llama")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(tmp_path / "llama")
    folder = api.import_hf(tmp_path / "llama", tmp_path / "imported")
    backbone, config_of, _ = load_pretrained(folder)
    tok = load_tokenizer(folder / "tokenizer.json")
    assert backbone.config.vocab_size == config_of.model.vocab_size == len(vocab) + 6 == tok.get_vocab_size()
    embed = model.model.embed_tokens.weight.detach()
    pad = [vocab[char] for char in "<pad>"]
    assert torch.equal(backbone.embed.weight[: len(vocab)], embed)
    assert torch.allclose(backbone.embed.weight[tok.token_to_id("<pad>")], embed[pad].mean(0))


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_key_value_heads", 1), ("hidden_act", "gelu"), ("attention_bias", True), ("rms_norm_eps", 1e-5),
     ("use_sliding_window", True), ("model_type", "mistral")],
)  # fmt: skip
def test_import_refuses_what_does_not_map(field, value, exported, tmp_path):
    source = tmp_path / "hf"
    shutil.copytree(exported["decoder"], source)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {field: value}))
    with pytest.raises(HeadstartError, match=field) as error:
        api.import_hf(source, tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("mlp", "gelu", "gelu"),
        ("norm", "layernorm", "layernorm"),
        ("kind", "mamba", "mamba"),
        ("qk_norm", True, "true in an encoder"),
    ],
)
def test_export_refuses_what_does_not_map(field, value, shown, tiny_decoder, tiny_encoder, tmp_path):
    source = tiny_encoder if field == "qk_norm" else tiny_decoder  # a decoder with QK-norm is a Qwen3
    checkpoint = write_variant(source, tmp_path / "checkpoints", **{field: value})
    with pytest.raises(HeadstartError, match=f"model.{field}={shown}") as error:
        api.export_hf(checkpoint, tmp_path / "hf")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "hf").exists()


def test_bad_inputs_are_one_line(tiny_decoder, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    assert_one_line_error(headstart("export", str(tmp_path), "--to", "hf", "--out", str(tmp_path / "o")),
                          "expected a checkpoint directory")  # fmt: skip
    assert_one_line_error(headstart("export", str(tiny_decoder), "--out", str(tmp_path / "taken")), "already exists")
    assert_one_line_error(headstart("import-hf", str(tiny_decoder), "--out", str(tmp_path / "o")), "config.json")
    assert_one_line_error(headstart("import-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "nope")
    assert (tmp_path / "taken" / "file").read_text() == "mine"
