"""ReferenceChrF / MixedReward: the model-free reward against the prompt's reference translation."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppolab.metrics import sentence_chrf
from ppolab.reward.reference import MixedReward, ReferenceChrF

REFS = {"p1": "مرحبا بالعالم", "p2": "القطة على الحصيرة", "p3": "نحن نحب الترجمة"}
words = st.sampled_from(["مرحبا", "بالعالم", "القطة", "على", "الحصيرة", "نحن", "hello", "x"])
texts = st.lists(words, min_size=0, max_size=6).map(" ".join)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(REFS)), texts), min_size=1, max_size=6),
       st.floats(-50, 50), st.floats(0.5, 30))
def test_scores_are_normalised_sentence_chrf_row_by_row(rows, center, scale):
    prompts, responses = [p for p, _ in rows], [r for _, r in rows]
    got = ReferenceChrF(REFS, center, scale)(prompts, responses)
    assert got.shape == (len(rows),) and got.dtype == torch.float32
    for i, (p, r) in enumerate(rows):  # one sentence at a time: no batch effect
        expect = (sentence_chrf([r.strip()], [REFS[p]])[0] - center) / scale
        assert got[i].item() == pytest.approx(expect, abs=1e-4)


def test_fit_gives_mean_zero_std_one_on_its_sample():
    prompts = ["p1", "p2", "p3", "p1"]
    responses = ["مرحبا", "القطة على", "hello", "مرحبا بالعالم"]
    r = ReferenceChrF(REFS).fit(prompts, responses)
    s = r(prompts, responses).double()
    assert s.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert s.std().item() == pytest.approx(1.0, abs=1e-4)
    # a perfect answer outranks a wrong-language one
    assert r(["p1"], [REFS["p1"]]).item() > r(["p1"], ["hello world"]).item()


def test_unknown_prompt_and_bad_input_are_errors():
    r = ReferenceChrF(REFS)
    with pytest.raises(KeyError, match=r"prompts\[1\]"):
        r(["p1", "nope"], ["a", "b"])
    with pytest.raises(ValueError, match="2 prompts but 1"):
        r(["p1", "p2"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        ReferenceChrF({})
    with pytest.raises(ValueError, match="scale"):
        ReferenceChrF(REFS, scale=0)
    with pytest.raises(ValueError, match="at least 2"):
        r.fit(["p1"], ["a"])


def test_mixed_reward_is_the_weighted_sum_and_keeps_its_parts():
    a = lambda p, r: torch.tensor([1.0, 2.0])  # noqa: E731
    b = lambda p, r: [10.0, -10.0]  # noqa: E731
    mix = MixedReward({"a": (a, 0.5), "b": (b, 0.25)})
    out = mix(["x", "y"], ["u", "v"])
    assert torch.allclose(out, torch.tensor([0.5 + 2.5, 1.0 - 2.5]))
    assert torch.allclose(mix.last_parts["b"], torch.tensor([2.5, -2.5]))
    with pytest.raises(ValueError):
        MixedReward({})
