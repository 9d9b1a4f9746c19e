"""Every verdict of the book at a glance: each page's decided claims recorded as its table shows
them, then read back into one matrix (a line a claim, a column a row of the profile) and one
sentence that counts them.

A page records its claims when it glues them (:func:`mexit.pages.glue_claims`): ``mexit book``
names the folder (``$MEXIT_CLAIMS_RECORDS``) and the page (``$MEXIT_PAGE``) for each notebook it
executes, and the verdicts page (``notebooks/verdicts.ipynb``, executed after every other page)
draws what the records hold. The record is made from the same decided rows as the page's claims
table (:func:`claim_record`), so the matrix and the tables cannot disagree.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mexit.claims import (
    AT_THE_CAP, FRESH_READINGS, NO_INTERVAL, NOT_CONVERGED, NOT_LEARNED, READINGS, SHORT_OF_BUDGET, UNTESTED, VERDICTS, fresh_reading,
    effect_text, reading_of,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RECORDS_VARIABLE = "MEXIT_CLAIMS_RECORDS"
"""The environment variable naming the folder the pages record their claims in (set by ``mexit book``)."""
PAGE_VARIABLE = "MEXIT_PAGE"
"""The environment variable naming the page being executed (set by ``mexit book``): its record's name."""

LINE_KEY: tuple[str, ...] = ("section", "page", "line", "reading")
"""What makes one line of the matrix."""

RECORD_COLUMNS: tuple[str, ...] = ("row", "line", "claim", "reading", "unit", "effect", "verdict", "why", "fresh seeds")

SECTIONS: dict[str, tuple[str, ...]] = {
    "Claims of Table 1": ("table1",),
    "Training time": ("training_cost",),
    "The paper's explanations": ("gradient_dominance", "mode_connectivity", "numerical_rank", "mutual_information"),
    "The ablations": ("loss_scaling", "ic_size", "ic_placement", "methods", "phase_split"),
    "Beyond the paper": ("calibration", "exit_rules", "distribution_shift", "out_of_distribution", "wall_clock"),
    "Open questions": ("architectures", "scaling", "ic_design", "rules_loss_scaling"),
}
"""The status page's sections and the pages whose claims each holds, in the page's order."""

VERDICT_COLOURS: dict[str, str] = {
    "held": "#0072B2",
    "not held": "#D55E00",
    "inconclusive": "#E5E5E5",
    NOT_CONVERGED: "#F5E0B0",
    NOT_LEARNED: "#EDD5E3",
    AT_THE_CAP: "#D8ECF8",
    SHORT_OF_BUDGET: "#FAF4C0",
    NO_INTERVAL: "#FFFFFF",
}
"""A colour per verdict: held and not held in the strong blue and vermillion of the Okabe-Ito palette
(told apart under the common colour-vision deficiencies), inconclusive grey, and each untested verdict
a pale tint of another of its colours, hatched (:data:`UNTESTED_HATCH`), so that no untested cell reads
as a result at a glance; each cell also names its verdict in words."""
UNTESTED_HATCH = "//"
"""The hatching of an untested verdict's cell and legend entry: its runs are not evidence."""


def claim_record(rows: pd.DataFrame, digits: int = 1, fresh: pd.DataFrame | None = None) -> pd.DataFrame:
    """A page's :func:`mexit.claims.decide` rows as the matrix reads them, one line each: the
    profile ``row`` it was measured on, the ``line`` (the claim, with what else its scale names: an
    ablation's variant, an exit rule), ``reading``, ``unit``, ``effect`` ("mean [low, high]", as the
    claims table prints it), ``verdict``, ``why`` untested and, where ``fresh`` decided rows of the
    same claims on other seeds are given, how they read it (:func:`fresh_reading`)."""
    fresh_verdicts = {} if fresh is None else {(r["key"], r["compared"]): r["verdict"] for _, r in fresh.iterrows()}
    lines = []
    for _, r in rows.iterrows():
        row = r["compared"].row
        lines.append({
            "row": row,
            "line": _line(str(r["claim"]), str(r["scale"]), row),
            "claim": r["claim"],
            "reading": reading_of(str(r["key"])),
            "unit": r["unit"],
            "effect": effect_text(r, digits),
            "verdict": r["verdict"],
            "why": r["why"] or "",
            "fresh seeds": fresh_reading(str(r["verdict"]), fresh_verdicts.get((r["key"], r["compared"]))) if fresh is not None else "–",
        })
    return pd.DataFrame(lines, columns=list(RECORD_COLUMNS))


def _line(claim: str, scale: str, row: str) -> str:
    """The claim, with what its scale adds to the row's label (budgets aside)."""
    extra = scale[len(row):] if scale.startswith(row) else scale
    extra = re.sub(r"\s*\(budgets?\b[^)]*\)", "", extra)
    extra = re.sub(r"^[\s,;:]+|[\s,;:]+$", "", extra)
    return f"{claim}: {extra}" if extra else claim


def record_claims(record: pd.DataFrame, folder: str | os.PathLike | None = None, page: str | None = None) -> Path | None:
    """Write a page's :func:`claim_record` to ``folder/page.csv`` (defaults: ``$MEXIT_CLAIMS_RECORDS``
    and ``$MEXIT_PAGE``; nothing is written when either is unset, as when a reader runs a notebook
    by hand); the file appears whole or not at all. Returns its path, or None."""
    from mexit.checkpoint import write_bytes_atomic

    folder = folder or os.environ.get(RECORDS_VARIABLE)
    page = page or os.environ.get(PAGE_VARIABLE)
    if not folder or not page:
        return None
    target = Path(folder) / f"{page}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, record.to_csv(index=False).encode())
    return target


def records_folder(records: str | None) -> Path:
    """The folder of the pages' records a summary reads: ``records``, else ``$MEXIT_CLAIMS_RECORDS``
    (``mexit book`` sets it), else ``./records`` (beside the executed notebooks), else
    ``book/generated/records``. Raises a :class:`~mexit.config.ParameterError` naming ``records``
    when the folder is not there."""
    from mexit.config import ParameterError

    candidates = [records] if records else [os.environ.get(RECORDS_VARIABLE), "records", str(Path("book") / "generated" / "records")]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    tried = ", ".join(c for c in candidates if c)
    raise ParameterError(f"records must be a folder of the pages' claim records (written by 'mexit book'); none found at {tried}")


def read_records(folder: str | os.PathLike) -> pd.DataFrame:
    """Every page's record in ``folder`` (``<page>.csv``), with its ``page`` and status-page
    ``section``, in the status page's order; a verdict that a later page repeats (the same claim on
    the same row and reading, as the scaling page repeats Table 1's on a size Table 1 also trains)
    is kept once, where it first appears. Raises a ValueError naming a page no section lists."""
    folder = Path(folder)
    order = [page for pages in SECTIONS.values() for page in pages]
    found = {path.stem: path for path in folder.glob("*.csv")}
    unknown = sorted(set(found) - set(order))
    if unknown:
        raise ValueError(f"pages {unknown} recorded claims but no section of mexit.verdicts.SECTIONS lists them")
    section_of = {page: section for section, pages in SECTIONS.items() for page in pages}
    frames = [
        pd.read_csv(found[page], keep_default_na=False, dtype=str).assign(page=page, section=section_of[page])
        for page in order if page in found
    ]
    if not frames:
        return pd.DataFrame(columns=[*RECORD_COLUMNS, "page", "section"])
    return pd.concat(frames, ignore_index=True).drop_duplicates(subset=["row", "line", "reading"], keep="first", ignore_index=True)


def verdict_matrix(records: pd.DataFrame, value: str = "cell") -> pd.DataFrame:
    """The matrix as a table: one line per (section, page, line, reading), one column per profile
    row (in the order the records first name them), each cell "verdict: effect" (the verdict alone
    where no effect is shown, :func:`mexit.claims.effect_text`; ``value`` names a record column to
    show instead) and "" where the line was not measured on that row."""
    rows = list(dict.fromkeys(records["row"]))
    keyed = records.assign(cell=records["verdict"].where(records["effect"] == "–", records["verdict"] + ": " + records["effect"]))
    table = keyed.pivot_table(index=list(LINE_KEY), columns="row", values=value, aggfunc="first", sort=False)
    return table.reindex(columns=rows).fillna("")


def verdict_counts(records: pd.DataFrame) -> dict[str, int]:
    """How many verdicts of each kind the records hold, in :data:`mexit.claims.VERDICTS`' order (zeros kept)."""
    counts = records["verdict"].value_counts()
    unknown = sorted(set(counts.index) - set(VERDICTS))
    if unknown:
        raise ValueError(f"unknown verdicts {unknown}; allowed: {VERDICTS}")
    return {v: int(counts.get(v, 0)) for v in VERDICTS}


def counts_by_section(records: pd.DataFrame) -> pd.DataFrame:
    """How many verdicts of each kind (:func:`verdict_counts`) each status-page section holds, in the
    page's order; kinds no section has are left out."""
    sections = list(dict.fromkeys(records["section"]))
    table = pd.DataFrame([verdict_counts(records[records["section"] == s]) for s in sections], index=pd.Index(sections, name="section"))
    return table.loc[:, (table != 0).any()]


def verdict_summary(records: pd.DataFrame) -> str:
    """One paragraph that counts the matrix: its verdicts by kind (the untested ones by why), over
    how many claims and rows, and how fresh seeds read the held and not held ones."""
    counts = verdict_counts(records)
    untested = {v: n for v, n in counts.items() if v in UNTESTED and n}
    total = sum(counts.values())
    text = (
        f"{total} verdicts on {records['line'].nunique()} claims over {records['row'].nunique()} rows of the profile "
        "(a trend across sizes counts as one): "
        f"{counts['held']} held, {counts['not held']} not held, {counts['inconclusive']} inconclusive and "
        f"{sum(untested.values())} untested"
    )
    if untested:
        text += " (" + ", ".join(f"{n} {v.removeprefix('untested').strip(' :')}" for v, n in untested.items()) + ")"
    text += "."
    fresh = records.loc[records["fresh seeds"] != "–", "fresh seeds"]
    if len(fresh):
        told = fresh.value_counts()
        parts = [f"{int(told[r])} {r}" for r in FRESH_READINGS if r in told]
        text += f" Of the {len(fresh)} held or not held verdicts that a fresh set of seeds re-decided, " + ", ".join(parts) + "."
    return text


LABEL_CHARACTERS = 80
"""The longest line of a claim's label in the matrix (two at most)."""


def matrix_bands(records: pd.DataFrame, max_columns: int = 3) -> list[tuple[str, list[str], pd.DataFrame]]:
    """How :func:`matrix_figure` lays the matrix out: per section, only the profile rows (columns)
    its claims were measured on, at most ``max_columns`` at a time (a section measured on more rows
    continues in another band), each band with the lines that have a cell in it:
    ``[(section, columns, lines of verdict_matrix(records, "verdict"))]``."""
    matrix = verdict_matrix(records, "verdict")
    bands = []
    for section in dict.fromkeys(matrix.index.get_level_values("section")):
        part = matrix.loc[[section]]
        used = [row for row in matrix.columns if (part[row] != "").any()]
        for start in range(0, len(used), max_columns):
            columns = used[start:start + max_columns]
            bands.append((section, columns, part[(part[columns] != "").any(axis=1)]))
    return bands


def _cell_style(verdict: str) -> dict[str, object]:
    """A verdict's cell as the matrix and its legend draw it: its colour, hatched where untested."""
    hatched = verdict in UNTESTED
    return {"facecolor": VERDICT_COLOURS[verdict], "edgecolor": "#999999", "linewidth": 0.4,
            "hatch": UNTESTED_HATCH if hatched else None, "hatchcolor": "#B0B0B0" if hatched else None}


def matrix_figure(
    records: pd.DataFrame, *, label_width: float = 5.4, column_width: float = 1.8, line_height: float = 0.42, max_columns: int = 3,
) -> Figure:
    """The matrix drawn: per section a heading and the profile rows it was measured on (at most
    ``max_columns`` a band, :func:`matrix_bands`, so that the figure stays narrow enough to read on
    a page), then a line per claim (its reading beside it), each cell coloured by its verdict
    (:data:`VERDICT_COLOURS`) with the verdict's word and the effect [CI] in it; a legend of the
    verdicts shown."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    effects = verdict_matrix(records, "effect")
    units = records.drop_duplicates(list(LINE_KEY)).set_index(list(LINE_KEY))["unit"]
    bands = matrix_bands(records, max_columns)
    width = label_width + column_width * max((len(columns) for _, columns, _ in bands), default=1)
    height = line_height * (sum(len(lines) + 2 for _, _, lines in bands) + 2)  # a band: its heading, then its lines
    figure = plt.figure(figsize=(width, height))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    y = line_height
    seen: set[str] = set()
    for section, columns, lines in bands:
        y += 1.5 * line_height
        ax.text(0.05, y, section if section not in seen else f"{section} (continued)", ha="left", va="center", fontsize=10, weight="bold")
        seen.add(section)
        for j, row in enumerate(columns):
            ax.text(label_width + (j + 0.5) * column_width, y, textwrap.fill(row, 24, break_long_words=False, break_on_hyphens=False),
                    ha="center", va="center", fontsize=8, weight="bold")
        y += 0.5 * line_height
        for key, cells in lines.iterrows():
            _, _, line, reading = key
            y += line_height
            label = f"{line} [{units[key]}]"
            if reading != READINGS["convergence"] and reading not in line:
                label += f" ({reading})"
            ax.text(0.1, y, textwrap.fill(textwrap.shorten(label, 2 * LABEL_CHARACTERS, placeholder="…"), LABEL_CHARACTERS, break_long_words=False, break_on_hyphens=False), ha="left", va="center", fontsize=7.5, linespacing=1.1)
            for j, row in enumerate(columns):
                verdict = cells[row]
                if not verdict:
                    continue
                x = label_width + j * column_width
                ax.add_patch(Rectangle((x + 0.03, y - line_height / 2 + 0.02), column_width - 0.06, line_height - 0.04, **_cell_style(verdict)))
                dark = verdict in ("held", "not held")
                effect = effects.loc[key, row]
                ax.text(x + column_width / 2, y, verdict if effect == "–" else f"{verdict}\n{effect}", ha="center", va="center",
                        fontsize=7, linespacing=1.1, color="white" if dark else "black")
    shown = [v for v in VERDICTS if v in set(records["verdict"])]
    figure.legend(
        handles=[Patch(label=v, **_cell_style(v)) for v in shown],
        loc="upper left", bbox_to_anchor=(0.005, 1.0), ncol=min(4, len(shown)), fontsize=7, frameon=False,
    )
    return figure
