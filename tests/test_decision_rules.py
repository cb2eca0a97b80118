"""The category decision rules (README "Category decision rules"), each against hand-worked cases.

Vocabulary of the hand-built cases: 2 categories (a, b), 2 classes (v, p):

    id     0      1    2    3    4    5
    token  <pad>  |    v_a  v_b  p_a  p_b
    cat    -1     -1   0    1    0    1

Logits are log-probabilities, so the softmax of a frame is the probabilities written in the test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from broadclass.data.labels import LabelMap
from broadclass.model.decoding import category_posteriors, greedy_decode, vote
from broadclass.model.module import BroadClassModule
from tests.helpers.config import TEST_MODEL, compose_config

TOKEN_CATEGORY = [-1, -1, 0, 1, 0, 1]
BLANK, BOUNDARY, V_A, V_B, P_A, P_B = range(6)


def frames(*probabilities: list[float]) -> torch.Tensor:
    """One utterance's logits whose per-frame softmax is the given probabilities."""
    probs = torch.tensor(probabilities, dtype=torch.float64)
    assert torch.allclose(probs.sum(-1), torch.ones(len(probabilities), dtype=torch.float64))
    return probs.clamp_min(1e-30).log().float()


# ---- vote ----------------------------------------------------------------------------------------------------


def test_vote_is_the_majority_of_the_decoded_category_tags():
    decoded = [[V_B, P_A, P_B], [V_A, V_A, P_B], [P_B]]
    assert vote(decoded, TOKEN_CATEGORY, 2).tolist() == [1, 0, 1]


def test_vote_ignores_word_boundaries():
    # Three boundaries (category -1) and one b token: b, not the category that -1 would index (the last)
    # nor the first.
    assert vote([[BOUNDARY, BOUNDARY, BOUNDARY, V_B]], TOKEN_CATEGORY, 2).tolist() == [1]
    three = [-1, -1, 0, 1, 2]  # with 3 categories, a -1 counted as Python's last index would give 2
    assert vote([[1, 1, 1, 3]], three, 3).tolist() == [1]


def test_vote_ties_go_to_the_lowest_category_id():
    assert vote([[V_B, V_A], [P_B, V_A, V_B, P_A]], TOKEN_CATEGORY, 2).tolist() == [0, 0]
    # 3 categories, a tie between 1 and 2 (category 0 has no vote): 1, not 0 and not 2.
    three = [-1, -1, 0, 1, 2]
    assert vote([[4, 3, 4, 3]], three, 3).tolist() == [1]
    assert vote([[4, 3, 2, 4, 3]], three, 3).tolist() == [1]


def test_vote_gives_category_0_when_nothing_is_decoded():
    assert vote([[], [BOUNDARY, BOUNDARY]], TOKEN_CATEGORY, 2).tolist() == [0, 0]
    assert vote([[]], [-1, -1, 0, 1, 2], 3).tolist() == [0]


def test_on_a_batch_where_nothing_is_decoded_vote_sends_every_utterance_to_category_0_and_posterior_does_not():
    # The reference runs' class-0 bias: early in training the best path is all blanks. Every frame here is
    # 70 % blank, and the rest of its mass leans to the utterance's own category (b, b, a, b).
    lean_b = [0.7, 0.05, 0.05, 0.1, 0.0, 0.1]
    lean_a = [0.7, 0.05, 0.1, 0.05, 0.1, 0.0]
    logits = torch.stack([frames(lean_b, lean_b, lean_b), frames(lean_b, lean_b, lean_b),
                          frames(lean_a, lean_a, lean_a), frames(lean_b, lean_b, lean_b)])  # fmt: skip
    lengths = torch.tensor([3, 3, 3, 2])
    truth = [1, 1, 0, 1]
    decoded = greedy_decode(logits, lengths)
    assert decoded == [[], [], [], []]
    by_vote = vote(decoded, TOKEN_CATEGORY, 2).tolist()
    by_posterior = category_posteriors(logits, lengths, torch.tensor(TOKEN_CATEGORY), 2).argmax(1).tolist()
    assert by_vote == [0, 0, 0, 0]
    assert by_posterior == truth
    # On this batch vote is right only for the category-0 utterance: accuracy 1/4 against 4/4.
    assert sum(p == t for p, t in zip(by_vote, truth, strict=True)) == 1


# ---- posterior -----------------------------------------------------------------------------------------------


def test_posteriors_sum_each_categorys_mass_over_frames_leaving_out_blank_and_word_boundary():
    logits = frames(
        [0.5, 0.1, 0.1, 0.2, 0.05, 0.05],  # a 0.15, b 0.25
        [0.2, 0.6, 0.1, 0.0, 0.1, 0.0],  # a 0.20, b 0.00
    )[None]
    posterior = category_posteriors(logits, torch.tensor([2]), torch.tensor(TOKEN_CATEGORY), 2)
    # a: 0.35, b: 0.25 of a category mass of 0.6. Counting the blank or the boundary (0.7 and 0.7) for either
    # category would change both the numbers and, for b, the decision.
    assert posterior.tolist()[0] == pytest.approx([0.35 / 0.6, 0.25 / 0.6], abs=1e-6)


def test_posteriors_leave_out_the_frames_past_the_output_length():
    a_frame = [0.0, 0.0, 0.6, 0.2, 0.2, 0.0]  # a 0.8, b 0.2
    b_frame = [0.0, 0.0, 0.0, 0.5, 0.0, 0.5]  # b 1.0
    # Utterance 0: 2 real frames of a, then 3 padded frames of b that would outweigh them.
    # Utterance 1: all 5 frames real.
    logits = torch.stack(
        [frames(a_frame, a_frame, b_frame, b_frame, b_frame), frames(a_frame, a_frame, *[b_frame] * 3)]
    )
    posterior = category_posteriors(logits, torch.tensor([2, 5]), torch.tensor(TOKEN_CATEGORY), 2)
    assert posterior[0].tolist() == pytest.approx([0.8, 0.2], abs=1e-6)
    assert posterior[1].tolist() == pytest.approx([1.6 / 5, 3.4 / 5], abs=1e-6)
    assert posterior.argmax(1).tolist() == [0, 1]


def test_posteriors_of_an_utterance_of_only_blanks_are_zero_not_nan():
    logits = frames([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])[None]
    posterior = category_posteriors(logits, torch.tensor([1]), torch.tensor(TOKEN_CATEGORY), 2)
    assert posterior.tolist()[0] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert posterior.argmax(1).tolist() == [0]


# ---- the module: every rule on real network outputs, the category head and its loss -------------------------

TWO_CATEGORIES = ["data.categories=[{name:male,tag:m},{name:female,tag:f}]"]


def module_of(tmp_path, *overrides: str) -> BroadClassModule:
    """The demo's model (the tests' size) from the composed config, with 2 categories."""
    cfg = compose_config(tmp_path, ["+experiment=demo", *TEST_MODEL, *TWO_CATEGORIES, *overrides])
    labels = LabelMap.from_config(OmegaConf.to_container(cfg.labels, resolve=True), cfg.data.categories)
    torch.manual_seed(0)
    return instantiate(cfg.model, _partial_=True)(labels=labels).eval()


def batch_of(module: BroadClassModule, categories: list[int]) -> dict:
    """Noise of 1 and 0.6 s with one reference token each (a vowel of the utterance's category)."""
    torch.manual_seed(1)
    lengths = [16_000, 9_600][: len(categories)]
    audio = torch.zeros(len(categories), max(lengths))
    mask = torch.zeros(len(categories), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        audio[i, :n] = 0.1 * torch.randn(n)
        mask[i, :n] = 1
    vowel = {c: module.labels.vocab[f"v_{tag}"] for c, tag in enumerate(c.tag for c in module.labels.categories)}
    return {
        "input_values": audio,
        "attention_mask": mask,
        "labels": torch.tensor([[vowel[c]] for c in categories]),
        "label_lengths": torch.ones(len(categories), dtype=torch.long),
        "categories": torch.tensor(categories),
        "ids": [f"u{i}" for i in range(len(categories))],
    }


def set_ctc_bias(module: BroadClassModule, bias: dict[str, float]) -> None:
    """A CTC head whose output is its bias alone: every frame has the same, known logits."""
    with torch.no_grad():
        module.net.lm_head.weight.zero_()
        module.net.lm_head.bias.zero_()
        for token, value in bias.items():
            module.net.lm_head.bias[module.labels.vocab[token]] = value


def test_a_model_that_decodes_nothing_scores_vote_as_category_0_and_posterior_by_the_mass(tmp_path):
    module = module_of(tmp_path)
    assert module.rules == ["vote", "posterior"]
    # Blank wins every frame; of the rest, the female vowel has the most mass.
    set_ctc_bias(module, {"<pad>": 8.0, "v_f": 2.0})
    with torch.no_grad():
        _, segments, scores = module.evaluate_batch(batch_of(module, [1, 1]))
    assert segments == [[], []]
    assert scores["vote"].argmax(1).tolist() == [0, 0] and scores["posterior"].argmax(1).tolist() == [1, 1]
    result = module.evaluation_result("val", 0, 0)
    assert result.metrics["val/rule/vote/accuracy"] == 0.0
    assert result.metrics["val/rule/posterior/accuracy"] == 1.0
    assert result.confusion == [[0, 0], [0, 2]]  # the primary rule (posterior)'s matrix


def test_a_model_that_decodes_a_token_votes_for_its_category(tmp_path):
    module = module_of(tmp_path, "model.primary_rule=vote")
    set_ctc_bias(module, {"p_f": 5.0})
    with torch.no_grad():
        _, segments, scores = module.evaluate_batch(batch_of(module, [1, 0]))
    # Every frame's argmax is p_f: one run, one decoded token per utterance.
    assert [[module.labels.tokens[t] for t, _, _ in s] for s in segments] == [["p_f"], ["p_f"]]
    assert scores["vote"].argmax(1).tolist() == [1, 1]
    assert module.evaluation_result("val", 0, 0).confusion == [[0, 1], [0, 1]]


def test_primary_rule_head_needs_a_positive_head_weight(tmp_path):
    with pytest.raises(ValueError, match="category_head_weight > 0"):
        module_of(tmp_path, "model.primary_rule=head", "model.category_head_weight=0")
    with pytest.raises(ValueError, match="primary_rule must be one of"):
        module_of(tmp_path, "model.primary_rule=majority")
    assert module_of(tmp_path).category_head is None


def test_under_primary_rule_head_the_heads_logits_decide(tmp_path):
    module = module_of(tmp_path, "model.primary_rule=head", "model.category_head_weight=0.3")
    assert module.rules == ["vote", "posterior", "head"]
    # The CTC head leans to male (vote and posterior say 0); the category head says female (1) whatever the audio.
    set_ctc_bias(module, {"v_m": 5.0})
    with torch.no_grad():
        module.category_head.weight.zero_()
        module.category_head.bias.copy_(torch.tensor([0.0, 3.0]))
        _, _, scores = module.evaluate_batch(batch_of(module, [1, 1]))
    assert scores["vote"].argmax(1).tolist() == [0, 0] and scores["posterior"].argmax(1).tolist() == [0, 0]
    assert scores["head"].argmax(1).tolist() == [1, 1]
    result = module.evaluation_result("val", 0, 0)
    assert result.rule == "head" and result.confusion == [[0, 0], [0, 2]]
    assert result.metrics["val/accuracy"] == 1.0 and result.metrics["val/rule/vote/accuracy"] == 0.0


def test_the_head_pools_only_the_real_frames(tmp_path):
    module = module_of(tmp_path, "model.primary_rule=head", "model.category_head_weight=0.3")
    batch = batch_of(module, [0, 1])
    with torch.no_grad():
        together = module(batch["input_values"], batch["attention_mask"])["category_logits"]
        short = batch["attention_mask"][1].sum()
        alone = module(batch["input_values"][1:, :short], batch["attention_mask"][1:, :short])["category_logits"]
    # The shorter utterance's head output is the same alone (no padding) and padded in a batch.
    assert torch.allclose(together[1], alone[0], atol=1e-5)


def test_the_loss_adds_the_head_weight_times_the_heads_cross_entropy(tmp_path):
    weighted = module_of(tmp_path, "model.primary_rule=head", "model.category_head_weight=0.3")
    plain = module_of(tmp_path)
    logits = torch.randn(2, 6, len(plain.labels.tokens))
    out = {"logits": logits, "output_lengths": torch.tensor([6, 4])}
    batch = batch_of(plain, [1, 0])
    loss, ctc = plain._loss(out, batch)
    assert loss == ctc  # no head: the CTC loss alone
    # log-softmax of (0, ln 3) is (ln 1/4, ln 3/4): CE = -ln(1/4) for target 0, -ln(3/4) for target 1.
    head_logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    loss, ctc_again = weighted._loss({**out, "category_logits": head_logits}, batch)
    assert ctc_again == pytest.approx(float(ctc))
    cross_entropy = (-math.log(3 / 4) - math.log(1 / 4)) / 2  # targets 1 and 0, mean over the batch
    assert float(loss) == pytest.approx(float(ctc) + 0.3 * cross_entropy, rel=1e-6)
    expected_ctc = torch.nn.functional.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1), batch["labels"], out["output_lengths"], batch["label_lengths"]
    )
    assert float(ctc) == pytest.approx(float(expected_ctc), rel=1e-6)


@pytest.mark.parametrize("zero_infinity", [True, False])
def test_labels_longer_than_the_frames_give_a_zero_or_an_infinite_loss_as_ctc_zero_infinity_says(
    tmp_path, zero_infinity
):
    module = module_of(tmp_path, f"model.ctc_zero_infinity={zero_infinity}")
    batch = batch_of(module, [1, 0])
    # The 0.6-s utterance has 29 frames; 40 alternating tokens need 79.
    alternating = [module.labels.vocab["v_m"], module.labels.vocab["p_m"]] * 20
    batch["labels"] = torch.tensor([alternating, alternating])
    batch["label_lengths"] = torch.tensor([1, 40])
    out = module(batch["input_values"], batch["attention_mask"])
    _, ctc = module._loss(out, batch)
    assert bool(torch.isfinite(ctc)) == zero_infinity
    assert module.net.config.ctc_zero_infinity is zero_infinity
