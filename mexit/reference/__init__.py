"""The paper's own numbers, kept in one cited data file.

``table1.csv``: Table 1 of Kubaty et al., "How to Train Your Multi-Exit Model? Analyzing the Impact of
Training Strategies" (arXiv 2407.14320, ICML 2025), the 100% budget column: test accuracy (%) of each
regime. Obtained second-hand (the PDF was not reachable offline; see the book's status page); the
25/50/75% columns were not obtained and are not guessed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TABLE1 = Path(__file__).with_name("table1.csv")


def paper_table1() -> pd.DataFrame:
    """Table 1, 100% budget column: one row per (model, dataset), one accuracy column per regime."""
    return pd.read_csv(TABLE1)


def paper_rows() -> list[str]:
    """The paper's Table 1 rows as ``"model / dataset"`` names (what a study row's ``paper`` names)."""
    table = paper_table1()
    return [f"{m} / {d}" for m, d in zip(table["model"], table["dataset"])]


def paper_accuracy(paper_row: str | None, regime: str) -> float | None:
    """The paper's 100%-budget accuracy of ``regime`` on ``paper_row`` (``"ResNet-34 / CIFAR-100"``);
    None when the row is None. An unknown row or regime is an error naming the allowed ones."""
    if paper_row is None:
        return None
    table = paper_table1()
    if paper_row not in paper_rows():
        raise ValueError(f"unknown paper row {paper_row!r}; allowed: {', '.join(paper_rows())}")
    if regime not in table.columns[2:]:
        raise ValueError(f"unknown regime {regime!r}; the paper's table has {', '.join(table.columns[2:])}")
    return float(table.loc[paper_rows().index(paper_row), regime])
