"""The report's PNG figures (matplotlib, Agg backend: no display needed).

Each function takes plain rows/dicts and a path, draws one figure a person would rather look at than
a table, and returns the path. Colours follow the synthetic fraction p (viridis: dark = clean).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FormatStrFormatter

from pipeline.analysis.theory_fit import theory_gap
from pipeline.io import write_file_atomic


def _colour(p: float):
    return plt.cm.viridis(0.05 + 0.85 * p)


def _save(fig, path: Path) -> Path:
    try:
        write_file_atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return Path(path)


def _mean_by(rows, *keys, field="loss"):
    groups = defaultdict(list)
    for row in rows:
        if row.get(field) is not None:
            groups[tuple(row[k] for k in keys)].append(float(row[field]))
    return {k: (float(np.mean(v)), float(np.std(v)) if len(v) > 1 else 0.0) for k, v in groups.items()}


def _loss_axes(ax, excess: bool, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))  # losses, not powers of ten
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    ax.set_xlabel("training tokens n")
    ax.set_ylabel("excess loss over the exact entropy (nats/token)" if excess
                  else "test loss on human text (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _draw_fit(ax, student: dict, p: float, grid: np.ndarray, shift: float) -> None:
    """The fitted curve (dashed) and, where identified, its plateau (dotted), shifted down by `shift`."""
    curves = student.get("curves", {})
    key = f"{p:g}"
    per = curves.get("per_fraction", {}).get(key)
    if not per:
        return
    amplitude, alpha = per.get("A", curves.get("A")), per.get("alpha", curves.get("alpha"))
    if amplitude is not None and alpha is not None:
        values = per["E"] - shift + amplitude * grid ** (-alpha)
        ax.plot(grid[values > 0], values[values > 0], ls="--", color=_colour(p), lw=1, alpha=0.8)
    identified = student.get("identification", {}).get("per_fraction", {}).get(key, {}).get("identified")
    if identified and per["E"] - shift > 0:
        ax.axhline(per["E"] - shift, ls=":", color=_colour(p), lw=0.8, alpha=0.6)


def _draw_prediction(ax, student: dict, p: float, shift: float) -> None:
    """The held-out prediction with its interval (open diamond), beside the measurement it did not see."""
    held = student.get("holdout", {})
    entry = held.get("per_fraction", {}).get(f"{p:g}")
    if not entry or entry["predicted"] - shift <= 0:
        return
    value = entry["predicted"] - shift
    low, high = entry["interval"] or [entry["predicted"]] * 2
    ax.errorbar([held["heldout_budget"] * 1.08], [value], yerr=[[max(value - (low - shift), 0)], [high - shift - value]],
                fmt="D", mfc="white", color=_colour(p), capsize=3, ms=5)


def loss_vs_budget(rows: list[dict], fit: dict, path: Path, excess: bool = False) -> Path:
    """Log-log loss (or excess loss) vs budget per curve: measured, fitted (dashed), plateau (dotted, where
    identified), and the held-out prediction (open diamond with its interval) next to the measurement."""
    students = fit["students"]
    labels = sorted({r["curve"] for r in rows})
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 4.2), squeeze=False)
    field = "excess_loss" if excess else "loss"
    for ax, label in zip(axes[0], labels):
        means = _mean_by([r for r in rows if r["curve"] == label], "synthetic_fraction", "token_budget", field=field)
        student = students.get(label, {})
        shift = student.get("excess", {}).get("entropy", 0.0) if excess else 0.0
        budgets = sorted({n for _, n in means})
        grid = np.geomspace(budgets[0], budgets[-1] * 4, 100)
        for p in sorted({p for p, _ in means}):
            ns = [n for n in budgets if (p, n) in means and means[(p, n)][0] > 0]
            ax.errorbar(ns, [means[(p, n)][0] for n in ns], yerr=[means[(p, n)][1] for n in ns], marker="o",
                        color=_colour(p), label=f"p = {p:g}", capsize=3, lw=1.5)
            _draw_fit(ax, student, p, grid, shift)
            _draw_prediction(ax, student, p, shift)
        _loss_axes(ax, excess, f"{label}: {'excess loss' if excess else 'loss'} vs n\n"
                               "dashed: fit, dotted: identified plateau, ◇: held-out prediction")
    return _save(fig, path)


def gap_vs_budget(fit: dict, path: Path) -> Path:
    """The measured gap L_p(n) − L_0(n) vs n per curve and p > 0, with its 95% Welch interval at every budget:
    filled where p sits above p = 0 after the Holm correction; the legend gives the gap's trend with n."""
    students = {label: s for label, s in sorted(fit["students"].items())
                if (s.get("gap_trends") or {}).get("per_fraction")}
    fig, axes = plt.subplots(1, max(len(students), 1), figsize=(5.5 * max(len(students), 1), 4.2), squeeze=False)
    for ax, (label, student) in zip(axes[0], students.items()):
        for p, trend in student["gap_trends"]["per_fraction"].items():
            gaps = [trend["gaps"][str(n)] for n in trend["budgets"]]
            for n, gap in zip(trend["budgets"], gaps):
                low, high = gap["gap_ci"] or [gap["gap"]] * 2
                ax.errorbar([n], [gap["gap"]], yerr=[[gap["gap"] - low], [high - gap["gap"]]], fmt="o", capsize=3,
                            color=_colour(float(p)), mfc=_colour(float(p)) if gap.get("above") else "white")
            slope = trend.get("slope_per_doubling")
            verdict = f"{trend['verdict']} ({slope:+.3f} per doubling)" if trend.get("verdict") else "no trend test"
            ax.plot(trend["budgets"], [g["gap"] for g in gaps], color=_colour(float(p)), lw=1,
                    label=f"p = {p}: {verdict}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens n")
        ax.set_ylabel("measured gap L_p(n) − L_0(n) (nats/token)")
        ax.set_title(f"{label}: measured gap vs n, 95% intervals (filled: above p = 0, Holm)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _theory_points(ax, student: dict, colour, label: str) -> tuple[list[float], list[float]] | None:
    theory = student.get("theory") or {}
    if not theory.get("fitted"):
        return None
    points = {float(p): v for p, v in theory["points"].items()}
    ps = sorted(points)
    es = [points[p] for p in ps]
    if theory["source"].startswith("fitted"):
        per = student["curves"]["per_fraction"]
        cis = [per[f"{p:g}"].get("E_ci") or [e, e] for p, e in zip(ps, es)]
        yerr = [[e - ci[0] for e, ci in zip(es, cis)], [ci[1] - e for e, ci in zip(es, cis)]]
        ax.errorbar(ps, es, yerr=yerr, fmt="o", color=colour, capsize=3, label=f"{label}: fitted plateau E_p")
    else:
        ax.plot(ps, es, "s", color=colour, label=f"{label}: loss at n = {theory['budget']:,} (plateaus not identified)")
    return ps, es


def plateau_vs_fraction(students: dict, path: Path) -> Path:
    """Plateaus (or, where not identified, the loss at the largest budget) vs p, with the linear theory fitted in
    both forms: n → ∞, E_0 + p²c² (solid), and finite n, E_0 + (p² + p(1−p)u)c² (dashed)."""
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    for i, (label, student) in enumerate(sorted(students.items())):
        colour = plt.cm.tab10(i % 10)
        drawn = _theory_points(ax, student, colour, label)
        if drawn is None:
            continue
        ps, es = drawn
        theory = student["theory"]
        grid = np.linspace(0, max(ps), 100)
        forms = (("asymptotic", "-", "n→∞: p²c²"), ("finite_n", "--", "finite n: (p²+p(1−p)u)c²"))
        for form, style, name in forms:
            entry = theory[form]
            r2 = entry.get("r2")
            mark = " ← supported" if theory.get("supported") == form else ""
            ax.plot(grid, es[ps.index(0.0)] + theory_gap(entry, grid), ls=style, color=colour, lw=1.2,
                    label=f"{label} {name}, c²={entry['c2']:.3g}" + (f", R²={r2:.2f}" if r2 is not None else "") + mark)
    ax.set_xlabel("synthetic fraction p")
    ax.set_ylabel("plateau E_p (nats/token)")
    ax.set_title("Strong collapse: the plateau vs p, with the linear theory in both forms", fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "no theory fitted: needs p = 0 and a p > 0", ha="center", transform=ax.transAxes)
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


def loss_vs_generation(trends: list[dict], generate_mode: str | None, path: Path) -> Path:
    """Mean test loss vs teacher generation, one line per student × mix mode × p × n, with the fitted line."""
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    for i, trend in enumerate(trends):
        colour = plt.cm.tab10(i % 10)
        gens = np.array(trend["generations"], dtype=float)
        ax.plot(gens, trend["mean_loss"], "o", color=colour)
        r2 = trend.get("r2")
        ax.plot(gens, trend["slope"] * gens + trend["intercept"], "--", color=colour, lw=1,
                label=f"{trend['student']} p={trend['fraction']:g} n={trend['budget']:,}: slope {trend['slope']:.3g}"
                      + (f", R²={r2:.2f}" if r2 is not None else ""))
    ax.set_xlabel("teacher generation g")
    ax.set_ylabel("test loss on human text (nats/token)")
    ax.set_title(f"loss vs generation (teacher mode: {generate_mode or 'not given'}); dashed: linear fit", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    return _save(fig, path)


def gap_vs_size(gaps: list[dict], path: Path) -> Path:
    """Collapse gap vs student parameters per p: the fitted plateau gap where identified (filled, with its
    interval), else the measured gap at the largest budget (open)."""
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    for p in sorted({g["fraction"] for g in gaps}):
        rows = sorted((g for g in gaps if g["fraction"] == p and g["parameters"]), key=lambda g: g["parameters"])
        plateau = all(g["plateau_identified"] for g in rows)
        key, ci = ("plateau_gap", "plateau_gap_ci") if plateau else ("measured_gap", "measured_gap_ci")
        rows = [g for g in rows if g[key] is not None]
        if not rows:
            continue
        xs, ys = [g["parameters"] for g in rows], [g[key] for g in rows]
        cis = [g[ci] or [y, y] for g, y in zip(rows, ys)]
        ax.errorbar(xs, ys, yerr=[[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]],
                    marker="o", mfc=_colour(p) if plateau else "white", color=_colour(p), capsize=3,
                    label=f"p = {p:g}: " + ("plateau gap E_p − E_0" if plateau
                                            else f"loss gap at n = {rows[0]['budget']:,}"))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_ylabel("collapse gap (nats/token)")
    ax.set_title("collapse gap vs model size", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
