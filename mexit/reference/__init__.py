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
