"""The explainability notebook runs top to bottom (executed, not just stored), offline, on the toy world."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "explain_descriptors.ipynb"


def test_explain_descriptors_notebook_executes(shared_notebook_home):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # no cell warns (e.g. tqdm's "IProgress not found" without ipywidgets, which the notebook extra installs)
    assert not [o.get("text", "")[:200] for o in outputs if o.get("name") == "stderr"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 5  # three examples, a fixed mistake, a misleading descriptor
    text = "".join(o.get("text", "") for o in outputs)
    assert "wrong with class names and right with descriptions" in text and "I saw a" in text
