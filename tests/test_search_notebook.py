"""The prompt-search notebook runs top to bottom (executed, not just stored), offline, on the toy world."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "prompt_search.ipynb"


def test_prompt_search_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ZSCLIP_NOTEBOOK_JOBS", str(tmp_path / "jobs"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3  # hill-climbing curves, ProAPO's curve, the groups' accuracy before and after
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert "good+bad  chose" in text and "good      chose" in text  # the templates found
    assert "template set:" in text and "group 0 (" in text and "-> " in text  # the groups and how they moved
    # the jobs the notebook ran are ordinary job folders with candidate logs
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["hillclimb-good", "hillclimb-good+bad", "proapo"]
