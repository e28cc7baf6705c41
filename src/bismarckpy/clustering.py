"""Whether a table's physical order follows its columns: when a block shuffle is not enough.

Two paths shuffle by *blocks* of pages rather than by rows: the packed copy written in one
read of a table (page groups in a random order, :data:`~bismarckpy.blockscan.BUFFER_BLOCKS`
at a time, their rows shuffled together) and ``shuffle => 'blocks'`` (the same, every epoch,
without a copy). CorgiPile (Xu et al., SIGMOD 2022) shows that this converges like a full
shuffle when each page group is a fair sample of the table, and more slowly the more the
groups differ (its bound grows with the variance *between* blocks). A table loaded in label
order, ``CLUSTER``ed on a column or appended in time order breaks that: with 1% positives
stored last, a few buffers hold every positive, and SGD trains on them in a burst.

The check is a one-way analysis of variance with the page groups as the groups, for the label
and every feature, read along with preparation (:func:`bismarckpy.blockscan.prepare_step`):

    F_c = (BSS_c / (G - 1)) / (WSS_c / (N - G))

``BSS``/``WSS``: the between- and within-groups sums of squares of column ``c`` over ``N``
rows in ``G`` non-empty groups. Rows stored in random order give ``F ~ F(G - 1, N - G)``:
mean 1, standard deviation about ``sqrt(2 / (G - 1))``. A table is *clustered* when its
label's ``F`` exceeds :data:`CLUSTERED_F` and is beyond chance (:data:`CHANCE_SDS` standard
deviations), and, for classes, when the groups' class shares spread wide against the loss's
curvature at the priors (:data:`CLASS_SPREAD`: rare classes stored together, not balanced
ones). Such a table gets a full row shuffle instead: its packed copy assigns rows to
blocks by a seeded hash (:func:`bismarckpy.packing.pack_into`), and ``shuffle => 'blocks'``
left to the defaults becomes that copy (``bismarckpy.loop``).
"""

from __future__ import annotations

import math

import numpy as np

from .moments import Moments

#: The label's ``F`` above which a block shuffle is not trusted. Measured on 200,000 rows with
#: 1.2% positives (two features, logistic, defaults, two seeds; log-loss against the exact fit):
#: label stored sorted (F 15,000) 1.055x with 'blocks' and 1.091x with the packed copy;
#: clustered so that F is 438, 1.009x; F 106, 1.001x; F 42, 1.0003x; F 9, 1.0000x.
#: Features clustered alone do not bias the steps when the label is not (a table sorted by
#: the strongest feature, F 1.3e6 on it and 11 on the label: 1.0000x): a gradient's mean over
#: a page group is not biased by where the group lies in a feature's range when the model fits,
#: only when the labels differ beyond what the features say. So the label alone is judged.
#: Other labels are judged by ``F`` alone: a regression label stored sorted (200,000 rows,
#: R² 0.83) gave an RMSE 1.007x the exact fit's on the copy from page groups, 1.005x with
#: 'blocks' (1.000x on the full shuffle).
CLUSTERED_F = 50.0
#: ... and beyond chance: this many standard deviations of ``F`` under random order.
CHANCE_SDS = 6.0
#: A two-valued label (classes) is clustered only when, besides, the spread of its groups'
#: means is large against the curvature of the loss at the class priors: ``eta2 / (p(1-p))``
#: above this, with ``eta2`` the share of the label's variance between groups and ``p`` a
#: class's share. The same 200,000 rows stored sorted, by prevalence (packed copy / blocks):
#: p 0.50, 4.0 (the largest a balanced label reaches): 1.000x / 1.000x; p 0.23, 5.6:
#: 1.003x / 1.003x; p 0.11, 10: 1.02x / 1.01x; p 0.05, 21: 1.05x / 1.07x; p 0.012, 80:
#: 1.10x / 1.05x; and p 0.012 clustered less, 38: 1.009x, 13: 1.001x, 6: 1.0003x. Balanced
#: classes stored sorted keep the block paths when the model is averaged (the default): a
#: buffer's excess of one class is undone by the next buffers' in the mean of the iterates.
#: Not so for the last iterate (``average => false``): 1.39x with 50%, 1.51x with 38%.
CLASS_SPREAD = 5.0


def order_ratios(total: Moments, between: Moments, groups: int) -> np.ndarray:
    """Per column, the analysis-of-variance ``F`` of the page groups (see the module).

    ``total``: the rows' moments; ``between``: the moments of the same rows, each moved to
    its group's mean (:func:`bismarckpy.moments.collapsed`, merged over groups); ``groups``:
    the non-empty groups. Constant columns, and fewer than two groups or no rows beyond one
    per group, give 0 (nothing to tell). A column constant within every group gives inf.
    """
    n = int(total.n)
    width = len(total.sd)
    if groups < 2 or n <= groups:
        return np.zeros(width)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        share = np.where(total.sd > 0, np.minimum(between.sd / total.sd, 1.0) ** 2, 0.0)
        within = 1.0 - share
        f = np.where(within > 0, share / within, np.where(share > 0, np.inf, 0.0))
    return np.nan_to_num(f * ((n - groups) / (groups - 1)), nan=0.0, posinf=np.inf)


def label_clustered(order: np.ndarray | None, groups: int,
                    label: Moments | None = None, averaged: bool = False) -> float | None:
    """The label's ``F`` (column 0 of ``order``, :func:`order_ratios` over ``groups``
    non-empty page groups) when it is beyond :data:`CLUSTERED_F` and beyond chance
    (:data:`CHANCE_SDS`), and, for a two-valued label (its moments ``label``, column 0, say
    so) trained by averaged SGD (``averaged``), beyond :data:`CLASS_SPREAD`; else None (not
    clustered, or not measured). Without averaging every clustered label counts: the last
    iterate follows the last buffers' classes (balanced classes stored sorted, the packed
    copy from page groups, ``average => false``: 1.39-1.51x the exact fit)."""
    if order is None or len(order) == 0 or groups < 2:
        return None
    f = float(order[0])
    if f <= max(CLUSTERED_F, 1.0 + CHANCE_SDS * math.sqrt(2.0 / (groups - 1))):
        return None
    share = _class_share(label) if averaged else None
    if share is not None and label is not None and label.n > groups:
        ratio = f * (groups - 1) / (label.n - groups)  # F back to eta2 / (1 - eta2)
        eta2 = 1.0 if not math.isfinite(ratio) else ratio / (1.0 + ratio)
        if eta2 / (share * (1.0 - share)) <= CLASS_SPREAD:
            return None
    return f


def _class_share(label: Moments | None) -> float | None:
    """The share of the larger of a label's two values, when its moments (column 0) are
    those of two values only (``sd² = (mean - lo)(hi - mean)``); else None."""
    if label is None or label.n < 2:
        return None
    lo, hi, mean, sd = (float(v[0]) for v in (label.lo, label.hi, label.mean, label.sd))
    if not hi > lo:
        return None
    p = (mean - lo) / (hi - lo)
    if not 0.0 < p < 1.0:
        return None
    two = p * (1.0 - p) * (hi - lo) ** 2
    return p if abs(sd * sd - two) <= 1e-6 * two else None


#: Rows per group when a row copy's order is judged (:func:`rows_sql`): a page group's size
#: at the default ``block_size``.
GROUP_ROWS = 512


def rows_sql(table: str) -> str:
    """SQL over a row copy ``table`` (columns ``y``: the label, in its stored order): per
    group of :data:`GROUP_ROWS` consecutive rows, its rows, the label's mean, population
    variance, minimum and maximum (for :func:`rows_clustered`)."""
    return ("SELECT count(*) AS n, avg(q.y) AS mean, coalesce(var_pop(q.y), 0) AS var, "
            "min(q.y) AS lo, max(q.y) AS hi FROM (SELECT (row_number() OVER () - 1) / "
            f"{GROUP_ROWS} AS g, c.y FROM {table} AS c) AS q GROUP BY q.g")


def rows_clustered(groups: list[tuple], averaged: bool = False) -> float | None:
    """:func:`label_clustered` of the label whose groups :func:`rows_sql` summed: its
    ``(n, mean, variance, lo, hi)`` per group (``averaged``: as there)."""
    if len(groups) < 2:
        return None
    n, mean, var, lo, hi = np.array(groups, dtype=float).T
    rows = float(n.sum())
    m = float((n * mean).sum() / rows)
    between = float((n * (mean - m) ** 2).sum())
    within = float((n * var).sum())

    def one(sd: float) -> Moments:
        return Moments(int(rows), np.array([m]), np.array([sd]), np.array([lo.min()]),
                       np.array([hi.max()]))

    label = one(math.sqrt((between + within) / rows))
    order = order_ratios(label, one(math.sqrt(between / rows)), len(groups))
    return label_clustered(order, len(groups), label, averaged)


def describe(relation: str, label: str, f: float) -> str:
    """What a clustered table is, for notes and messages."""
    times = "far more than" if not math.isfinite(f) else f"{f:,.0f} times as much as"
    return (f"the rows of {relation} are stored in an order that follows the label "
            f'"{label}": its mean varies between page groups {times} in random order')
