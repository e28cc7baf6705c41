"""Targets, the Markdown and JSON results, the PNG chart and the stdout summary of a run.

``python benchmarks/report.py results/<file>.json`` redraws the Markdown and PNG of a run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# (key, peer key, target key): the paths table compares each path with its peer
PEERS = {
    "row": ("row_floor", "row"),
    "row_floor": (None, None),
    "packed": ("sklearn", "packed_vs_sklearn"),
    "parallel": ("packed", "parallel"),
    "parallel_1": ("packed", None),
    "sklearn": ("numpy", None),
    "numpy": (None, None),
    "export": (None, None),
    "pandas": ("export", None),
    "packing": ("export", None),
    "pack": ("export", None),
}
IN_DATABASE_PATHS = {"row", "row_floor", "packed", "parallel", "parallel_1", "packing", "pack"}
IN_DATABASE_PHASES = ("in-database", "in-database end to end")


def _med(r: dict[str, Any], key: str) -> float | None:
    p = r["paths"].get(key)
    return p.get("median") if p else None


def _e2e(r: dict[str, Any], key: str) -> float | None:
    e = r["end_to_end"].get(key)
    v = e.get("seconds_to_target") if e else None
    return v if v is not None and math.isfinite(v) else None


def _quality(r: dict[str, Any], key: str) -> float | None:
    """Seconds from the table to within 1% of lbfgs's validation loss (None: never reached)."""
    e = r["end_to_end"].get(key)
    v = e.get("seconds_to_quality") if e else None
    return v if v is not None and math.isfinite(v) else None


def _faster(*xs: float | None) -> float | None:
    vals = [x for x in xs if x is not None]
    return min(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _target(key: str, name: str, value: float | None, op: str, bound: float, unit: str = "",
            note: str = "") -> dict[str, Any]:
    """One target: measured value, bound, met, and by how much it was missed."""
    t: dict[str, Any] = {"key": key, "target": name, "measured": value, "op": op,
                         "bound": bound, "unit": unit, "note": note}
    if value is None:
        t.update(met=None, miss="not measured")
        return t
    met = value <= bound if op == "<=" else value >= bound
    t["met"] = bool(met)
    if met:
        t["miss"] = ""
    elif op == "<=":
        t["miss"] = f"missed by {value / bound:.2f}× ({_fmt(value)}{unit} vs ≤ {bound:g}{unit})"
    else:
        t["miss"] = (f"missed by {100 * (1 - value / bound):.0f}% "
                     f"({_fmt(value)}{unit} vs ≥ {bound:g}{unit})")
    return t


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on this run."""
    rows, d = r["rows"], r["features"]
    big = "" if rows >= 10_000_000 else "target defined on 10M rows; indicative at this size"
    row_rps = r["paths"].get("row", {}).get("rows_per_s")
    mem = r.get("memory", {})
    ctl = [mem[p]["controller_mb"] for p in IN_DATABASE_PHASES if p in mem]
    backend = [m["backend_mb"] for m in mem.values()] if r.get("memory_observes_server") else []
    return [
        _target("packed_vs_sklearn", "packed epoch ≤ 0.5 × scikit-learn SGDClassifier epoch",
                _ratio(_med(r, "packed"), _med(r, "sklearn")), "<=", 0.5, "×"),
        _target("packed_vs_numpy", "packed epoch ≤ 3 × numpy mini-batch floor",
                _ratio(_med(r, "packed"), _med(r, "numpy")), "<=", 3.0, "×"),
        _target("preparation", "preparation with the defaults ≤ 0.3 × binary COPY export",
                _ratio((r["end_to_end"].get("in-database") or {}).get("preparation"),
                       _med(r, "export")), "<=", 0.3, "×"),
        _target("e2e_quality", "time to quality with the defaults ≤ 0.5 × the faster of "
                "(COPY export + SGDClassifier) and (COPY export + lbfgs)",
                _ratio(_quality(r, "in-database"),
                       _faster(_quality(r, "export+sgd"), _quality(r, "export+lbfgs"))),
                "<=", 0.5, "×", "quality: validation log-loss within 1% of lbfgs's"),
        _target("row", "row-at-a-time epoch ≥ 300k rows/s at 100 features",
                row_rps / 1000 if row_rps else None, ">=", 300.0, "k rows/s",
                "" if d == 100 else f"measured at {d} features"),
        _target("parallel", "parallel (2 workers) ≥ 1.6 × serial packed epoch",
                _ratio(_med(r, "packed"), _med(r, "parallel")), ">=", 1.6, "×", big),
        _target("controller_rss", "controller RSS < 200 MB (in-database training)",
                max(ctl) if ctl else None, "<=", 200.0, " MB", big),
        _target("backend_rss", "no backend over 1 GB", max(backend) if backend else None,
                "<=", 1024.0, " MB", "; ".join(x for x in (
                    big, "private memory: RSS without the shared buffer pool") if x)),
    ]


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def markdown(r: dict[str, Any]) -> str:
    """The Markdown results: machine, paths, end to end, targets, memory."""
    m = r["machine"]
    by_key = {t["key"]: t for t in r["targets"]}
    lines = [
        f"# bismarckpy benchmark: {r['rows']:,} rows × {r['features']} features",
        "",
        f"{r['date']} · commit {m.get('commit')} · {r['epochs']} epochs × {r['repeats']} runs "
        f"per path (medians) · seed {r['seed']} · wall {r['wall_seconds']:.0f} s",
        "",
        f"- **Machine**: {m['cpu']}, {m['cores']} logical cores ({m['physical_cores']} "
        f"physical), {m['ram_gb']} GB RAM, {m['os']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_average_end', []))}",
        f"- **Server**: PostgreSQL {m['postgresql']}, server numpy {m['server_numpy']}; "
        + ", ".join(f"{k}={v}" for k, v in m["server_settings"].items()),
        f"- **Client**: Python {m['python']}, numpy {m['client_numpy']}, scikit-learn "
        f"{m['client_sklearn']}, pandas {m['client_pandas']}, psycopg {m['psycopg']}",
        f"- **Data**: table `{r['table']}` (id int, x float8[], y int), x ~ U(-1, 1), "
        "y ~ Bernoulli(sigmoid(x·w + b)) for a fixed w; "
        + (f"built in {r['table_build_seconds']:.1f} s" if r["table_build_seconds"]
           else "reused"),
        "",
        "## Paths",
        "",
        "| path | seconds (median) | rows/s | ratio vs peer | target | met? |",
        "|---|---:|---:|---|---|---|",
    ]
    for key, p in r["paths"].items():
        peer, tkey = PEERS.get(key, (None, None))
        if p.get("unavailable"):
            lines.append(f"| {p['label']} | not available: {p['unavailable']} | | | | |")
            continue
        ratio = ""
        if peer and peer in r["paths"] and r["paths"][peer].get("median"):
            ratio = f"{p['median'] / r['paths'][peer]['median']:.3g} × {peer}"
            if key.startswith("parallel"):
                ratio = f"speed-up {r['paths'][peer]['median'] / p['median']:.3g} × over serial"
        t = by_key.get(tkey) if tkey else None
        target, met = _target_cells(t)
        if key == "packed" and "packed_vs_numpy" in by_key:
            t2 = by_key["packed_vs_numpy"]
            target += "; " + t2["target"]
            met += "; " + _target_cells(t2)[1]
            if r["paths"].get("numpy", {}).get("median"):
                ratio += f"; {p['median'] / r['paths']['numpy']['median']:.3g} × numpy"
        lines.append(f"| {p['label']} | {_fmt(p['median'])} | {_fmt(p['rows_per_s'])} | "
                     f"{ratio} | {target} | {met} |")
    e2e = {k: v for k, v in r["end_to_end"].items() if isinstance(v, dict) and "label" in v}
    if e2e:
        lines += [
            "",
            f"## End to end: table → model within {100 * r.get('within', 0.01):g}% of the "
            "validation loss of scikit-learn's LogisticRegression (lbfgs)",
            "",
            "| trainer | seconds to quality (1% of lbfgs) | in-database ÷ this | "
            "seconds to target (1% of own best) | best validation loss | epochs to target | "
            "seconds to within 1% of the overall best |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        ind = _quality(r, "in-database")
        for key, e in e2e.items():
            q = e.get("seconds_to_quality")
            ratio = _fmt(ind / q) if ind and q and key != "in-database" else ""
            lines.append(f"| {e['label']} | {_fmt(q) if q is not None else 'not reached'} | "
                         f"{ratio} | {_fmt(e.get('seconds_to_target'))} | "
                         f"{_fmt(e.get('best_validation_loss'), 5)} | "
                         f"{_fmt(e.get('epochs_to_target'))} | "
                         f"{_fmt(e.get('seconds_to_overall_best'))} |")
        ind_e = r["end_to_end"].get("in-database") or {}
        if ind_e.get("whole_call_seconds"):
            lines += ["", f"The defaults' whole call (preparation, {_fmt(ind_e.get('epochs_run'))}"
                      f" epochs until the convergence check stopped it or max_epochs, storing "
                      f"the model) took {_fmt(ind_e['whole_call_seconds'])} s; the defaults "
                      f"resolved to {json.dumps(ind_e.get('resolved_params', {}))}."]
        vr = r["end_to_end"].get("validation_rows")
        if vr:
            lines += ["", f"Validation rows: {vr['export']:,} exported with the training "
                      f"loop's hash split; {vr['in_database']:,} held out in the database. "
                      "Export trainers include the median binary COPY export time."]
    lines += _breakdown(r)
    lines += ["", "## Targets", "", "| target | measured | met? | note |", "|---|---:|---|---|"]
    for t in r["targets"]:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        note = "; ".join(x for x in (t["miss"] if t["met"] is False else "", t["note"]) if x)
        lines.append(f"| {t['target']} | {_fmt(t['measured'])}{t['unit'] if t['measured'] else ''}"
                     f" | {met} | {note} |")
    lines += ["", "## Memory (peaks per phase, sampled every 0.1 s)", "",
              "Server processes: private memory (RSS without shared pages: the pages of the "
              "shared buffer pool a backend touched count in its RSS but belong to the "
              "server); the whole RSS of own backends beside it.", "",
              "| phase | controller RSS MB | largest own backend or parallel worker, private "
              "MB | the same, whole RSS MB | largest other server process, private MB "
              "(shared server) |", "|---|---:|---:|---:|---:|"]
    for phase, v in r.get("memory", {}).items():
        seen = r.get("memory_observes_server")
        backend = _fmt(v["backend_mb"]) if seen else "not visible"
        whole = _fmt(v.get("backend_rss_mb")) if seen and "backend_rss_mb" in v else "–"
        other = _fmt(v.get("other_server_mb")) if seen else "not visible"
        lines.append(f"| {phase} | {_fmt(v['controller_mb'])} | {backend} | {whole} | {other} |")
    if r.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def _breakdown(r: dict[str, Any]) -> list[str]:
    """Where the in-database runs spend their time, by statement kind (median seconds)."""
    runs = [(p["label"], p) for p in r["paths"].values() if p.get("statements")]
    e = r["end_to_end"].get("in-database")
    if e and e.get("statements"):
        runs.append((f"end to end: {e['label']}", e))
    if not runs:
        return []
    kinds = sorted({k for _, p in runs for k in p["statements"]})
    lines = ["", "## Where in-database training time goes (seconds per run, median)", "",
             "| run | preparation | " + " | ".join(kinds) + " |",
             "|---|" + "---:|" * (len(kinds) + 1)]
    for label, p in runs:
        lines.append(f"| {label} | {_fmt(p.get('preparation'))} | "
                     + " | ".join(_fmt(p["statements"].get(k)) for k in kinds) + " |")
    lines += ["", "Preparation is everything before the first epoch (validation of the input, "
              "the shuffled or packed copy, standardisation moments). `epochs` sums every "
              "epoch of the run."]
    return lines


def _target_cells(t: dict[str, Any] | None) -> tuple[str, str]:
    if not t:
        return "", ""
    if t["met"] is None:
        return t["target"], "–"
    return t["target"], "yes" if t["met"] else f"**no**: {t['miss']}"


def chart(r: dict[str, Any], path: Path) -> None:
    """Bar chart: per-path medians (log scale) and end-to-end seconds to target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [(p["label"], p["median"], k in IN_DATABASE_PATHS) for k, p in r["paths"].items()
             if p.get("median")]
    e2e = [(e["label"], e.get("seconds_to_quality"), k == "in-database")
           for k, e in r["end_to_end"].items()
           if isinstance(e, dict) and e.get("seconds_to_quality")
           and math.isfinite(e["seconds_to_quality"])]
    fig, axes = plt.subplots(2, 1, figsize=(10, 2.2 + 0.42 * (len(paths) + len(e2e))),
                             gridspec_kw={"height_ratios": [max(len(paths), 1),
                                                            max(len(e2e), 1)]})
    for ax, items, title in ((axes[0], paths, "one epoch / one pass, median seconds"),
                             (axes[1], e2e, "end to end: seconds to within 1% of lbfgs's "
                              "validation loss")):
        if not items:
            ax.set_visible(False)
            continue
        labels = [lab.replace(", ", "\n", 1) if len(lab) > 45 else lab for lab, _, _ in items]
        vals = [v for _, v, _ in items]
        colors = ["tab:blue" if inside else "tab:gray" for _, _, inside in items]
        ax.barh(range(len(vals)), vals, color=colors)
        ax.set_yticks(range(len(vals)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {_fmt(v)} s", va="center", fontsize=7)
        ax.set_xlim(min(vals) / 2, max(vals) * 6)
    axes[0].legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in
                            ("tab:blue", "tab:gray")],
                   labels=["in the database", "export / in memory"], fontsize=7,
                   loc="lower right")
    fig.suptitle(f"bismarckpy, {r['rows']:,} rows × {r['features']} features — "
                 f"{r['machine']['cpu']}, {r['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict[str, Any], out: Path, draw_chart: bool = True) -> list[Path]:
    """Write ``<date>-<rows>x<features>.json``, ``.md`` and ``.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{r['date'][:10]}-{r['rows']}x{r['features']}"
    written = [out / f"{stem}.json", out / f"{stem}.md"]
    written[0].write_text(json.dumps(r, indent=1, default=_json_default) + "\n")
    written[1].write_text(markdown(r))
    if draw_chart:
        png = out / f"{stem}.png"
        chart(r, png)
        written.append(png)
    return written


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def summary(r: dict[str, Any]) -> str:
    """The ratios, for stdout."""
    lines = [f"bismarckpy benchmark, {r['rows']:,} rows × {r['features']} features:"]
    for p in r["paths"].values():
        if p.get("median"):
            lines.append(f"  {p['label']:<72} {p['median']:10.4f} s  "
                         f"{_fmt(p['rows_per_s']):>12} rows/s")
    for e in r["end_to_end"].values():
        if isinstance(e, dict) and "label" in e:
            lines.append(f"  end to end: {e['label']:<60} "
                         f"{_fmt(e.get('seconds_to_quality')):>10} s to lbfgs quality")
    lines.append("targets:")
    for t in r["targets"]:
        mark = {True: "met   ", False: "MISSED", None: "n/a   "}[t["met"]]
        lines.append(f"  [{mark}] {t['target']}: {_fmt(t['measured'])}{t['unit']}"
                     + (f" — {t['miss']}" if t["met"] is False else "")
                     + (f" ({t['note']})" if t["note"] else ""))
    return "\n".join(lines)


def rerender(json_path: Path) -> list[Path]:
    """Rewrite the Markdown and PNG of a results JSON (after a change to this module)."""
    r = json.loads(json_path.read_text())
    r["targets"] = targets(r)
    return write(r, json_path.parent)


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        for p in rerender(Path(arg)):
            print(f"wrote {p}")
