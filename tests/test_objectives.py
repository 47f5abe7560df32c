import numpy as np
import torch

from headstart.config import ModelConfig
from headstart.models.pretraining import ElectraPair
from headstart.models.transformer import Transformer
from headstart.objectives.clm import CausalLM
from headstart.objectives.mlm import MaskedLM
from headstart.objectives.rtd import ReplacedTokenDetection

MASK, PAD, EOD = 1, 2, 0


def test_clm_shifts_targets_by_one():
    windows = torch.arange(12).view(2, 6)
    batch = CausalLM().make_batch(windows, torch.Generator())
    assert torch.equal(batch["input"], windows[:, :-1])
    assert torch.equal(batch["target"], windows[:, 1:])


def test_mlm_masks_15_percent_with_80_10_10_and_never_special_tokens():
    objective = MaskedLM(vocab_size=1000, mask_id=MASK, special_ids=[EOD, MASK, PAD])
    windows = torch.randint(3, 1000, (64, 513))
    windows[:, ::50] = EOD
    batch = objective.make_batch(windows, torch.Generator().manual_seed(0))
    selected, inputs, target = batch["selected"], batch["input"], batch["target"]
    maskable = target != EOD
    rate = selected.sum().item() / maskable.sum().item()
    assert abs(rate - 0.15) < 0.01
    assert not selected[~maskable].any()
    chosen_inputs, chosen_targets = inputs[selected], target[selected]
    masked = (chosen_inputs == MASK).float().mean().item()
    kept = (chosen_inputs == chosen_targets).float().mean().item()
    assert abs(masked - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.02 + 0.001  # random replacements rarely hit the original
    assert torch.equal(inputs[~selected], target[~selected])


def test_mlm_masking_is_a_function_of_the_generator_seed():
    objective = MaskedLM(vocab_size=100, mask_id=MASK, special_ids=[EOD, MASK])
    windows = torch.randint(3, 100, (4, 33))
    a = objective.make_batch(windows, torch.Generator().manual_seed(5))
    b = objective.make_batch(windows, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_whole_word_masking_masks_words_together():
    word_start = np.zeros(100, dtype=bool)
    word_start[50:] = True  # ids >= 50 start words, ids < 50 continue them
    objective = MaskedLM(vocab_size=100, mask_id=MASK, special_ids=[EOD, MASK], word_start=word_start)
    generator = torch.Generator().manual_seed(0)
    windows = torch.tensor([[60, 10, 11, 70, 12, 80, 13, 14, 15] * 40 + [60]])
    tokens = windows[:, :-1]
    for _ in range(20):
        selected = objective.select(tokens, generator)[0]
        starts = (tokens[0] >= 50).long().cumsum(0)
        for word in starts.unique():
            in_word = selected[starts == word]
            assert in_word.all() or not in_word.any()


def test_mlm_loss_scores_only_selected_positions():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=40, n_layer=1, n_head=2, n_embd=16, context=32, causal=False))
    objective = MaskedLM(vocab_size=40, mask_id=MASK, special_ids=[EOD, MASK])
    batch = objective.make_batch(torch.randint(3, 40, (3, 33)), torch.Generator().manual_seed(1))
    loss, extra = objective.loss(model, batch)
    logits = model.logits(model(batch["input"]))[batch["selected"]]
    expected = torch.nn.functional.cross_entropy(logits, batch["target"][batch["selected"]])
    assert torch.allclose(loss, expected, atol=1e-5)
    assert 0.0 <= float(extra["masked_accuracy"]) <= 1.0


def test_rtd_replaces_only_masked_positions_and_learns_to_detect():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=32, context=16, causal=False)
    pair = ElectraPair(Transformer(config), generator_layers=1)
    assert pair.generator.embed is pair.discriminator.embed  # one shared embedding
    objective = ReplacedTokenDetection(vocab_size=40, mask_id=2, special_ids=range(6), mask_prob=0.3)
    windows = torch.randint(6, 40, (8, 17), generator=torch.Generator().manual_seed(1))
    batch = objective.make_batch(windows, torch.Generator().manual_seed(2))
    assert torch.equal(batch["input"][batch["selected"]], torch.full_like(batch["input"][batch["selected"]], 2))
    assert torch.equal(batch["input"][~batch["selected"]], windows[:, :-1][~batch["selected"]])
    optimizer = torch.optim.AdamW(pair.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, metrics = objective.loss(pair, batch)
        first = first if first is not None else float(metrics["detection_loss"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert 0.0 < float(metrics["replaced_fraction"]) <= float(batch["selected"].float().mean())
    assert float(metrics["detection_loss"]) < 0.5 * first
