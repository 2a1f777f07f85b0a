"""Both notebooks execute headless (nbclient, slow) in tiny mode (``EVF_NOTEBOOK_TINY=1``) and produce their figures;
their code cells also run in-process in the default suite (fast)."""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]


def execute(name: str, monkeypatch, tmp_path):
    nbclient = pytest.importorskip("nbclient")  # (Jupyter's client stack: imported only by the slow kernel runs)
    monkeypatch.setenv("EVF_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend renders figures headless
    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return book, outputs


def images(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


@pytest.mark.slow
def test_quickstart_notebook_runs(monkeypatch, tmp_path):
    _, outputs = execute("quickstart.ipynb", monkeypatch, tmp_path)
    assert "test cIoU=" in text(outputs)
    assert images(outputs) == 1  # the overlay figure


@pytest.mark.slow
def test_fusion_study_notebook_runs(monkeypatch, tmp_path):
    _, outputs = execute("fusion_study.ipynb", monkeypatch, tmp_path)
    printed = text(outputs)
    assert "beit3_early_l1-2" in printed and "vilt_text" in printed  # every sweep row is read
    assert images(outputs) == 2  # the results plot and the attention maps


@pytest.mark.parametrize("name", ["quickstart.ipynb", "fusion_study.ipynb"])
def test_notebook_code_runs_in_process(name, monkeypatch):
    """Fast smoke test of the notebooks' code paths: every code cell, in order, in this process (no kernel),
    tiny mode, figures drawn off-screen. The kernel run above (slow) also checks the rendered outputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("EVF_NOTEBOOK_TINY", "1")
    monkeypatch.chdir(ROOT)  # the notebooks chdir to the repository root; monkeypatch restores the old folder
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    # the notebooks ask for 2 threads; here the suite keeps its 1 (OpenMP threads spin when the cores are busy)
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)
    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    namespace: dict = {"__name__": "__notebook__"}
    for cell in book.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, f"{name}[cell]", "exec"), namespace)
    figures = [plt.figure(n) for n in plt.get_fignums()]
    assert len(figures) == (1 if name == "quickstart.ipynb" else 2)
    assert all(f.axes and any(ax.get_images() or ax.patches for ax in f.axes) for f in figures)
    plt.close("all")
    if name == "quickstart.ipynb":
        assert 0.0 <= namespace["metrics"]["test/cIoU"] <= 1.0 and namespace["predicted"].shape[0] == len(namespace["prompts"])
