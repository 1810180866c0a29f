"""The search evaluator's options, errors and edge cases, pinned where mutation testing found them loose: the
fitness specs users type, the default logit scale, fewer than five classes, the class weights it reports, and
its refusals.

(A separate file from ``test_search.py``, which is edited alongside the evaluator's speed work.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zsclip.errors import ZsclipError
from zsclip.search.evaluate import (
    DEFAULT_LOGIT_SCALE,
    ClassPromptEvaluator,
    FitnessWeights,
    TemplateSetEvaluator,
    redundancy,
    template_blocks,
)


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def direct(x, y, w, scale):
    """top1, top5 (top-C under 5 classes), CE and R of class weights ``w``, in numpy."""
    s = x @ w.T
    true = s[np.arange(len(y)), y]
    rank = (s > true[:, None]).sum(1)
    z = s * scale
    ce = float((np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - true * scale).mean())
    r = float(np.linalg.norm(np.triu(w @ w.T - np.eye(len(w)))))
    return (rank == 0).mean() * 100, (rank < min(5, len(w))).mean() * 100, ce, r


@pytest.mark.parametrize("spec, weights", [
    ("proapo", FitnessWeights(0.1, 0.1, 0.05, 10.0)), (" default ", FitnessWeights()),
    ("blackbox", FitnessWeights(1.0, 0.0, 0.0, 0.0)), ("black-box", FitnessWeights(1.0, 0.0, 0.0, 0.0)),
    ("top1", FitnessWeights(1.0, 0.0, 0.0, 0.0)),
    ("top1=2, top5=0.5,r=1,ce=3", FitnessWeights(2.0, 0.5, 1.0, 3.0)),
    ("w1=1,w5=2,beta=3,gamma=4", FitnessWeights(1.0, 2.0, 3.0, 4.0)),
    ("ce=7", FitnessWeights(0.0, 0.0, 0.0, 7.0)),
])
def test_fitness_specs(spec, weights):
    assert FitnessWeights.parse(spec) == weights


@pytest.mark.parametrize("spec, message", [
    ("top1=x", "--fitness 'top1=x': 'x' is not a number"),
    ("top1=1,alpha=2", "--fitness 'top1=1,alpha=2': expected proapo, blackbox or top1=W,top5=W,r=W,ce=W "
                       "(also w1, w5, beta, gamma)"),
    ("top1=1,ce", "expected proapo, blackbox"),
])
def test_bad_fitness_specs_say_what_is_expected(spec, message):
    with pytest.raises(ZsclipError) as info:
        FitnessWeights.parse(spec)
    assert message in str(info.value)


def test_fitness_combines_its_terms_and_ignores_r_at_weight_zero():
    w = FitnessWeights(1.0, 2.0, 3.0, 4.0)
    assert w.combine(10.0, 20.0, 0.5, 0.25) == pytest.approx(10 + 40 + 1.5 - 1.0)
    assert FitnessWeights(1.0, 0.0, 0.0, 0.0).combine(10.0, 20.0, float("nan"), 0.25) == 10.0
    assert w.as_dict() == {"top1": 1.0, "top5": 2.0, "r": 3.0, "ce": 4.0}


def test_redundancy_is_the_upper_triangle_norm_either_way_round():
    rng = np.random.default_rng(0)
    for c, d in ((4, 9), (9, 4), (5, 5)):
        t = unit(rng.standard_normal((c, d)))
        want = float(np.linalg.norm(np.triu(t @ t.T - np.eye(c))))
        assert redundancy(torch.from_numpy(t)) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert redundancy(torch.eye(3)) == 0.0


def test_template_sets_under_five_classes_with_the_default_scale():
    """Three classes: top-5 is top-3 (always 100); no logit scale given means CLIP's 100."""
    rng = np.random.default_rng(1)
    c, d, n = 3, 8, 12
    x, y = unit(rng.standard_normal((n, d))), rng.integers(0, c, n)
    blocks = {f"t{i}": unit(rng.standard_normal((c, d))) for i in range(3)}
    ev = TemplateSetEvaluator(x, y, c, FitnessWeights(1.0, 1.0, 1.0, 1.0))
    for name, block in blocks.items():
        ev.add(name, block)
    ev.add("t0", blocks["t1"])  # a template already there is kept as it was
    assert "t0" in ev and "t9" not in ev
    got = ev.evaluate(["t0", "t2"])
    w = unit(blocks["t0"] + blocks["t2"])
    top1, top5, ce, r = direct(x, y, w, DEFAULT_LOGIT_SCALE)
    assert DEFAULT_LOGIT_SCALE == 100.0
    assert (got.top1, got.top5) == pytest.approx((top1, top5)) and got.top5 == 100.0
    assert (got.ce, got.r) == pytest.approx((ce, r), rel=1e-5)
    assert got.fitness == pytest.approx(top1 + top5 + r - ce, rel=1e-5)
    assert got.row() == {"top1": got.top1, "top5": got.top5, "ce": got.ce, "r": got.r, "fitness": got.fitness}
    np.testing.assert_allclose(ev.class_weights(["t2", "t0"]).numpy(), w, atol=1e-6)
    assert ev.evaluations == 1


def test_many_templates_span_several_cached_chunks():
    rng = np.random.default_rng(2)
    c, d, n = 6, 8, 10
    x, y = unit(rng.standard_normal((n, d))), rng.integers(0, c, n)
    blocks = {f"t{i}": unit(rng.standard_normal((c, d))) for i in range(TemplateSetEvaluator.CHUNK + 3)}
    ev = TemplateSetEvaluator(x, y, c, FitnessWeights(), logit_scale=30.0)
    for name, block in blocks.items():
        ev.add(name, block)
    chosen = ["t1", f"t{TemplateSetEvaluator.CHUNK + 1}", f"t{TemplateSetEvaluator.CHUNK + 2}"]
    got = ev.evaluate(chosen)
    top1, top5, ce, r = direct(x, y, unit(sum(blocks[t] for t in chosen)), 30.0)
    assert (got.top1, got.top5) == pytest.approx((top1, top5))
    assert (got.ce, got.r) == pytest.approx((ce, r), rel=1e-5)


def test_evaluators_refuse_what_they_cannot_score():
    rng = np.random.default_rng(3)
    x, y = unit(rng.standard_normal((4, 5))), np.array([0, 1, 0, 1])
    with pytest.raises(ZsclipError, match="at least one fitting image"):
        TemplateSetEvaluator(np.zeros((0, 5)), np.zeros(0), 2)
    ev = TemplateSetEvaluator(x, y, 2)
    with pytest.raises(ZsclipError, match=r"template 'a \{\}': block of shape \(3, 5\), expected \(2, 5\)"):
        ev.add("a {}", unit(rng.standard_normal((3, 5))))
    with pytest.raises(ZsclipError, match="cannot evaluate an empty template set"):
        ev.evaluate([])
    items = [rng.standard_normal((2, 5)).astype(np.float32) for _ in range(2)]
    cp = ClassPromptEvaluator(x, y, items)
    with pytest.raises(ZsclipError, match="class 1 would have no prompt"):
        cp.set_base([[0], []])


def test_class_prompt_base_scores_weights_and_commits_without_r():
    rng = np.random.default_rng(4)
    c, d, n = 4, 6, 16
    x, y = unit(rng.standard_normal((n, d))), rng.integers(0, c, n)
    items = [rng.standard_normal((3, d)).astype(np.float32) for _ in range(c)]
    ev = ClassPromptEvaluator(x, y, items, FitnessWeights.parse("blackbox"), logit_scale=20.0)
    base = ev.set_base([[0, 0, 1], [2], [0, 2], [1]])
    assert ev.base == [(0, 1), (2,), (0, 2), (1,)] and math.isnan(base.r)
    w = unit(np.stack([items[k][list(ids)].sum(0) for k, ids in enumerate(ev.base)]))
    np.testing.assert_allclose(ev.class_weights().numpy(), w, atol=1e-6)
    np.testing.assert_allclose(ev.base_scores(), 20.0 * (x @ w.T), atol=1e-5)
    assert base.top1 == pytest.approx(direct(x, y, w, 20.0)[0]) and base.fitness == base.top1
    ev.commit({})
    assert ev.base == [(0, 1), (2,), (0, 2), (1,)]
    ev.commit({1: [0, 1]})
    w[1] = unit(items[1][[0, 1]].sum(0))
    np.testing.assert_allclose(ev.class_weights().numpy(), w, atol=1e-6)
    assert ev.evaluate({}).top1 == pytest.approx(direct(x, y, w, 20.0)[0])
    assert math.isnan(ev.evaluate({2: [1]}).r)


def test_template_blocks_fill_every_template_with_every_class_once():
    class Cache:
        def __init__(self):
            self.asked = []

        def encode(self, texts):
            self.asked += list(texts)
            return np.arange(len(texts), dtype=np.float32)[:, None] * np.ones((1, 2), dtype=np.float32)

    cache = Cache()
    blocks = template_blocks(["a {}.", "b {}.", "a {}."], ["x", "y"], cache)
    assert cache.asked == ["a x.", "a y.", "b x.", "b y."]
    assert list(blocks) == ["a {}.", "b {}."]
    np.testing.assert_array_equal(blocks["b {}."], [[2, 2], [3, 3]])


def test_redundancy_of_more_classes_and_dimensions_than_one_block():
    """Past ``R_BLOCK`` columns R is summed block by block (the off-diagonal blocks twice): still the full norm."""
    from zsclip.search.evaluate import R_BLOCK

    rng = np.random.default_rng(1)
    for c, d in ((R_BLOCK + 70, R_BLOCK + 20), (R_BLOCK + 20, R_BLOCK + 70)):
        t = unit(rng.standard_normal((c, d)))
        t64 = t.astype(np.float64)
        want = float(np.linalg.norm(np.triu(t64 @ t64.T - np.eye(c))))
        assert redundancy(torch.from_numpy(t)) == pytest.approx(want, rel=1e-5)
