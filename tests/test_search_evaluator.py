"""The fast prompt-search evaluator against a direct float64 computation, on the candidates searches really
evaluate (ProAPO's children of a parent, random sets, singletons added one at a time), with exact ties; and
its exactness guarantees: a candidate's terms do not depend on the batch it is in, on the path its sum took
(built from another candidate, int64 sums, Gram rows computed on demand) or on when templates were added."""

from __future__ import annotations

import math

import numpy as np
import pytest

import zsclip.search.evaluate as evaluate_module
from zsclip.search.evaluate import ClassPromptEvaluator, FitnessWeights, TemplateSetEvaluator
from zsclip.search.proapo import stage1_children

WEIGHTS = (FitnessWeights(), FitnessWeights(1.0, 0.5, 0.0, 3.0), FitnessWeights.parse("blackbox"))


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def direct(x, y, w, scale, weights):
    """(top1, top5, ce, r, fitness) from class weights ``w`` in float64 numpy (ties: only strictly higher
    classes count against the true one)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    s = x @ w.T
    true = s[np.arange(len(y)), y]
    rank = (s > true[:, None]).sum(1)
    z = s * scale
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ce = float((lse - true * scale).mean())
    r = float(np.linalg.norm(np.triu(w @ w.T - np.eye(len(w)), 1)))
    top1 = np.count_nonzero(rank == 0) * 100.0 / len(y)
    top5 = np.count_nonzero(rank < min(5, len(w))) * 100.0 / len(y)
    return top1, top5, ce, r, weights.combine(top1, top5, r if weights.r else math.nan, ce)


def world(seed=0, c=40, d=24, n=80, t=16, duplicate_classes=False):
    """Features, labels and per-template blocks (a class direction, a template direction, noise); with
    ``duplicate_classes`` classes 1 and 2 get the same embeddings, so their cosines tie exactly."""
    rng = np.random.default_rng(seed)
    classes = unit(rng.standard_normal((c, d)))
    styles = unit(rng.standard_normal((t, d)))
    y = rng.integers(0, c, n)
    if duplicate_classes:
        y[:n // 4] = 1
        y[n // 4:n // 2] = 2
    x = unit(classes[y] + 0.6 * rng.standard_normal((n, d)).astype(np.float32))
    blocks = {f"t{i}": unit(classes + 0.4 * styles[i] + 0.3 * rng.standard_normal((c, d))) for i in range(t)}
    if duplicate_classes:
        for b in blocks.values():
            b[2] = b[1]
    return x, y, blocks


def evaluator(x, y, blocks, weights, **kwargs) -> TemplateSetEvaluator:
    ev = TemplateSetEvaluator(x, y, next(iter(blocks.values())).shape[0], weights, logit_scale=50.0, **kwargs)
    for name, block in blocks.items():
        ev.add(name, block)
    return ev


def check_direct(ev, x, y, blocks, sets, weights):
    for chosen, got in zip(sets, ev.evaluate_many(sets)):
        want = direct(x, y, unit(sum(blocks[t].astype(np.float64) for t in chosen)), 50.0, weights)
        assert [got.top1, got.top5] == list(want[:2]), chosen
        if weights.ce:
            assert got.ce == pytest.approx(want[2], rel=1e-5, abs=1e-6)
        else:  # a fitness without CE (hill-climbing's top-1) skips the log-sum-exp pass
            assert math.isnan(got.ce)
        if weights.r:
            assert got.r == pytest.approx(want[3], rel=1e-5)
        else:
            assert math.isnan(got.r)
        assert got.fitness == pytest.approx(want[4], rel=1e-5, abs=1e-5)


def rows(terms):
    """Terms as comparable tuples (NaN R compares equal to NaN)."""
    return [tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in t.row().values()) for t in terms]


def proapo_candidates(names, seed=3):
    """What a ProAPO stage-1 epoch evaluates: 4 parents' add/remove/replace children, mutations, crossovers."""
    rng = np.random.default_rng(seed)
    parents = [sorted(rng.choice(len(names), size=k, replace=False).tolist()) for k in (2, 3, 3, 5)]
    children = stage1_children(parents, len(names), 2, rng)
    seen, out = set(), []
    for _, ids in children:
        if tuple(ids) not in seen:
            seen.add(tuple(ids))
            out.append([names[i] for i in ids])
    return out


@pytest.mark.parametrize("weights", WEIGHTS)
def test_random_and_proapo_sets_match_a_direct_float64_computation(weights):
    x, y, blocks = world()
    ev = evaluator(x, y, blocks, weights)
    names = list(blocks)
    rng = np.random.default_rng(1)
    random_sets = [[names[i] for i in rng.choice(len(names), size=int(rng.integers(1, 9)), replace=False)]
                   for _ in range(20)]
    children = proapo_candidates(names)
    assert len(children) > 60
    check_direct(ev, x, y, blocks, random_sets + children, weights)


def test_exact_ties_between_classes_and_duplicate_templates():
    x, y, blocks = world(duplicate_classes=True)
    blocks["t0 again"] = blocks["t0"].copy()
    weights = FitnessWeights()
    ev = evaluator(x, y, blocks, weights)
    sets = [["t0"], ["t1", "t3"], ["t0", "t2", "t5", "t7"]]
    check_direct(ev, x, y, blocks, sets, weights)
    # classes 1 and 2 tie on every image: an image of either is top-1 when nothing is strictly above
    w = unit(blocks["t1"] + blocks["t3"])
    s = x @ w.T
    true = s[np.arange(len(y)), y]
    tied = np.count_nonzero((s >= true[:, None]).sum(1) == 1) * 100.0 / len(y)  # ties counted against
    one = ev.evaluate(["t1", "t3"])
    assert one.top1 == direct(x, y, w, 50.0, weights)[0] > tied
    # a template twice is the template once: the sums double exactly, the norms too
    assert rows([ev.evaluate(["t0", "t0 again"])]) == rows([ev.evaluate(["t0"])])


@pytest.mark.parametrize("weights", WEIGHTS[:2])
def test_a_candidates_terms_do_not_depend_on_its_batch_or_order(weights):
    x, y, blocks = world(seed=2)
    ev = evaluator(x, y, blocks, weights)
    children = proapo_candidates(list(blocks), seed=4)
    batch = ev.evaluate_many(children)
    alone = [ev.evaluate(c) for c in children]
    backwards = ev.evaluate_many(children[::-1])[::-1]
    assert rows(batch) == rows(alone) == rows(backwards)
    assert rows([ev.evaluate(["t3", "t1", "t3"])]) == rows([ev.evaluate(["t1", "t3"])])
    assert ev.evaluations == 3 * len(children) + 2


def test_int64_sums_and_gram_rows_on_demand_give_the_same_bits(monkeypatch):
    x, y, blocks = world(seed=5)
    weights = FitnessWeights()
    children = proapo_candidates(list(blocks), seed=6)
    cached = rows(evaluator(x, y, blocks, weights).evaluate_many(children))
    no_gram = evaluator(x, y, blocks, weights, gram_bytes=0)
    assert rows(no_gram.evaluate_many(children)) == cached
    monkeypatch.setattr(evaluate_module, "NARROW_LIMIT", 0)  # every sum in int64, from scratch
    assert rows(evaluator(x, y, blocks, weights).evaluate_many(children)) == cached


def test_templates_added_between_evaluations_give_the_terms_of_a_full_cache():
    """Hill-climbing adds a template or two per step; the Gram cache grows, and is dropped when it would exceed
    its bound (here past 9 templates); nothing already scored moves."""
    x, y, blocks = world(seed=7)
    weights = FitnessWeights()
    full = evaluator(x, y, blocks, weights)
    names = list(blocks)
    c = len(blocks["t0"])
    growing = TemplateSetEvaluator(x, y, c, weights, logit_scale=50.0, gram_bytes=9 * 10 // 2 * c * 4)
    for name in names[:3]:
        growing.add(name, blocks[name])
    first = growing.evaluate(names[:2])
    for k, name in enumerate(names[3:], start=3):
        growing.add(name, blocks[name])
        assert rows([growing.evaluate([name])]) == rows([full.evaluate([name])])
        assert rows([growing.evaluate(names[k - 2:k + 1])]) == rows([full.evaluate(names[k - 2:k + 1])])
    assert rows([growing.evaluate(names[:2])]) == rows([first]) == rows([full.evaluate(names[:2])])
    assert growing._gram_done < 0 < full._gram_done  # the bound was reached and the cache dropped


def test_class_weights_and_errors():
    x, y, blocks = world(seed=8)
    ev = evaluator(x, y, blocks, FitnessWeights())
    w = ev.class_weights(["t2", "t4"]).numpy()
    np.testing.assert_allclose(w, unit(blocks["t2"] + blocks["t4"]), atol=1e-6)
    assert ev.evaluate_many([]) == []
    with pytest.raises(Exception, match="empty template set"):
        ev.evaluate([])


def test_stage2_edit_sequences_match_a_full_evaluation_of_the_edited_assignment():
    """ProAPO stage 2: edits of a few classes recompute only their cosines; after commits the base still
    scores what a fresh evaluation of the same assignment scores."""
    rng = np.random.default_rng(9)
    c, d, n = 30, 16, 60
    classes = unit(rng.standard_normal((c, d)))
    y = rng.integers(0, c, n)
    x = unit(classes[y] + rng.standard_normal((n, d)).astype(np.float32))
    items = [unit(classes[k] + 0.5 * rng.standard_normal((5, d))) for k in range(c)]
    items[4] = items[3].copy()  # two classes with the same items: exact ties
    weights = FitnessWeights()
    ev = ClassPromptEvaluator(x, y, items, weights, 50.0)
    top1_only = ClassPromptEvaluator(x, y, items, FitnessWeights.parse("blackbox"), 50.0)  # no log-sum-exp pass
    assignment = [[0, 1] for _ in range(c)]
    ev.set_base(assignment)
    top1_only.set_base(assignment)
    for step in range(6):
        group = rng.choice(c, size=4, replace=False)
        edit = {int(k): sorted(rng.choice(5, size=int(rng.integers(1, 6)), replace=False).tolist()) for k in group}
        after = [edit.get(k, assignment[k]) for k in range(c)]
        w = unit(np.stack([items[k][after[k]].astype(np.float64).sum(0) for k in range(c)]))
        got, want = ev.evaluate(edit), direct(x, y, w, 50.0, weights)
        assert [got.top1, got.top5] == list(want[:2])
        assert [got.ce, got.r, got.fitness] == pytest.approx(want[2:], rel=1e-5)
        fast = top1_only.evaluate(edit)
        assert [fast.top1, fast.top5, fast.fitness] == [want[0], want[1], want[0]] and math.isnan(fast.ce)
        if step % 2 == 0:
            ev.commit(edit)
            top1_only.commit(edit)
            assignment = after
    fresh = ClassPromptEvaluator(x, y, items, weights, 50.0).set_base(assignment)
    again = ev.evaluate({})
    assert [again.top1, again.top5] == [fresh.top1, fresh.top5]
    assert [again.ce, again.r] == pytest.approx([fresh.ce, fresh.r], rel=1e-6)
