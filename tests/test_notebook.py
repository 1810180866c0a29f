"""The notebooks run top to bottom (executed, not just stored), offline, on the toy world; they share one cache
root, so the toy world's stores are rendered once for all of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str) -> list[dict[str, Any]]:
    """Run the notebook ``name`` in a fresh kernel; return every code cell's outputs."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def test_explain_descriptors_notebook_executes(shared_notebook_home):
    outputs = execute("explain_descriptors.ipynb")
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # no cell warns (e.g. tqdm's "IProgress not found" without ipywidgets, which the notebook extra installs)
    assert not [o.get("text", "")[:200] for o in outputs if o.get("name") == "stderr"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 5  # three examples, a fixed mistake, a misleading descriptor
    text = "".join(o.get("text", "") for o in outputs)
    assert "wrong with class names and right with descriptions" in text and "I saw a" in text


def test_real_tail_notebook_executes(shared_notebook_home):
    outputs = execute("real_tail.ipynb")
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert not [o.get("text", "")[:200] for o in outputs if o.get("name") == "stderr"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 2  # accuracy against frequency, the retrieved images
    text = "".join(o.get("text", "") for o in outputs)
    assert "classes renamed" in text and "name-trap species left unchanged" in text and "top " in text
    assert "names dropped from retrieval" in text


def test_prompt_search_notebook_executes(shared_notebook_home, tmp_path, monkeypatch):
    monkeypatch.setenv("ZSCLIP_NOTEBOOK_JOBS", str(tmp_path / "jobs"))
    outputs = execute("prompt_search.ipynb")
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3  # hill-climbing curves, ProAPO's curve, the groups' accuracy before and after
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert "good+bad  chose" in text and "good      chose" in text  # the templates found
    assert "template set:" in text and "group 0 (" in text and "-> " in text  # the groups and how they moved
    # the jobs the notebook ran are ordinary job folders with candidate logs
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["hillclimb-good", "hillclimb-good+bad", "proapo"]
