"""``bismarck plot`` and ``plots.plot_history`` against a real server."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from reference_data import breast_cancer, load_table

from bismarck_controller import training
from bismarck_controller.cli import main
from bismarckpy.errors import UndefinedObject

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from bismarck_controller import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(dsn: str) -> str:
    """Model plot_cancer with two versions (validation loss in the second)."""
    names, X, y = breast_cancer()
    with psycopg.connect(dsn) as conn:
        load_table(conn, "plot_cancer", names, X, y)
        training.train(conn, "plot_cancer", "y", names, "plot_cancer", seed=1, max_epochs=20)
        training.train(conn, "plot_cancer", "y", names, "plot_cancer", seed=2, max_epochs=20,
                       validation_fraction=0.2)
    return "plot_cancer"


def test_cli_writes_a_png(dsn: str, trained: str, tmp_path: Path) -> None:
    out = tmp_path / "loss.png"
    result = CliRunner().invoke(main, ["plot", trained, "--version", "1", "--version", "2",
                                       "-o", str(out), "--dsn", dsn])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_several_versions_on_one_axes(dsn: str, trained: str) -> None:
    ax = plots.plot_history(dsn, [(trained, 1), (trained, 2)])
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == [f"{trained} v1 train", f"{trained} v2 train", f"{trained} v2 validation"]
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "-", "--"]
    plt.close(ax.figure)


def test_log_scale_when_losses_span_two_decades() -> None:
    fig, ax = plt.subplots()
    plots.draw(ax, [plots.Curve("a", [1, 2, 3], [10.0, 1.0, 0.01], [None, None, None])])
    assert ax.get_yscale() == "log"
    ax2 = plots.draw(fig.add_subplot(2, 1, 2),
                     [plots.Curve("b", [1, 2], [0.5, 0.4], [0.6, 0.5])])
    assert ax2.get_yscale() == "linear"
    plt.close(fig)


def test_model_without_history_is_a_clean_error(dsn: str, trained: str,
                                                conn: psycopg.Connection,
                                                tmp_path: Path) -> None:
    names = breast_cancer()[0]
    with psycopg.connect(dsn) as c:
        training.train(c, "plot_cancer", "y", names, "plot_nohist", seed=1, max_epochs=3)
    conn.execute("DELETE FROM bismarck._training_epoch e USING bismarck._training_run r "
                 "WHERE e.run_id = r.run_id AND r.model_name = 'plot_nohist'")
    out = tmp_path / "none.png"
    result = CliRunner().invoke(main, ["plot", "plot_nohist", "-o", str(out), "--dsn", dsn])
    assert result.exit_code == 1
    assert "Error: no training history for model 'plot_nohist' version 1" in result.output
    assert "Traceback" not in result.output and not out.exists()
    result = CliRunner().invoke(main, ["plot", "no_such_model", "--dsn", dsn])
    assert result.exit_code == 1
    assert "Error: model 'no_such_model' does not exist" in result.output
    with pytest.raises(UndefinedObject, match="no training history"):
        plots.plot_history(dsn, ["plot_nohist"])
