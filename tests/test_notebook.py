
import nbformat
from nbclient import NotebookClient

from conftest import ROOT, TEXT_DIM


def test_preprocessing_notebook_runs_top_to_bottom(demo_dir, monkeypatch):
    monkeypatch.setenv("KEMDY_DATA_DIR", str(demo_dir))
    monkeypatch.setenv("KEMDY_TEXT_DIM", str(TEXT_DIM))
    notebook = nbformat.read(ROOT / "preprocessing.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # the three EDA plots
    text = "".join(o.get("text", "") for o in outputs)
    assert "up to date" in text and "utterances" in text
