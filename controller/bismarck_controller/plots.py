"""Loss curves from ``bismarck.training_history``: train loss solid, validation loss dashed.

Several models (or versions of one model) share one chart, one colour each; the y axis turns
logarithmic when the losses span more than two decades.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from bismarck_controller import training
from bismarck_controller.notebook import Database, connected
from bismarckpy.errors import UndefinedObject

ModelRef = Union[str, "tuple[str, int | None]"]
LOG_SPAN = 100.0  # max/min ratio above which the loss axis is logarithmic (two decades)


@dataclass
class Curve:
    """One run's losses per epoch."""

    label: str
    epochs: list[int]
    train: list[float | None]
    validation: list[float | None]


def history_curve(conn: Any, name: str, version: int | None = None) -> Curve:
    """The loss curve of one model version (latest unless given); a clear error if none."""
    stored = training.versions(conn, name, version)  # newest first; a clear error if none
    if version is None:
        version = stored[0]
    rows = training.history(conn, name, version)
    if not rows:
        what = f"model {name!r}" + (f" version {version}" if version is not None else "")
        raise UndefinedObject(
            f"no training history for {what}",
            detail="Only models trained with bismarck.train_glm (SQL, CLI or Python) have "
                   "per-epoch history; its rows may have been deleted.",
            hint="List models with `bismarck models` or SELECT * FROM bismarck.models, and "
                 "their runs with SELECT * FROM bismarck.training_history.")
    run = max(r["run_id"] for r in rows)  # one run per version; the last if ever more
    rows = [r for r in rows if r["run_id"] == run]
    return Curve(f"{name} v{version}", [r["epoch"] for r in rows],
                 [r["train_loss"] for r in rows], [r["validation_loss"] for r in rows])


def _refs(models: Sequence[ModelRef] | ModelRef) -> list[tuple[str, int | None]]:
    """Normalise ``"name"`` / ``("name", version)`` items into pairs."""
    if isinstance(models, (str, tuple)):
        models = [models]
    refs = []
    for m in models:
        if isinstance(m, str):
            refs.append((m, None))
        else:
            name, version = m
            refs.append((str(name), None if version is None else int(version)))
    if not refs:
        raise ValueError("name at least one model to plot")
    return refs


def draw(ax: Any, curves: Sequence[Curve], title: str | None = None) -> Any:
    """Draw the curves on ``ax``: one colour per curve, train solid, validation dashed.

    A curve's label (a model name) is drawn literally: its ``$`` never starts mathtext.
    """
    values: list[float] = []
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        label = c.label.replace("$", r"\$")
        ax.plot(c.epochs, _nan(c.train), color=color, linestyle="-", label=f"{label} train")
        values += [v for v in c.train if _finite(v)]
        if any(_finite(v) for v in c.validation):
            ax.plot(c.epochs, _nan(c.validation), color=color, linestyle="--",
                    label=f"{label} validation")
            values += [v for v in c.validation if _finite(v)]
    positive = [v for v in values if v > 0]
    if positive and min(values) > 0 and max(positive) / min(positive) > LOG_SPAN:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax


def plot_history(conn: Database, models: Sequence[ModelRef] | ModelRef, ax: Any = None,
                 title: str | None = None) -> Any:
    """Plot train (solid) and validation (dashed) loss per epoch of models; return the Axes.

    ``models`` holds names (latest version) or ``(name, version)`` pairs; ``conn`` is anything
    :func:`bismarck_controller.notebook.connected` accepts.
    """
    refs = _refs(models)
    with connected(conn) as c:
        curves = [history_curve(c, name, version) for name, version in refs]
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4))
    return draw(ax, curves, title)


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _nan(values: Sequence[float | None]) -> list[float]:
    """None (no validation set, or a diverged epoch) as NaN: a gap in the line."""
    return [v if v is not None else math.nan for v in values]
