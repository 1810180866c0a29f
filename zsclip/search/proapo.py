"""ProAPO (Qu et al., CVPR 2025; METHODS.md §5): evolutionary search over template sets, then per-class prompts.

Stage 1 searches sets of templates from a library (CLIP's 80 ImageNet templates × the dataset's type words),
screened against "a photo of a {}.": from 4 random single templates, each epoch takes the 4 best sets of the
whole archive as parents and evaluates, per parent, 8 "add one", 8 "remove one" (sets of more than 2) and 8
"replace one" children, plus 8 random sets of size 2 + epoch and 16 crossovers of the parents — 120 at most,
fewer after the archive-wide dedupe (a set is never evaluated twice). The stage-1 result is the best of the
archive's top 4 on validation.

Stage 2 keeps that template set and searches per-class prompt sets. A class's items are its synonyms and
"synonym + description" pairs (CuPL-style descriptions, the class name replaced by the synonym); an item's
texts are the set's templates filled with the synonym, each followed by the description. Items are screened
per class, the initial point is the best of {all items, class names only, 16 random per-class subsets, 16
random subsets of one shared size}; then classes are grouped (k-means on class embeddings with k chosen by
silhouette, per-class importance, confusion groups by label) and the first 4 groups are searched in turn,
3 outer × 4 inner epochs each (per parent 8 add / 8 remove / 8 replace, 4 mutations, 16 crossovers), only
the group's classes recomputed; each group's best is committed. The stage-2 result is the committed state
(initial point or after a group) with the best validation top-1.

Unlike the authors' code, nothing is chosen on test, every run is independent of earlier ones, groups are
indexed by class label, and importance texts are built like every other text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ZsclipError
from ..prompts import format_template
from .evaluate import ClassPromptEvaluator, TemplateSetEvaluator
from .job import StepContext, new_rng_state, rng_from

logger = logging.getLogger(__name__)

BASELINE = "a photo of a {}."
PARENTS = 4
PER_PARENT = 8
MUTATIONS = 8
CROSSOVERS = 16
STAGE2_MUTATIONS = 4
GROUPS_SEARCHED = 4
OUTER, INNER = 3, 4
INITIAL_SUBSETS = 16


def template_library(type_words: Sequence[str], base: Sequence[str] | None = None) -> list[str]:
    """Stage 1's template library: CLIP's 80 ImageNet templates (lowercased) × the dataset's type words.

    Each template ``t`` and word ``w`` give ``t``; ``t`` with every "." replaced by ", a type of {w}.";
    ``t`` with " {}" replaced by " {w}: {}"; and, where ``t`` contains "photo", "photo"→``w`` and
    "photo"→"``w`` photo". Duplicates are dropped, first occurrence kept.
    """
    from ..prompts import load_templates

    base = [t.lower() for t in (base if base is not None else load_templates("openai-imagenet"))]
    out: list[str] = []
    for t in base:
        out.append(t)
        for w in type_words:
            out.append(t.replace(".", f", a type of {w}."))
            out.append(t.replace(" {}", f" {w}: {{}}"))
            if "photo" in t:
                out.append(t.replace("photo", w))
                out.append(t.replace("photo", f"{w} photo"))
    return list(dict.fromkeys(out))


def screening_threshold(num_classes: int) -> float:
    """Top-1 points a template (or item) may lose against the baseline before it is dropped: 200/C + 0.1."""
    return 200.0 / num_classes + 0.1


def _key(items: Sequence[int]) -> str:
    return ",".join(map(str, sorted(set(items))))


def _ranked(archive: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    return sorted(archive, key=lambda entry: -entry[1])  # stable: ties keep archive order


def crossover(parents: Sequence[Sequence[int]], rng: np.random.Generator) -> list[int]:
    """The items every parent shares, plus k ~ U{1..|others|} of the others drawn without replacement with
    probability proportional to how many parents hold them."""
    common = set.intersection(*(set(p) for p in parents))
    counts: dict[int, int] = {}
    for p in parents:
        for t in p:
            if t not in common:
                counts[t] = counts.get(t, 0) + 1
    others = sorted(counts)
    if not others:
        return sorted(common)
    k = int(rng.integers(1, len(others) + 1))
    weights = np.array([counts[t] for t in others], dtype=float)
    picked = rng.choice(others, size=k, replace=False, p=weights / weights.sum())
    return sorted(common | {int(t) for t in picked})


def stage1_children(parents: Sequence[Sequence[int]], library_size: int, epoch: int,
                    rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    """(operator, set) candidates of one epoch: per parent 8 add / 8 remove (if > 2) / 8 replace, 8
    mutations of size 2 + epoch, 16 crossovers (before dedupe)."""
    out: list[tuple[str, list[int]]] = []
    universe = np.arange(library_size)
    for parent in parents:
        pset = set(parent)
        outside = np.setdiff1d(universe, parent)
        for _ in range(PER_PARENT):
            if len(outside):
                out.append(("add", sorted(pset | {int(rng.choice(outside))})))
        for _ in range(PER_PARENT):
            if len(pset) > 2:
                drop = int(rng.choice(sorted(pset)))
                out.append(("remove", sorted(pset - {drop})))
        for _ in range(PER_PARENT):
            if len(outside):
                drop = int(rng.choice(sorted(pset)))
                out.append(("replace", sorted((pset - {drop}) | {int(rng.choice(outside))})))
    size = min(2 + epoch, library_size)
    for _ in range(MUTATIONS):
        out.append(("mutation", sorted(int(t) for t in rng.choice(library_size, size=size, replace=False))))
    for _ in range(CROSSOVERS):
        out.append(("crossover", crossover(parents, rng)))
    return out


class ProAPO:
    """Both ProAPO stages as one step machine (see the module docstring)."""

    kind = "proapo"

    def __init__(self, library: Sequence[str], classnames: Sequence[str], evaluator: TemplateSetEvaluator,
                 blocks_for: Callable[[Sequence[str]], Mapping[str, np.ndarray]],
                 validate_templates: Callable[[Sequence[str]], float], *, epochs: int = 8,
                 max_prompts: int | None = None, seed: int = 1, stage2: bool = True,
                 stage2_inputs: Callable[[list[str], StepContext], tuple[list[list[np.ndarray]], list[list[Any]]]]
                 | None = None, make_stage2_evaluator: Callable[[list[np.ndarray]], ClassPromptEvaluator] | None = None,
                 validate_prompts: Callable[[list[list[int]], list[list[np.ndarray]]], float] | None = None) -> None:
        if not library:
            raise ZsclipError("ProAPO's template library is empty: give the dataset card type_words or --templates")
        self.library = list(library)
        self.classnames = list(classnames)
        self.evaluator = evaluator
        self.blocks_for = blocks_for
        self.validate_templates = validate_templates
        self.epochs = epochs
        self.max_prompts = max_prompts
        self.seed = seed
        self.stage2 = stage2
        self.stage2_inputs = stage2_inputs
        self.make_stage2_evaluator = make_stage2_evaluator
        self.validate_prompts = validate_prompts
        self._s2: ClassPromptEvaluator | None = None
        self._s2_labels: list[list[Any]] = []
        self._s2_replayed: int = -1

    # -- bookkeeping ----------------------------------------------------------------------------------------

    def initial_state(self) -> dict[str, Any]:
        return {"phase": "screen", "rng": new_rng_state(self.seed), "kept": [], "archive": [], "epoch": 0,
                "stage1": None, "s2": None}

    def total_steps(self) -> int:
        return 2 + self.epochs + (4 + GROUPS_SEARCHED * OUTER * INNER if self.stage2 else 0)

    def finished(self, state: dict[str, Any]) -> bool:
        return state["phase"] == "done"

    def best_fitness(self, state: dict[str, Any]) -> float | None:
        s2 = state.get("s2")
        if s2 and s2.get("base_fitness") is not None:
            return s2["base_fitness"]
        return max((e[1] for e in state["archive"]), default=None)

    def _templates(self, ids: Sequence[int], kept: Sequence[int]) -> list[str]:
        return [self.library[kept[i]] for i in ids]

    def _ensure_blocks(self, templates: Sequence[str]) -> None:
        missing = [t for t in templates if t not in self.evaluator]
        if missing:
            for t, block in self.blocks_for(missing).items():
                self.evaluator.add(t, block)

    # -- the step machine ---------------------------------------------------------------------------------

    def step(self, state: dict[str, Any], ctx: StepContext) -> list[dict[str, Any]]:
        phase = state["phase"]
        if phase == "screen":
            return self._screen(state, ctx)
        if phase == "init":
            return self._init(state, ctx)
        if phase == "epochs":
            return self._epoch(state, ctx)
        return self._stage2_step(state, ctx)

    def _screen(self, state: dict[str, Any], ctx: StepContext) -> list[dict[str, Any]]:
        candidates = list(dict.fromkeys([BASELINE, *self.library]))
        ctx.reserve(len(candidates))
        self._ensure_blocks(candidates)
        scores = dict(zip(candidates, self.evaluator.evaluate_many([[t] for t in candidates])))
        limit = scores[BASELINE].top1 - screening_threshold(len(self.classnames))
        kept = [i for i, t in enumerate(self.library) if scores[t].top1 > limit]
        if self.max_prompts is not None:
            kept = sorted(sorted(kept, key=lambda i: -scores[self.library[i]].fitness)[: self.max_prompts])
        if not kept:
            raise ZsclipError("screening dropped every template of the library; check the type words or the model")
        state["kept"] = kept
        state["baseline"] = scores[BASELINE].row()
        state["phase"] = "init"
        return [{"stage": "screen", "operator": "kept" if t in {self.library[i] for i in kept} else "dropped",
                 "candidate": t, **terms.row()} for t, terms in scores.items()]

    def _evaluate_sets(self, state: dict[str, Any], ctx: StepContext, candidates: Sequence[tuple[str, list[int]]],
                       stage: str) -> list[dict[str, Any]]:
        seen = {_key(e[0]) for e in state["archive"]}
        fresh: list[tuple[str, list[int]]] = []
        for op, ids in candidates:
            if ids and _key(ids) not in seen:
                seen.add(_key(ids))
                fresh.append((op, ids))
        ctx.reserve(len(fresh))
        self._ensure_blocks(self._templates(sorted({i for _, ids in fresh for i in ids}), state["kept"]))
        rows = []
        batch = self.evaluator.evaluate_many([self._templates(ids, state["kept"]) for _, ids in fresh])
        for (op, ids), terms in zip(fresh, batch):
            templates = self._templates(ids, state["kept"])
            state["archive"].append([ids, terms.fitness, terms.top1])
            rows.append({"stage": stage, "operator": op, "candidate": json.dumps(templates), **terms.row()})
        return rows

    def _init(self, state: dict[str, Any], ctx: StepContext) -> list[dict[str, Any]]:
        rng = rng_from(state["rng"])
        picks = rng.choice(len(state["kept"]), size=min(PARENTS, len(state["kept"])), replace=False)
        state["rng"] = rng.bit_generator.state
        state["phase"] = "epochs" if self.epochs else "stage1-done"
        rows = self._evaluate_sets(state, ctx, [("initial", [int(i)]) for i in picks], "stage 1")
        if not self.epochs:
            self._end_stage1(state)
        return rows

    def _epoch(self, state: dict[str, Any], ctx: StepContext) -> list[dict[str, Any]]:
        rng = rng_from(state["rng"])
        parents = [list(e[0]) for e in _ranked(state["archive"])[:PARENTS]]
        children = stage1_children(parents, len(state["kept"]), state["epoch"], rng)
        rows = self._evaluate_sets(state, ctx, children, f"stage 1 epoch {state['epoch']}")
        state["rng"] = rng.bit_generator.state
        state["epoch"] += 1
        if state["epoch"] >= self.epochs:
            self._end_stage1(state)
        return rows

    def _end_stage1(self, state: dict[str, Any]) -> None:
        finalists = [list(e[0]) for e in _ranked(state["archive"])[:PARENTS]]
        val = [self.validate_templates(self._templates(ids, state["kept"])) for ids in finalists]
        best = int(np.argmax(val))  # ties: the better training fitness
        state["stage1"] = {"templates": self._templates(finalists[best], state["kept"]),
                           "finalists": [{"templates": self._templates(ids, state["kept"]), "validation_top1": v}
                                         for ids, v in zip(finalists, val)],
                           "training_fitness": _ranked(state["archive"])[best][1]}
        state["phase"] = "s2-items" if self.stage2 else "done"

    # -- stage 2 ------------------------------------------------------------------------------------------

    def _stage2_evaluator(self, state: dict[str, Any], ctx: StepContext) -> ClassPromptEvaluator:
        """The stage-2 evaluator with the committed base rebuilt exactly as it was made (replayed commits)."""
        s2 = state["s2"]
        if self._s2 is None:
            items, labels = self.stage2_inputs(state["stage1"]["templates"], ctx)
            self._s2_labels = labels
            self._s2 = self.make_stage2_evaluator([np.stack(per) for per in items])
            self._s2_replayed = -1
        if s2.get("initial") is not None and self._s2_replayed < 0:
            self._s2.set_base(s2["initial"])
            self._s2_replayed = 0
        while s2.get("initial") is not None and self._s2_replayed < len(s2["commits"]):
            edit = s2["commits"][self._s2_replayed]
            self._s2.commit({int(c): items for c, items in edit.items()})
            self._s2_replayed += 1
        return self._s2

    def _full_key(self, base: Sequence[Sequence[int]], edit: Mapping[int, Sequence[int]]) -> str:
        h = hashlib.sha1()
        for c, items in enumerate(base):
            h.update(_key(edit.get(c, items)).encode() + b";")
        return h.hexdigest()

    def _stage2_step(self, state: dict[str, Any], ctx: StepContext) -> list[dict[str, Any]]:
        phase = state["phase"]
        if phase == "s2-items":
            _, labels = self.stage2_inputs(state["stage1"]["templates"], ctx)
            state["s2"] = {"items_per_class": [len(x) for x in labels], "kept": None, "initial": None,
                           "commits": [], "snapshots": [], "groups": [], "seen": [], "group": 0, "outer": 0,
                           "inner": 0, "archive": [], "base_fitness": None}
            state["phase"] = "s2-screen"
            return []
        ev = self._stage2_evaluator(state, ctx)
        s2 = state["s2"]
        n_classes = len(self.classnames)
        if phase == "s2-screen":
            base = [[0] for _ in range(n_classes)]
            todo = [(c, i) for c in range(n_classes) for i in range(1, s2["items_per_class"][c])]
            ctx.reserve(1 + len(todo))
            base_terms = ev.set_base(base)
            limit = base_terms.top1 - screening_threshold(n_classes)
            kept = [[0] for _ in range(n_classes)]
            rows = []
            for c, i in todo:
                terms = ev.evaluate({c: [0, i]})
                if terms.top1 > limit:
                    kept[c].append(i)
                rows.append({"stage": "stage 2 screen", "operator": f"class {c} item {i}",
                             "candidate": self._item_label(c, i), **terms.row()})
            s2["kept"] = kept
            state["phase"] = "s2-init"
            self._s2_replayed = -1
            return rows
        if phase == "s2-init":
            rng = rng_from(state["rng"])
            kept = s2["kept"]
            cands: list[tuple[str, list[list[int]]]] = [("all items", [list(k) for k in kept]),
                                                      ("class names", [[0] for _ in kept])]
            for _ in range(INITIAL_SUBSETS):
                cands.append(("per-class subsets", [self._subset(k, int(rng.integers(max(1, len(k) // 3), len(k) + 1)),
                                                                 rng) for k in kept]))
            longest = max(len(k) for k in kept)
            for _ in range(INITIAL_SUBSETS):
                size = int(rng.integers(1, longest + 1))
                cands.append(("shared-size subsets", [self._subset(k, min(size, len(k)), rng) for k in kept]))
            ctx.reserve(len(cands))
            rows, best = [], None
            for op, assignment in cands:
                terms = ev.set_base(assignment)
                rows.append({"stage": "stage 2 initial", "operator": op, "candidate": json.dumps(assignment),
                             **terms.row()})
                if best is None or terms.fitness > best[1]:
                    best = (assignment, terms.fitness)
            state["rng"] = rng.bit_generator.state
            s2["initial"] = best[0]
            s2["base_fitness"] = best[1]
            s2["snapshots"].append({"after": "initial point", "assignment": best[0], "fitness": best[1]})
            s2["seen"] = sorted({self._full_key(a, {}) for _, a in cands})
            state["phase"] = "s2-groups"
            self._s2_replayed = -1
            return rows
        if phase == "s2-groups":
            return self._make_groups(state, ev, ctx)
        return self._group_epoch(state, ev, ctx)

    @staticmethod
    def _subset(items: Sequence[int], size: int, rng: np.random.Generator) -> list[int]:
        return sorted(int(i) for i in rng.choice(items, size=max(1, size), replace=False))

    def _item_label(self, c: int, i: int) -> str:
        return json.dumps(self._s2_labels[c][i])

    def _make_groups(self, state: dict[str, Any], ev: ClassPromptEvaluator, ctx: StepContext) -> list[dict[str, Any]]:
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        s2 = state["s2"]
        n = len(self.classnames)
        base = [list(a) for a in ev.base]
        ctx.reserve(n)
        base_fitness = s2["base_fitness"]
        importance, rows = [], []
        for c in range(n):
            terms = ev.evaluate({c: s2["kept"][c]})
            importance.append(terms.fitness - base_fitness)
            rows.append({"stage": "stage 2 importance", "operator": f"class {c}",
                         "candidate": json.dumps(s2["kept"][c]), **terms.row()})
        t = ev.class_weights().numpy()
        ks = [k for k in range(5, max(5, int(0.2 * n)) + 1, 2) if 2 <= k < n]
        clusters = np.zeros(n, dtype=int)
        if ks:
            best = None
            for k in ks:
                labels = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit_predict(t)
                score = silhouette_score(t, labels)
                if best is None or score > best[0]:
                    best = (score, labels)
            clusters = best[1]
        probs = _softmax(ev.base_scores())
        fit_labels = ev.y
        size_cap = max(1, int(2.5 * math.log(n)))
        cover = max(1, int(10 * math.log(n)))
        order = sorted(range(n), key=lambda c: -importance[c])
        left_out = set(order[len(order) - int(0.4 * n):]) if n >= 3 else set()
        groups: list[list[int]] = []
        covered: set[int] = set()
        for head in order:
            if head in left_out or head in covered or len(covered) >= cover:
                continue
            group = [head]
            for row in probs[fit_labels == head]:
                for c in np.argsort(-row, kind="stable")[:5]:
                    if row[c] >= 0.04 and int(c) not in group and int(c) not in left_out:
                        group.append(int(c))
            for mate in np.flatnonzero(clusters == clusters[head]):
                if len(group) >= size_cap:
                    break
                if int(mate) not in group and int(mate) not in left_out:
                    group.append(int(mate))
            group = group[:size_cap]
            groups.append(sorted(group))
            covered.update(group)
        s2["groups"] = groups[:GROUPS_SEARCHED]
        s2["importance"] = importance
        s2["clusters"] = clusters.tolist()
        state["phase"] = "s2-search" if s2["groups"] else "done"
        s2["archive"] = self._group_archive_start(s2, base) if s2["groups"] else []
        return rows

    def _group_archive_start(self, s2: dict[str, Any], base: Sequence[Sequence[int]]) -> list[list[Any]]:
        group = s2["groups"][s2["group"]]
        return [[{str(c): list(base[c]) for c in group}, s2["base_fitness"]]]

    def _group_epoch(self, state: dict[str, Any], ev: ClassPromptEvaluator, ctx: StepContext) -> list[dict[str, Any]]:
        s2 = state["s2"]
        rng = rng_from(state["rng"])
        group = s2["groups"][s2["group"]]
        kept = s2["kept"]
        base = ev.base
        parents = [{int(c): v for c, v in e[0].items()} for e in _ranked(s2["archive"])[:PARENTS]]
        cands: list[tuple[str, dict[int, list[int]]]] = []
        for parent in parents:
            for op in ("add", "remove", "replace"):
                for _ in range(PER_PARENT):
                    child = self._edit(parent, group, kept, op, rng)
                    if child is not None:
                        cands.append((op, child))
        for _ in range(STAGE2_MUTATIONS):
            child = {}
            for c in group:
                extra = [i for i in kept[c] if i not in base[c]]
                k = int(rng.integers(1, 3))
                picked = rng.choice(extra, size=min(k, len(extra)), replace=False).tolist() if extra else []
                child[c] = sorted(set(base[c]) | {int(i) for i in picked})
            cands.append(("mutation", child))
        for _ in range(CROSSOVERS):
            cands.append(("crossover", {c: crossover([p[c] for p in parents], rng) or list(base[c]) for c in group}))
        seen = set(s2["seen"])
        fresh = []
        for op, edit in cands:
            key = self._full_key(base, edit)
            if key not in seen:
                seen.add(key)
                fresh.append((op, edit))
        ctx.reserve(len(fresh))
        rows = []
        for op, edit in fresh:
            terms = ev.evaluate(edit)
            s2["archive"].append([{str(c): v for c, v in edit.items()}, terms.fitness])
            rows.append({"stage": f"stage 2 group {s2['group']} outer {s2['outer']} inner {s2['inner']}",
                         "operator": op, "candidate": json.dumps({str(c): v for c, v in edit.items()}), **terms.row()})
        s2["seen"] = sorted(seen)
        state["rng"] = rng.bit_generator.state
        s2["inner"] += 1
        if s2["inner"] >= INNER:
            s2["inner"] = 0
            s2["outer"] += 1
        if s2["outer"] >= OUTER:
            best_edit, best_fitness = _ranked(s2["archive"])[0]
            edit = {int(c): v for c, v in best_edit.items()}
            if best_fitness > s2["base_fitness"]:
                ev.commit(edit)
                s2["commits"].append(best_edit)
                self._s2_replayed += 1
                s2["base_fitness"] = best_fitness
            s2["snapshots"].append({"after": f"group {s2['group']}", "assignment": [list(a) for a in ev.base],
                                    "fitness": s2["base_fitness"]})
            s2["group"] += 1
            s2["outer"] = 0
            if s2["group"] >= len(s2["groups"]):
                state["phase"] = "done"
                s2["archive"] = []
            else:
                s2["archive"] = self._group_archive_start(s2, ev.base)
        return rows

    @staticmethod
    def _edit(parent: Mapping[int, Sequence[int]], group: Sequence[int], kept: Sequence[Sequence[int]], op: str,
              rng: np.random.Generator) -> dict[int, list[int]] | None:
        c = int(rng.choice(group))
        current = set(parent[c])
        outside = [i for i in kept[c] if i not in current]
        if op == "add" and outside:
            new = current | {int(rng.choice(outside))}
        elif op == "remove" and len(current) > 1:
            new = current - {int(rng.choice(sorted(current)))}
        elif op == "replace" and outside:
            new = (current - {int(rng.choice(sorted(current)))}) | {int(rng.choice(outside))}
        else:
            return None
        child = {k: list(v) for k, v in parent.items()}
        child[c] = sorted(new)
        return child


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def item_texts(templates: Sequence[str], synonym: str, description: str | None) -> list[str]:
    """An item's texts: every template filled with the synonym, followed by the description when there is one."""
    texts = [format_template(t, synonym) for t in templates]
    return [f"{t} {description}" for t in texts] if description else texts
