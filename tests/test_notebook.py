"""examples/quickstart.ipynb runs end to end in a real kernel against the test database."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(dsn: str, tmp_path: Path, monkeypatch) -> None:
    """Every cell runs without an error (nbclient raises CellExecutionError on the first)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("BISMARCK_DSN", dsn)  # the kernel inherits it: %load_ext and connect()
    monkeypatch.setenv("PLOOMBER_STATS_ENABLED", "false")  # jupysql: no telemetry calls
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")
    assert "%sql is connected to postgresql+psycopg://" in text
    assert "test accuracy" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the two loss charts
