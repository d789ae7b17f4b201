"""The report's PNG figures (matplotlib, Agg backend: no display needed).

Each function takes plain rows/dicts and a path, draws one figure a person would rather look at than
a table, and returns the path. Colours follow the synthetic fraction p (viridis: dark = clean).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402


def _colour(p: float):
    return plt.cm.viridis(0.05 + 0.85 * p)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def _mean_by(rows, *keys):
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(float(row["loss"]))
    return {k: (float(np.mean(v)), float(np.std(v)) if len(v) > 1 else 0.0) for k, v in groups.items()}


def loss_vs_budget(rows: list[dict], students_fit: dict, path: Path) -> Path:
    """Log-log test loss vs token budget, one line per fraction, fitted curve and plateau dashed."""
    students = sorted({r["curve"] for r in rows})
    fig, axes = plt.subplots(1, len(students), figsize=(5.5 * len(students), 4.2), squeeze=False)
    for ax, student in zip(axes[0], students):
        student_rows = [r for r in rows if r["curve"] == student]
        means = _mean_by(student_rows, "synthetic_fraction", "token_budget")
        fit = students_fit.get(student, {}).get("curves", {})
        budgets = sorted({n for _, n in means})
        grid = np.geomspace(budgets[0], budgets[-1] * 4, 100)
        for p in sorted({p for p, _ in means}):
            ns = [n for n in budgets if (p, n) in means]
            ys = [means[(p, n)][0] for n in ns]
            errs = [means[(p, n)][1] for n in ns]
            ax.errorbar(ns, ys, yerr=errs, marker="o", color=_colour(p), label=f"p = {p:g}", capsize=3, lw=1.5)
            per = {float(q): v for q, v in fit.get("per_fraction", {}).items()}.get(float(p))
            amplitude = per and (per.get("A") or fit.get("A"))
            alpha = per and (per.get("alpha") or fit.get("alpha"))
            if per and amplitude is not None and alpha is not None:
                ax.plot(grid, per["E"] + amplitude * grid ** (-alpha), ls="--", color=_colour(p), lw=1, alpha=0.8)
                ax.axhline(per["E"], ls=":", color=_colour(p), lw=0.8, alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))  # losses, not powers of ten
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
        ax.set_xlabel("training tokens n")
        ax.set_ylabel("test loss on human text (nats/token)")
        ax.set_title(f"{student}: loss vs data (dashed: fit, dotted: plateau E_p)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plateau_vs_fraction(students_fit: dict, path: Path) -> Path:
    """Fitted plateau E_p (with bootstrap interval) vs p, against E_0 + c^2 p^2 (+ b p(1-p))."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for i, (student, fit) in enumerate(sorted(students_fit.items())):
        per = {float(p): v for p, v in fit["curves"]["per_fraction"].items()}
        ps = sorted(per)
        es = [per[p]["E"] for p in ps]
        lo = [(per[p].get("E_ci") or [e, e])[0] for p, e in zip(ps, es)]
        hi = [(per[p].get("E_ci") or [e, e])[1] for p, e in zip(ps, es)]
        colour = plt.cm.tab10(i)
        ax.errorbar(ps, es, yerr=[np.subtract(es, lo), np.subtract(hi, es)], fmt="o", color=colour,
                    capsize=3, label=f"{student}: fitted E_p")
        quality = fit.get("quality") or {}
        if "c2" in quality and 0.0 in ps:
            grid = np.linspace(0, max(ps), 100)
            theory = es[ps.index(0.0)] + quality["c2"] * grid**2 + quality.get("b", 0.0) * grid * (1 - grid)
            r2 = quality.get("r2")
            ax.plot(grid, theory, color=colour, lw=1.2,
                    label=f"theory E_0 + c²p² + b·p(1−p): c²={quality['c2']:.3g}" + (f", R²={r2:.2f}" if r2 is not None else ""))
    ax.set_xlabel("synthetic fraction p")
    ax.set_ylabel("plateau E_p (nats/token)")
    ax.set_title("Strong collapse: the plateau grows with p", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def loss_vs_size(rows: list[dict], path: Path) -> Path:
    """Test loss at the largest budget vs student parameter count, one line per fraction."""
    largest = max(int(r["token_budget"]) for r in rows)
    top = [r for r in rows if int(r["token_budget"]) == largest]
    means = _mean_by(top, "synthetic_fraction", "parameters")
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for p in sorted({p for p, _ in means}):
        sizes = sorted(s for q, s in means if q == p)
        ax.plot(sizes, [means[(p, s)][0] for s in sizes], marker="o", color=_colour(p), label=f"p = {p:g}")
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_ylabel("test loss (nats/token)")
    title = f"loss vs model size at n = {largest}"
    if len({r["parameters"] for r in rows}) < 2:
        title += " (one size only: add students to compare)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def rank_frequency(diagnostics: dict[str, dict], path: Path) -> Path:
    """Word rank-frequency of human vs each synthetic corpus (log-log): synthetic text loses the tail."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    human_drawn = False
    for i, (name, diag) in enumerate(sorted(diagnostics.items())):
        for side, style in (("human", dict(color="black", lw=2)), ("synthetic", dict(color=plt.cm.tab10(i + 1), lw=1.5))):
            counts = (diag.get(side) or {}).get("word_rank_frequency")
            if not counts or (side == "human" and human_drawn):
                continue
            freq = np.asarray(counts, dtype=float)
            freq = freq / freq.sum()
            ax.loglog(np.arange(1, len(freq) + 1), freq, label="human" if side == "human" else f"synthetic {name}", **style)
            human_drawn |= side == "human"
    ax.set_xlabel("word rank")
    ax.set_ylabel("frequency")
    ax.set_title("rank-frequency: the synthetic tail falls off sooner", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
