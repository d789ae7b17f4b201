"""`collapse theory`: print the isotropic strong-collapse predictions and draw the theory figures.

The CLI owner wires this in with `theory_cli.add_parser(subparsers)`; the subcommand's handler is `run(args)`,
also stored as the parser default `func`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.theory.linear import isotropic_mixture_risk, synthetic_floor

DEFAULT_OUT = Path("runs/theory")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `theory` subcommand on an argparse subparsers object and return its parser."""
    parser = subparsers.add_parser(
        "theory",
        help="print strong-collapse predictions and draw theory-vs-simulation figures",
        description="Isotropic ridge on a real/synthetic mixture (λ → 0): E = σ²φ/(1−φ) + (p² + p(1−p)φ/(1−φ))c², "
                    "plateau p²c² as n → ∞; figures compare every formula with a Monte Carlo simulation.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"figure directory (default {DEFAULT_OUT})")
    parser.add_argument("--phi", type=float, nargs="+", default=[0.01, 0.1, 0.5],
                        help="d/n values in (0, 1) for the table (default 0.01 0.1 0.5)")
    parser.add_argument("--fraction", type=float, nargs="+", default=[0.0, 0.01, 0.1, 0.2, 0.5],
                        help="synthetic fractions p in [0, 1] (default 0 0.01 0.1 0.2 0.5)")
    parser.add_argument("--c2", type=float, default=1.0, help="synthetic quality c² = tr(ΣΔ) (default 1)")
    parser.add_argument("--noise-var", type=float, default=1.0, help="label noise σ² (default 1)")
    parser.add_argument("--no-figures", action="store_true", help="print the table only")
    parser.set_defaults(func=run)
    return parser


def prediction_table(phis, fractions, c2, noise_var) -> str:
    """Rows: synthetic fraction p; columns: isotropic risk at each φ, then the n → ∞ plateau p²c²."""
    header = ["p"] + [f"phi={phi:g}" for phi in phis] + ["plateau p2c2"]
    rows = [header]
    for p in fractions:
        risks = [isotropic_mixture_risk(phi, p, c2, noise_var) for phi in phis]
        rows.append([f"{p:g}"] + [f"{r:.4g}" for r in risks] + [f"{synthetic_floor(p, c2):.4g}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def run(args) -> int:
    """Print the prediction table and, unless --no-figures, draw the figures into --out. Returns an exit code."""
    try:
        table = prediction_table(args.phi, args.fraction, args.c2, args.noise_var)
    except ValueError as err:
        print(f"collapse: error: {err}", file=sys.stderr)
        return 2
    if not args.no_figures:
        try:  # before the table: a bad --out is one line, with nothing printed or drawn
            args.out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            print(f"collapse: error: --out {args.out}: a file is in the way; give a directory for the figures "
                  "(created when missing)", file=sys.stderr)
            return 2
    print(f"Strong collapse, isotropic ridge (λ → 0), c² = {args.c2:g}, σ² = {args.noise_var:g}: test error")
    print(table)
    if not args.no_figures:
        from pipeline.theory.figures import theory_figures  # matplotlib only when drawing

        for path in theory_figures(args.out):
            print(f"wrote {path}")
    return 0
