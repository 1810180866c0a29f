"""REAL (Parashar et al., CVPR 2024; METHODS.md §6) building blocks: the name rule, retrieval and the linear head.

- ``choose_name``: REAL-Prompt's rule. The single most frequent name of a class replaces the official name
  when its word set equals the official name's or is not a subset of it (the *relaxed* rule, default); a
  more frequent name whose words are a strict subset of the official name's (a genus word, a "name trap")
  leaves the official name in place. ``strict=True`` takes the most frequent name whatever its words (the
  rule REAL's shipped Stanford Cars names follow). No fall-through to the second name.
- ``load_counts``: the names and counts of every class of a dataset, from a REAL metrics file or a count run
  over a corpus (``zsclip.corpus_count``).
- ``retrieve_string`` / ``retrieve_knn``: per class, candidate corpus rows (captions matching one of its
  names, seeded shuffle; or the nearest corpus images to its prompt embedding through a FAISS index),
  ranked by the mean over the class's names of cos(caption text embedding, name prompt embedding), top
  ``n`` with score ≥ 0.
- ``train_head``: REAL-Linear's training loop (bias-free head from the zero-shot weights; 32 image + 32
  single-template text features a step; CE on logits × 100; AdamW 1e-4 / 0.01; 50 warm-up steps then
  cosine), deterministic for a seed on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import read_json, write_json_atomic
from .corpus import Corpus
from .corpus_count import ClassNames, count_corpus, match_rows, phrase_of, read_synonyms
from .datasets.base import Dataset, Sample
from .errors import ZsclipError
from .paths import cache_display, cache_root, display_path, locate, resource_dir

log = logging.getLogger(__name__)

#: image and text features per training step (REAL's batch sizes)
BATCH_IMAGES = 32
BATCH_TEXTS = 32
LOGIT_SCALE = 100.0
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01
WARMUP_STEPS = 50
EPOCHS = 10
MAX_STEPS = 32_000


# --------------------------------------------------------------------------------------------------------
# names and counts
@dataclass(frozen=True)
class ClassCounts:
    """One class's official name, every name with its caption count, and its distinct matched captions."""

    name: str
    alternates: dict[str, int]
    actual_freq: int | None = None


def choose_name(official: str, alternates: Mapping[str, int], strict: bool = False) -> str:
    """REAL-Prompt's name for a class (see the module doc).

    The most frequent name wins; ties go to the official name, then to the first listed. Under the relaxed
    rule that name is used when its word set (FTS5 ``unicode61`` tokens) equals the official name's or is not
    a subset of it; otherwise the official name is kept.
    """
    if not alternates:
        return official
    names = list(alternates)
    best = max(names, key=lambda n: (alternates[n], n == official, -names.index(n)))
    if strict or best == official:
        return best
    words, official_words = set(phrase_of(best)), set(phrase_of(official))
    if words == official_words or not words <= official_words:
        return best
    return official


def counts_from_metrics(path: str | Path) -> list[ClassCounts]:
    """The classes of a REAL metrics file (``alternates`` with counts), in file order.

    A synonym file without counts (null or missing counts) is refused: count it over a corpus first
    (``zsclip corpus count``) or pass ``corpus=DIR``.
    """
    data = read_json(Path(path), "REAL metrics file")
    if not isinstance(data, dict) or not data:
        raise ZsclipError(f"metrics file {path}: expected a JSON object {{\"0\": {{\"name\": ..., "
                          "\"alternates\": {name: count}}, ...}")
    out = []
    for key, entry in data.items():
        alternates = entry.get("alternates") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(alternates, dict):
            raise ZsclipError(f"metrics file {path}, class {key!r}: expected an object with \"name\" and "
                              "\"alternates\" {name: count}")
        bad = [n for n, v in alternates.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if bad:
            raise ZsclipError(f"metrics file {path}, class {key!r}: name {bad[0]!r} has no count "
                              f"({alternates[bad[0]]!r}); count the names over a corpus first "
                              "(`zsclip corpus count`) or pass corpus=DIR")
        alts = dict(alternates)
        alts.setdefault(entry["name"], 0)
        out.append(ClassCounts(entry["name"], alts, entry.get("actual_freq")))
    return out


def counts_from_corpus(corpus: Corpus, classes: Sequence[ClassNames], prefix: str | None = None) -> list[ClassCounts]:
    """Count ``classes``' names over ``corpus`` (saved per-shard counts are reused)."""
    result = count_corpus(corpus, classes, prefix=prefix, progress=False)
    return [ClassCounts(c.name, result.alternates(i), int(result.class_counts[i]))
            for i, c in enumerate(result.plan.classes)]


def align_to_dataset(classnames: Sequence[str], counts: Sequence[ClassCounts], source: str) -> list[ClassCounts]:
    """``counts`` in the dataset's class order, matched by official name (case-insensitive).

    A dataset class absent from the file keeps its official name with a count of 0 (logged); a file that
    names none of the dataset's classes is an error.
    """
    by_name = {c.name.strip().lower(): c for c in counts}
    out, missing = [], []
    for name in classnames:
        found = by_name.get(name.strip().lower())
        if found is None:
            missing.append(name)
            found = ClassCounts(name, {name: 0}, 0)
        out.append(found)
    if len(missing) == len(classnames):
        raise ZsclipError(f"{source} names none of the dataset's {len(classnames)} classes (e.g. "
                          f"{classnames[0]!r}); is it the file of another dataset?")
    if missing:
        log.warning("%s has no entry for %d classes (official names kept): %s", source, len(missing),
                    ", ".join(missing[:5]))
    return out


def resolve_names(dataset: Any, metrics: str | None, corpus: str | None) -> tuple[list[ClassCounts], str]:
    """Every class's names and counts, and where they came from.

    ``corpus`` given: the names of ``metrics`` (a synonym or metrics file; default the dataset card's
    ``synonyms``, else the official names only) are counted over it. Otherwise the counts of ``metrics``
    (default the card's ``synonyms``) are used as they are.
    """
    path = str(locate(Path(metrics).expanduser())) if metrics is not None else None
    if path is None and dataset.card.get("synonyms"):
        path = str(resource_dir("prompts") / str(dataset.card["synonyms"]))
    if corpus is not None:
        opened = Corpus.open(corpus)
        if path is None:
            classes = [ClassNames(str(i), c, [c]) for i, c in enumerate(dataset.classnames)]
        else:
            classes = read_synonyms(path)
        shown = display_path(path) if path else None
        return (align_to_dataset(dataset.classnames, counts_from_corpus(opened, classes), f"names of {shown}"),
                f"counted over {opened.path}" + (f" (names of {shown})" if shown else " (official names)"))
    if path is None:
        raise ZsclipError(f"dataset {dataset.name!r} has no synonym counts: pass metrics=FILE (a REAL metrics "
                          "file, `zsclip corpus count`) or corpus=DIR to count names over a caption corpus")
    return align_to_dataset(dataset.classnames, counts_from_metrics(path), display_path(path)), display_path(path)


def replacements(classnames: Sequence[str], counts: Sequence[ClassCounts], strict: bool) -> tuple[list[str],
                                                                                                  list[dict[str, Any]]]:
    """REAL-Prompt's name per class and the record of every replacement (official → chosen, both counts)."""
    chosen, changed = [], []
    for official, c in zip(classnames, counts):
        name = choose_name(c.name, c.alternates, strict)
        if name == c.name:
            name = official  # the dataset's spelling of an unchanged name
        chosen.append(name)
        if name != official:
            changed.append({"class": official, "official_count": int(c.alternates.get(c.name, 0)),
                            "chosen": name, "chosen_count": int(c.alternates[name])})
    return chosen, changed


# --------------------------------------------------------------------------------------------------------
# prompt embeddings
def name_prompt_embeddings(encode: Any, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """``len(names) × D``: each name's renormalised mean over ``templates`` of its prompt embeddings."""
    from .prompts import format_template

    texts = [format_template(t, n) for n in names for t in templates]
    emb = np.asarray(encode(texts), dtype=np.float32).reshape(len(names), len(templates), -1).mean(axis=1)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rank_candidates(caption_emb: np.ndarray, name_emb: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the candidates) of the top ``n`` by mean over names of cos(caption, name prompt), with
    score ≥ 0, best first (ties keep candidate order), and their scores."""
    if len(caption_emb) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = (_unit_rows(caption_emb) @ _unit_rows(name_emb).T).mean(axis=1)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= 0][:n]
    return order, scores[order].astype(np.float32)


@dataclass
class Retrieved:
    """What retrieval found: per kept row its global corpus row, class, caption and score."""

    rows: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    captions: list[str]
    candidates: np.ndarray  # per class, candidates considered

    def per_class(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)

    def save(self, path: Path, provenance: Mapping[str, Any]) -> None:
        """Write the retrieved set as parquet (row, class, caption, score) beside a JSON of provenance."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ._io import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"row": pa.array(self.rows, pa.int64()), "class": pa.array(self.labels, pa.int32()),
                          "caption": pa.array(self.captions, pa.string()),
                          "score": pa.array(self.scores, pa.float32())})
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        write_json_atomic(path.with_suffix(".json"), {**provenance, "candidates": self.candidates.tolist()})

    @classmethod
    def load(cls, path: Path) -> Retrieved | None:
        """The retrieved set saved at ``path`` (None when absent or incomplete)."""
        import pyarrow.parquet as pq

        meta = path.with_suffix(".json")
        if not path.is_file() or not meta.is_file():
            return None
        table = pq.read_table(path)
        info = json.loads(meta.read_text(encoding="utf-8"))
        return cls(table.column("row").to_numpy().astype(np.int64), table.column("class").to_numpy().astype(np.int64),
                   table.column("score").to_numpy().astype(np.float32), table.column("caption").to_pylist(),
                   np.asarray(info["candidates"], dtype=np.int64))


def caption_embeddings(corpus: Corpus, rows: np.ndarray, captions: Sequence[str], encode: Any) -> np.ndarray:
    """The caption text embeddings of ``rows``: the corpus's ``text_emb`` when it has them, else encoded."""
    if corpus.has_text_embeddings:
        return np.asarray(corpus.embeddings(rows, "text"), dtype=np.float32)
    return np.asarray(encode(list(captions)), dtype=np.float32) if len(captions) else np.zeros((0, 0), np.float32)


def _gather(corpus: Corpus, per_class_rows: Sequence[np.ndarray], name_emb: Sequence[np.ndarray], n: int,
            encode: Any) -> Retrieved:
    rows_out, labels, scores, captions = [], [], [], []
    for c, (cand, names) in enumerate(zip(per_class_rows, name_emb)):
        if len(cand) == 0:
            continue
        texts = corpus.captions(cand)
        keep = np.array([t is not None for t in texts], dtype=bool)  # NSFW-dropped rows are not candidates
        cand, texts = cand[keep], [t for t in texts if t is not None]
        if len(cand) == 0:
            continue
        pos, sc = rank_candidates(caption_embeddings(corpus, cand, texts, encode), names, n)
        rows_out.append(cand[pos])
        labels.append(np.full(len(pos), c, np.int64))
        scores.append(sc)
        captions += [texts[i] for i in pos]
    if not rows_out:
        return Retrieved(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), [],
                         np.asarray([len(r) for r in per_class_rows], np.int64))
    return Retrieved(np.concatenate(rows_out), np.concatenate(labels), np.concatenate(scores), captions,
                     np.asarray([len(r) for r in per_class_rows], np.int64))


def string_candidates(corpus: Corpus, names_per_class: Sequence[Sequence[str]], seed: int,
                      limit: int | None) -> list[np.ndarray]:
    """Per class, the rows whose caption matches any of its names, shuffled with ``seed`` (first ``limit``)."""
    classes = [ClassNames(str(i), names[0], list(names)) for i, names in enumerate(names_per_class)]
    found = match_rows(corpus, classes)
    out = []
    for c, per_name in enumerate(found):
        parts = [r for r in per_name.values() if len(r)]
        rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        rows = np.random.default_rng([seed, c]).permutation(rows)
        out.append(rows[:limit] if limit is not None else rows)
    return out


def retrieve_string(corpus: Corpus, names_per_class: Sequence[Sequence[str]], name_emb: Sequence[np.ndarray],
                    n: int, seed: int, encode: Any, limit: int | None = None) -> Retrieved:
    """REAL's retrieval: caption string matches per class, ranked by caption–name-prompt similarity, top ``n``."""
    return _gather(corpus, string_candidates(corpus, names_per_class, seed, limit), name_emb, n, encode)


def retrieve_knn(corpus: Corpus, index: Any, queries: np.ndarray, name_emb: Sequence[np.ndarray], n: int,
                 k: int, encode: Any) -> Retrieved:
    """kNN retrieval: per class the ``k`` corpus images nearest its prompt embedding (``queries[c]``), then REAL's
    ranking and cap (mean caption–name-prompt similarity, top ``n`` with score ≥ 0)."""
    _, rows = index.search(_unit_rows(queries), k)
    return _gather(corpus, [np.sort(r[r >= 0]) for r in rows], name_emb, n, encode)


def top_up(string: Retrieved, knn: Retrieved, minimum: int, num_classes: int) -> Retrieved:
    """``string``'s images, plus for each class with fewer than ``minimum`` of them its best-ranked ``knn`` images
    not already there, up to ``minimum`` (a deviation from REAL, whose classes keep what string matching finds).

    The kNN images keep their order (REAL's ranking) and follow the class's string-matched ones.
    """
    rows, labels, scores, captions = [string.rows], [string.labels], [string.scores], list(string.captions)
    for c in range(num_classes):
        have = set(string.rows[string.labels == c].tolist())
        need = minimum - len(have)
        if need <= 0:
            continue
        pos = [i for i in np.flatnonzero(knn.labels == c) if int(knn.rows[i]) not in have][:need]
        rows.append(knn.rows[pos])
        labels.append(np.full(len(pos), c, np.int64))
        scores.append(knn.scores[pos])
        captions += [knn.captions[i] for i in pos]
    return Retrieved(np.concatenate(rows), np.concatenate(labels), np.concatenate(scores), captions,
                     string.candidates)


# --------------------------------------------------------------------------------------------------------
# image features of a corpus without img_emb: the retrieved images, encoded once into image stores
#: the metadata column naming each row's image file (clip-retrieval's)
IMAGE_COLUMN = "image_path"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class CorpusImages(Dataset):
    """Some corpus images as a one-split dataset (split ``images``, one pseudo-class), so that the image-store
    machinery (``zsclip.stores.ImageStore``: resumable shards, checksums, re-encoding of changed files)
    encodes them. ``paths`` are absolute image files, in store order."""

    name = "corpus-images"
    splits = ("images",)
    default_split = "images"
    split_roles: dict[str, str] = {}

    def __init__(self, paths: Sequence[str]) -> None:
        super().__init__()
        self.classnames = ["corpus image"]
        self._paths = list(paths)

    def _load_split(self, split: str) -> list[Sample]:
        return [Sample(p, 0) for p in self._paths]


def image_paths(corpus: Corpus, rows: np.ndarray, image_root: str | Path | None = None,
                column: str = IMAGE_COLUMN) -> list[str]:
    """The absolute image file of each of ``rows`` (global corpus rows), from the metadata's ``column``.

    Relative paths are resolved against ``image_root`` (default: the corpus folder). A corpus whose shards
    have no such column (raw LAION metadata: images named only by ``URL``), URLs in place of files, and files
    that do not exist are errors naming the row, its shard and the path, with what to do.
    """
    if column not in corpus.columns:
        raise ZsclipError(
            f"corpus {corpus.path} has no image embeddings (img_emb/img_emb_N.npy beside metadata/) and its shards "
            f"have no {column!r} column naming each row's image file (its columns are: {', '.join(corpus.columns)}); "
            "zsclip cannot download images by URL. Download them (e.g. img2dataset) and add an image_path column "
            "(relative paths are read against the corpus folder, or image_root=DIR), or use a clip-retrieval folder "
            "with img_emb/")
    root = Path(image_root).expanduser() if image_root is not None else corpus.path
    shard_of, local = corpus.locate(rows)
    out: list[str] = [""] * len(local)
    missing: list[tuple[int, str, int, str]] = []
    for s in np.unique(shard_of):
        pick = np.flatnonzero(shard_of == s)
        shard = corpus.shards[int(s)]
        values = corpus.read_columns(shard, [column]).column(0).take(local[pick]).to_pylist()
        for i, value in zip(pick, values):
            path = root / value if value and not _URL.match(value) else None
            if path is None or not path.is_file():
                missing.append((int(rows[i]), shard.name, int(local[i]), str(value if path is None else path)))
                continue
            out[i] = str(path.resolve())
    if missing:
        row, shard_name, local_row, path = missing[0]
        raise ZsclipError(
            f"{len(missing)} of the {len(rows)} retrieved images of corpus {corpus.path} are not readable files; "
            f"first: row {row} ({shard_name}, row {local_row}): {path!r}. The column {column!r} must name image "
            "files (relative to the corpus folder, or to image_root=DIR); URLs are not downloaded")
    return out


def corpus_image_features(corpus: Corpus, rows: np.ndarray, encoder: Any, image_root: str | Path | None = None,
                          folder: Path | None = None, shard_size: int = 1024) -> tuple[np.ndarray, dict[str, Any]]:
    """Image embeddings (``len(rows) × D`` float32) of corpus ``rows`` for a corpus without ``img_emb``.

    Each image is encoded once, ever, per model: stores under ``folder`` (default
    ``<zsclip cache>/corpus-images/<model fingerprint>``) are looked up first, by absolute file path, and
    refreshed when a file changed (size or mtime); the images found in none are encoded into one new store
    (resumable: an interrupted encoding restarts after its last whole shard of ``shard_size`` images). Returns
    the features and what was done (``images_encoded``, ``stores``).
    """
    from .stores import MANIFEST, ImageStore

    paths = image_paths(corpus, rows, image_root)
    wanted = set(paths)
    folder = folder or cache_root() / "corpus-images" / encoder.fingerprint[:20]
    found: dict[str, np.ndarray] = {}
    encoded, used = 0, []

    def take(store: ImageStore) -> None:
        emb = np.asarray(store.embeddings, dtype=np.float32)
        for i, p in enumerate(store.paths):
            if p in wanted:
                found[p] = emb[i]
        used.append(cache_display(store.path))

    for store_dir in sorted(folder.glob("store-*")) if folder.is_dir() else []:
        if not (store_dir / MANIFEST).is_file():
            continue
        old = ImageStore.open(store_dir, encoder.fingerprint)
        order = {int(i): p for i, p in zip(old.sample_indices, old.paths)}
        order.update({int(e["index"]): str(e["path"]) for e in old.manifest["skipped"]})
        listed = [order[i] for i in sorted(order)]
        if wanted.isdisjoint(listed) or wanted.issubset(found):
            continue
        store = ImageStore.build(CorpusImages(listed), "images", encoder, store_dir,  # re-encodes changed files
                                 shard_size=shard_size)
        encoded += store.build_stats.images_encoded
        take(store)
    new = sorted(wanted - set(found))
    if new:
        store = ImageStore.build(CorpusImages(new), "images", encoder, folder / f"store-{cache_key({'paths': new})}",
                                 dtype="float32", shard_size=shard_size)
        encoded += store.build_stats.images_encoded
        take(store)
    lost = [(int(r), p) for r, p in zip(rows, paths) if p not in found]
    if lost:
        raise ZsclipError(f"{len(lost)} retrieved image(s) of corpus {corpus.path} could not be decoded; first: row "
                          f"{lost[0][0]}: {lost[0][1]}. Replace or remove the file(s) and run again")
    log.info("corpus images: %d encoded, %d read from %d store(s)", encoded, len(wanted) - encoded, len(used))
    feats = np.stack([found[p] for p in paths]) if paths else np.zeros((0, encoder.embed_dim), np.float32)
    return feats, {"images_encoded": encoded, "stores": used}


def cache_key(payload: Mapping[str, Any]) -> str:
    """A short digest of a JSON-able description (corpus manifest, names, parameters, model)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def real_cache_dir() -> Path:
    """Where retrieved sets and REAL-Linear heads are saved: ``<zsclip cache>/real``."""
    return cache_root() / "real"


# --------------------------------------------------------------------------------------------------------
# training
def total_steps(n: int, num_classes: int, cap: int = MAX_STEPS) -> int:
    """REAL-Linear's step count: min(cap, N·C·10/32) (about ten epochs of N images per class), at least 1."""
    return max(1, min(cap, n * num_classes * EPOCHS // BATCH_IMAGES))


def lr_at(step: int, total: int, base: float = LEARNING_RATE, warmup: int = WARMUP_STEPS) -> float:
    """Linear warm-up over ``warmup`` steps to ``base``, then cosine to 0 over the remaining steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def _batches(n: int, size: int, steps: int, gen: Any) -> Any:
    """``steps`` index batches of ``size`` drawn from reshuffled passes over ``range(n)``."""
    import torch

    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + size > n and n >= size:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + size] if n >= size else order
        pos += size
        yield idx


def train_head(image_features: np.ndarray, image_labels: np.ndarray, text_features: np.ndarray,
               text_labels: np.ndarray, init: np.ndarray, steps: int, seed: int, balance: str = "none") -> np.ndarray:
    """Train REAL-Linear's bias-free head from ``init`` (C × D); returns the learned C × D weights.

    Each step: 32 image and 32 text features (all L2-normalised; reshuffled passes), CE on logits × 100,
    AdamW (lr 1e-4, weight decay 0.01), ``lr_at`` schedule. ``balance="class"`` draws the images with
    weights 1/(images of their class) instead, so every class is seen equally often. Deterministic for
    ``seed``: one CPU thread and a seeded generator for the batches.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(int(seed))
        x_img = torch.from_numpy(_unit_rows(image_features))
        y_img = torch.from_numpy(np.asarray(image_labels, dtype=np.int64))
        x_txt = torch.from_numpy(_unit_rows(text_features))
        y_txt = torch.from_numpy(np.asarray(text_labels, dtype=np.int64))
        weight = torch.nn.Parameter(torch.from_numpy(np.array(init, dtype=np.float32)))
        opt = torch.optim.AdamW([weight], lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        if balance == "class" and len(x_img):
            per = np.bincount(y_img.numpy())
            w = torch.from_numpy(1.0 / per[y_img.numpy()])
            img_batches: Any = (torch.multinomial(w, BATCH_IMAGES, replacement=True, generator=gen)
                                for _ in range(steps))
        else:
            img_batches = _batches(len(x_img), BATCH_IMAGES, steps, gen) if len(x_img) else None
        txt_batches = _batches(len(x_txt), BATCH_TEXTS, steps, gen)
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps)
            ti = next(txt_batches)
            if img_batches is not None:
                ii = next(img_batches)
                x, y = torch.cat([x_img[ii], x_txt[ti]]), torch.cat([y_img[ii], y_txt[ti]])
            else:
                x, y = x_txt[ti], y_txt[ti]
            loss = torch.nn.functional.cross_entropy(LOGIT_SCALE * x @ weight.T, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return weight.detach().numpy().copy()
    finally:
        torch.set_num_threads(threads)
