"""`zsclip store search` / ``search_store``: a store's nearest images to a text, by the store's own model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import make_cub_folder
from typer.testing import CliRunner

from zsclip.cli import app
from zsclip.datasets import get_dataset
from zsclip.errors import ZsclipError
from zsclip.store_search import search_store
from zsclip.stores import ImageStore


def test_search_store_returns_the_nearest_images_by_the_manifests_model(tiny_encoder, tmp_path):
    cub = get_dataset("cub", make_cub_folder(tmp_path / "cub", n_classes=3, images_per_class=6))
    store = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store")
    texts = ["a photo of a bird", "a red thing"]
    hits = search_store(texts, tmp_path / "store", k=3)  # loads the model the manifest names
    q = tiny_encoder.encode_texts(texts)
    scores = q @ store.embeddings.astype(np.float32).T
    for i, text in enumerate(texts):
        mine = [h for h in hits if h["query"] == text]
        assert [h["rank"] for h in mine] == [1, 2, 3]
        assert [h["row"] for h in mine] == np.argsort(-scores[i], kind="stable")[:3].tolist()
        assert [h["score"] for h in mine] == pytest.approx(np.sort(scores[i])[::-1][:3].tolist(), abs=1e-3)
        assert [h["path"] for h in mine] == [store.paths[h["row"]] for h in mine]
        assert [h["label"] for h in mine] == [int(store.labels[h["row"]]) for h in mine]

    result = CliRunner().invoke(app, ["store", "search", "a photo of a bird", "--store", str(tmp_path / "store"),
                                      "-k", "2", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [h["row"] for h in json.loads(result.output)] == [h["row"] for h in hits[:2]]
    table = CliRunner().invoke(app, ["store", "search", "a red thing", "--store", str(tmp_path / "store")])
    assert table.exit_code == 0 and "rank" in table.output

    with pytest.raises(ZsclipError, match="k must be"):
        search_store("x", store, k=0)
    bad = CliRunner().invoke(app, ["store", "search", "x", "--store", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2
