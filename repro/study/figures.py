"""Figures 2 and 3, the reduced-data curve and Table 1 of the paper, as tables and plots (the plot_* functions).

Input everywhere: per-net scores, [(net name, metric)] as `repro.study.results.scores` returns them (the metric is the
mean of a net's 10 best test top-1 values). Names are the cells' names; names that are not cells are ignored
with a warning. The grouping and averaging follow the paper's notebook (its plotting notebook):
  * Figure 2 uses the random splits only: base = all 8 half nets (A and B), BnB = the AnA selffers, AnB pools
    A→B and B→A; a point is the plain mean over the nets present (k of them); every line starts at the base mean.
  * Figure 3: natural/man-made transfers by target content (A = natural), random frozen features against
    netbase, and every curve relative to its own n = 0 value; the m/n mean weights both directions equally.
  * Table 1 pools all AnB+ (and BnB+) nets whose n lies in the range, minus the base mean (and the BnB+ mean).
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Iterable, Mapping

from ..atomic import atomic_write, atomic_write_text
from .grid import Cell, GridError, cell_from_name
from .intervals import mean_ci

FIG2_CONDITIONS = ("base", "BnB", "BnB+", "AnB", "AnB+")
TABLE1_RANGES = ((1, 7), (3, 7), (5, 7))
LAYERS = tuple(range(1, 8))


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def classify(net_scores: Mapping[str, float] | Iterable[tuple[str, float]]) -> list[tuple[Cell, float]]:
    """[(cell, score)] for every name that is a cell name; warns once about the others."""
    items = net_scores.items() if isinstance(net_scores, Mapping) else net_scores
    out, unknown = [], []
    for name, score in items:
        try:
            out.append((cell_from_name(name), float(score)))
        except GridError:
            unknown.append(name)
    if unknown:
        warnings.warn(f"ignoring {len(unknown)} runs whose names are not cell names: {sorted(unknown)[:8]}",
                      stacklevel=2)
    return out


def _by(cells: list[tuple[Cell, float]], pred) -> list[float]:
    return [s for c, s in cells if pred(c)]


def _random_split(c: Cell) -> bool:
    return c.split.isdigit()


def figure2_nets(net_scores) -> dict[tuple[str, int], list[float]]:
    """{(condition, n): [score of each net]} of Figure 2's top panel; ("base", 0) holds the 8 half nets."""
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for c, s in classify(net_scores):
        if not _random_split(c) or c.kind not in ("base", "transfer"):
            continue
        groups[(c.condition, c.n)].append(s)
    return dict(groups)


def base_mean(net_scores) -> float | None:
    """Mean of the random-split half nets: the n = 0 point of every Figure 2 line."""
    return _mean(figure2_nets(net_scores).get(("base", 0), []))


def figure2_table(net_scores) -> list[dict]:
    """Rows {condition, n, top1, k, ci95}: the base mean at n = 0, then each condition's per-n mean for n = 1..7.

    ci95 is the half-width of the two-sided 95% Student-t interval of the mean over the k nets (None for k < 2).
    """
    nets = figure2_nets(net_scores)
    rows = []
    for cond in FIG2_CONDITIONS:
        for n in ([0] if cond == "base" else LAYERS):
            vals = nets.get((cond, n), [])
            if vals:
                rows.append({"condition": cond, "n": n, "top1": _mean(vals), "k": len(vals),
                             "ci95": mean_ci(vals)[1]})
    return rows


def figure3_table(net_scores) -> list[dict]:
    """Rows {series, n, top1, relative, k} for Figure 3.

    series: natman_natural (n=0 halfnatmanA, then transfernatmanBA: man-made → natural), natman_manmade
    (halfnatmanB, transfernatmanAB), natman_mean (the two averaged, equal weights), random_features (netbase,
    nolearn_1_n), anb_random (8-base mean, random-split AnB means). relative = top1 minus the series' n = 0 value.
    """
    cells = classify(net_scores)

    def natman(target):
        pts = {}
        for c, s in cells:
            if c.split == "natman" and c.target == target and not c.fine_tune:
                pts.setdefault(c.n, []).append(s)
        return {n: (_mean(v), len(v)) for n, v in pts.items()}

    series = {"natman_natural": natman("A"), "natman_manmade": natman("B")}
    nat, man = series["natman_natural"], series["natman_manmade"]
    series["natman_mean"] = {n: ((nat[n][0] + man[n][0]) / 2, nat[n][1] + man[n][1]) for n in nat if n in man}
    rf = {}
    for c, s in cells:
        if (c.kind == "base" and c.split == "whole") or c.kind == "nolearn":
            rf.setdefault(c.n, []).append(s)
    series["random_features"] = {n: (_mean(v), len(v)) for n, v in rf.items()}
    nets = figure2_nets(net_scores)
    anb = {n: nets.get(("AnB", n), []) for n in LAYERS}
    anb[0] = nets.get(("base", 0), [])
    series["anb_random"] = {n: (_mean(v), len(v)) for n, v in anb.items() if v}

    rows = []
    for name, pts in series.items():
        ref = pts.get(0, (None,))[0]
        for n in sorted(pts):
            top1, k = pts[n]
            rows.append({"series": name, "n": n, "top1": top1, "relative": None if ref is None else top1 - ref,
                         "k": k})
    return rows


def reduced_table(net_scores) -> list[dict]:
    """Rows {per_class, top1, k} of the reduced-data plot (1300 = the whole training set)."""
    pts = defaultdict(list)
    for c, s in classify(net_scores):
        if c.kind == "reduced":
            pts[c.per_class].append(s)
    return [{"per_class": k, "top1": _mean(v), "k": len(v)} for k, v in sorted(pts.items())]


def table1(net_scores, ranges=TABLE1_RANGES) -> list[dict]:
    """Paper Table 1: the boost of AnB+ over base and over BnB+ for layer ranges, pooled over nets.

    Rows {layers, anb_plus, base, bnb_plus, boost_over_base, boost_over_bnb_plus, boost_over_base_per_n,
    boost_over_bnb_plus_per_n, k_anb_plus, k_bnb_plus}; the *_per_n columns average the per-n means instead
    (both are given; the pooled ones are the published 1.6/1.4, 1.8/1.4, 2.1/1.7 %).
    """
    nets = figure2_nets(net_scores)
    base = _mean(nets.get(("base", 0), []))
    rows = []
    for lo, hi in ranges:
        ns = range(lo, hi + 1)
        ap = [s for n in ns for s in nets.get(("AnB+", n), [])]
        bp = [s for n in ns for s in nets.get(("BnB+", n), [])]
        ap_n = _mean(_mean(nets[("AnB+", n)]) for n in ns if nets.get(("AnB+", n)))
        bp_n = _mean(_mean(nets[("BnB+", n)]) for n in ns if nets.get(("BnB+", n)))
        a, b = _mean(ap), _mean(bp)
        rows.append({
            "layers": f"{lo}-{hi}", "anb_plus": a, "base": base, "bnb_plus": b,
            "boost_over_base": _diff(a, base), "boost_over_bnb_plus": _diff(a, b),
            "boost_over_base_per_n": _diff(ap_n, base), "boost_over_bnb_plus_per_n": _diff(ap_n, bp_n),
            "k_anb_plus": len(ap), "k_bnb_plus": len(bp),
            # Half-width of the 95% t interval of the pooled AnB+ mean (the base mean taken as fixed): the
            # boost's sampling error over the AnB+ nets.
            "boost_over_base_ci95": mean_ci(ap)[1]})
    return rows


def _diff(a, b):
    return None if a is None or b is None else a - b


# ---- plots (matplotlib, Agg) ------------------------------------------------------------------------------------
# Colours and marker offsets of the notebook (the paper's figures).
_FIG2_STYLE = {  # condition: (x offset, marker, face colour, line colour)
    "BnB": (-0.25, "o", "#0000aa", "#0000aa"), "BnB+": (-0.09, "o", "#aaaaff", "#aaaaff"),
    "AnB": (0.09, "D", "#cc0000", "#cc0000"), "AnB+": (0.27, "D", "#ffaaaa", "#ffaaaa")}
_PAPER = dict(color="0.55", lw=1, ls=":", marker=".", ms=4)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, stem) -> list:
    """Write <stem>.png and <stem>.pdf atomically (repro.atomic: temp file in the same folder, then rename)."""
    from pathlib import Path

    stem = Path(stem)
    out = [atomic_write(stem.with_suffix(f".{ext}"),
                        lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight"))
           for ext in ("png", "pdf")]
    _pyplot().close(fig)
    return out


def _fig2_lines(net_scores):
    """{condition: (xs, ys)} of Figure 2's bottom panel: each line starts at the base mean at n = 0."""
    base = base_mean(net_scores)
    lines = {}
    for cond in FIG2_CONDITIONS[1:]:
        pts = [(r["n"], r["top1"]) for r in figure2_table(net_scores) if r["condition"] == cond]
        if base is not None:
            pts = [(0, base)] + pts
        if pts:
            lines[cond] = tuple(zip(*pts))
    return base, lines


def plot_figure2(net_scores, stem, paper=None) -> list:
    """Figure 2: top, every net as a marker; bottom, the per-n means with the paper's shaded regions."""
    plt = _pyplot()
    fig, (top, bot) = plt.subplots(2, 1, figsize=(7, 9))
    nets = figure2_nets(net_scores)
    base_vals = nets.get(("base", 0), [])
    top.plot([0] * len(base_vals), base_vals, "o", mfc="white", mec="black", label="base")
    for cond, (dx, mk, face, _) in _FIG2_STYLE.items():
        xs = [n + dx for n in LAYERS for _ in nets.get((cond, n), [])]
        ys = [s for n in LAYERS for s in nets.get((cond, n), [])]
        top.plot(xs, ys, mk, mfc=face, mec="black", label=cond, ls="none")
        if cond.endswith("+"):
            top.plot(xs, ys, "+", color="black", ms=5, ls="none")
    base, lines = _fig2_lines(net_scores)
    if base is not None:
        bot.plot([0, 7], [base, base], "k--", lw=1)
        x = list(range(8))

        def at(cond):
            xs, ys = lines.get(cond, ((), ()))
            d = dict(zip(xs, ys))
            return [d.get(n, float("nan")) for n in x]
        bot.fill_between(x, base, at("AnB+"), color="#ffeeee", lw=0)
        bot.fill_between(x, base, at("BnB"), color="#eeeeff", lw=0)
        bot.fill_between(x, at("BnB"), at("AnB"), color="#ffcccc", lw=0)
    for cond, (xs, ys) in lines.items():
        _, mk, face, line = _FIG2_STYLE[cond]
        bot.plot(xs, ys, "-" + mk, color=line, mfc=face, mec="black", label=cond)
    # Mean ± 95% t interval wherever a point has more than one net (e.g. the mini study's split seeds).
    for r in figure2_table(net_scores):
        if r["ci95"] is not None:
            dx, _, _, line = _FIG2_STYLE.get(r["condition"], (0.0, "", "", "black"))
            bot.errorbar([r["n"] + dx * 0.3], [r["top1"]], yerr=[r["ci95"]], color=line, capsize=2, lw=1,
                         ls="none")
    if paper is not None:
        for i, (xs, ys) in enumerate(_fig2_lines(paper)[1].values()):
            bot.plot(xs, ys, label="paper" if i == 0 else None, **_PAPER)
    for ax in (top, bot):
        ax.set_xlim(-0.2, 7.3)
        ax.set_xlabel("Layer n at which network is chopped and retrained")
        ax.set_ylabel("Top-1 accuracy (higher is better)")
        ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, stem)


def _series(rows, name, col="top1"):
    pts = [(r["n"], r[col]) for r in rows if r["series"] == name and r[col] is not None]
    return tuple(zip(*pts)) if pts else ((), ())


def plot_figure3(net_scores, stem, paper=None) -> list:
    """Figure 3: natural/man-made transfer, random frozen filters, and all three relative to their n = 0."""
    plt = _pyplot()
    fig = plt.figure(figsize=(10, 8))
    nm, rf, rel = fig.add_subplot(2, 2, 1), fig.add_subplot(2, 2, 2), fig.add_subplot(2, 1, 2)
    rows = figure3_table(net_scores)
    prows = figure3_table(paper) if paper is not None else []
    for name, lab in (("natman_natural", "target natural"), ("natman_manmade", "target man-made")):
        nm.plot(*_series(rows, name), "-h", color="#ff8800", mec="black", label=lab)
        nm.plot(*_series(prows, name), **_PAPER)
    rf.plot(*_series(rows, "random_features"), "-v", color="#dddd00", mec="black", label="random, frozen")
    rf.plot(*_series(prows, "random_features"), **_PAPER)
    for name, mk, col, lab in (("anb_random", "D", "#cc0000", "mean AnB, random splits"),
                               ("natman_mean", "h", "#ff8800", "mean AnB, m/n split"),
                               ("random_features", "v", "#dddd00", "random features")):
        rel.plot(*_series(rows, name, "relative"), "-" + mk, color=col, mec="black", label=lab)
        rel.plot(*_series(prows, name, "relative"), label="paper" if prows and name == "anb_random" else None,
                 **_PAPER)
    rel.plot([0], [0], "o", mfc="white", mec="black", label="reference")
    rel.set_ylim(-0.30, 0.03)
    nm.set_title("Man-made/Natural split")
    rf.set_title("Random, untrained filters")
    rel.set_ylabel("Relative top-1 accuracy (higher is better)")
    for ax in (nm, rf, rel):
        ax.set_xlim(-0.2, 7.3)
        ax.set_xlabel("Layer n at which network is chopped and retrained")
        ax.legend(fontsize=8)
    return save_figure(fig, stem)


def plot_reduced(net_scores, stem, paper=None) -> list:
    """The supplementary reduced-data plot: top-1 against images per class, linear and log-log."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    pts = [(r["per_class"], r["top1"]) for r in reduced_table(net_scores)]
    ppts = [(r["per_class"], r["top1"]) for r in reduced_table(paper)] if paper is not None else []
    for ax in axes:
        if pts:
            ax.plot(*zip(*pts), "-o", color="black", mfc="white", label="top-1")
        if ppts:
            ax.plot(*zip(*ppts), label="paper", **_PAPER)
        ax.set_xlabel("Images per class")
        ax.set_ylabel("Top-1 accuracy")
        ax.legend(fontsize=8)
    axes[0].set_xlim(0, 1350)
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    return save_figure(fig, stem)


# ---- tables on disk ---------------------------------------------------------------------------------------------
FIG2_COLUMNS = ("condition", "n", "top1", "k", "ci95")
FIG3_COLUMNS = ("series", "n", "top1", "relative", "k")
REDUCED_COLUMNS = ("per_class", "top1", "k")
TABLE1_COLUMNS = ("layers", "anb_plus", "base", "bnb_plus", "boost_over_base", "boost_over_bnb_plus",
                  "boost_over_base_per_n", "boost_over_bnb_plus_per_n", "k_anb_plus", "k_bnb_plus",
                  "boost_over_base_ci95")


def _fmt(v, digits=7):
    if v is None:
        return ""
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _fixed(v, decimals):
    return "" if v is None else (f"{v:.{decimals}f}" if isinstance(v, float) else str(v))


def write_csv(rows, path, columns):
    """CSV with a header row; floats to 7 significant digits, missing values empty."""
    lines = [",".join(columns)] + [",".join(_fmt(r[c]) for c in columns) for r in rows]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _md_table(rows, columns, paper_rows=None, key=(), values=("top1",), decimals=4):
    """Markdown table of `rows`; with paper rows, each value column gets the paper's value (matched on key)."""
    ref = {tuple(r[k] for k in key): r for r in paper_rows} if paper_rows is not None else None
    cols = [c for c in columns for c in ((c, f"paper {c}") if ref is not None and c in values else (c,))]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        p = ref.get(tuple(r[k] for k in key), {}) if ref is not None else {}
        cells = [_fixed(v, decimals) for c in columns
                 for v in ((r[c], p.get(c)) if ref is not None and c in values else (r[c],))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _pct(rows):
    return [{k: (100 * v if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def write_report(net_scores, out_dir, paper=None) -> list:
    """Every figure (PNG + PDF) and table (CSV + results.md) of the paper for `net_scores` into `out_dir`.

    With `paper` (the paper's per-net scores, e.g. `repro.resources.paper_scores()`), the paper's numbers are
    drawn and tabulated beside ours.
    """
    from pathlib import Path
    out_dir = Path(out_dir)
    net_scores = classify_names(net_scores)
    paper = classify_names(paper) if paper is not None else None
    tables = {"figure2": (figure2_table, FIG2_COLUMNS, ("condition", "n")),
              "figure3": (figure3_table, FIG3_COLUMNS, ("series", "n")),
              "reduced": (reduced_table, REDUCED_COLUMNS, ("per_class",)),
              "table1": (table1, TABLE1_COLUMNS, ("layers",))}
    written, md = [], ["# Results", "", f"{len(net_scores)} nets; metric: mean of each net's 10 best test "
                       "top-1 values, as the paper's notebook computes it."]
    for name, (fn, columns, key) in tables.items():
        rows = fn(net_scores)
        written.append(write_csv(rows, out_dir / f"{name}.csv", columns))
        prow = fn(paper) if paper is not None else None
        if name == "table1":   # in percent, as published
            rows, prow = _pct(rows), (_pct(prow) if prow is not None else None)
            shown = ("layers", "boost_over_base", "boost_over_bnb_plus", "boost_over_base_per_n",
                     "boost_over_bnb_plus_per_n", "k_anb_plus", "k_bnb_plus", "boost_over_base_ci95")
            md += ["", "## Table 1 (boost of AnB+, percentage points)", "",
                   _md_table(rows, shown, prow, key, shown[1:5], decimals=2)]
        else:
            values = ("top1", "relative") if name == "figure3" else ("top1",)
            md += ["", f"## {name}", "", _md_table(rows, columns, prow, key, values)]
    written.append(atomic_write_text(out_dir / "results.md", "\n".join(md) + "\n"))
    written += plot_figure2(net_scores, out_dir / "figure2", paper)
    written += plot_figure3(net_scores, out_dir / "figure3", paper)
    written += plot_reduced(net_scores, out_dir / "reduced", paper)
    return written


def classify_names(net_scores) -> list[tuple[str, float]]:
    """Keep the (name, score) pairs whose names are cells (one warning lists the others)."""
    return [(c.name, s) for c, s in classify(net_scores)]
