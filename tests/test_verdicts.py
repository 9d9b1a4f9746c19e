"""The verdict matrix: each page's decided claims recorded as its table shows them, read back into
one matrix and one counting sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.patches import Rectangle

from mexit import claims, verdicts
from mexit.claims import Compared, assess, decide, status_view
from mexit.config import ParameterError

ROOT = Path(__file__).resolve().parents[1]


def _evidence(rows: dict[str, list[str]], seeds: int = 5, failing: tuple[tuple[str, str, int], ...] = ()) -> pd.DataFrame:
    """Every run of each row's regimes evidence, but ``failing`` ((row, regime, seed) not converged)."""
    runs = []
    for row, regimes in rows.items():
        for regime in regimes:
            for seed in range(seeds):
                bad = (row, regime, seed) in failing
                runs.append({"row": row, "regime": regime, "seed": seed, "evidence": not bad, "early_stopped": True,
                             "why": "P2: ran to its cap" if bad else ""})
    return pd.DataFrame(runs)


def _seeded(values: list[float]) -> pd.Series:
    return pd.Series(values, index=range(len(values)), dtype=float)


def _decided() -> pd.DataFrame:
    """Three claims on two rows: held, inconclusive and untested (not converged) on row A; not held on B."""
    a, b = Compared("A", ("joint", "mixed")), Compared("B", ("joint", "mixed"))
    measured = [
        assess(claims.MIXED_BEATS_JOINT_HIGH, _seeded([2.0, 2.2, 1.8, 2.1, 2.0]), "A (budgets 75%, 100%)", a),
        assess(claims.MIXED_BEST, _seeded([1.0, -1.0, 0.5, -0.5, 0.1]), "A", a),
        assess(claims.MIXED_BEATS_JOINT_HIGH, _seeded([-2.0, -2.2, -1.8, -2.1, -2.0]), "B (budgets 75%, 100%)", b),
    ]
    decided = decide(measured, _evidence({"A": ["joint", "mixed"], "B": ["joint", "mixed"]}))
    gated = decide(
        [assess(claims.DISJOINT_WEAK_LOW, _seeded([3.0, 3.1, 2.9, 3.0, 3.2]), "A, conv 2L (budgets 25%, 50%)", Compared("A", ("disjoint", "joint", "mixed")))],
        _evidence({"A": ["disjoint", "joint", "mixed"]}, failing=(("A", "joint", 0), ("A", "joint", 1))),
    )
    return pd.concat([decided, gated], ignore_index=True)


def test_a_record_holds_what_the_pages_claims_table_shows() -> None:
    decided = _decided()
    record = verdicts.claim_record(decided)
    shown = status_view(decided, "quick")
    assert record["verdict"].tolist() == shown["verdict"].tolist() == ["held", "inconclusive", "not held", claims.NOT_CONVERGED]
    assert [f"{e} {u}" for e, u in zip(record["effect"], record["unit"]) if e != "–"] == [e for e in shown["effect [CI]"] if e != "–"]
    assert record["row"].tolist() == ["A", "A", "B", "A"]
    assert record["line"].iloc[3] == "Disjoint is the weakest regime at low budgets: conv 2L"  # the scale's variant, budgets aside
    assert record["line"].iloc[0] == claims.MIXED_BEATS_JOINT_HIGH.statement
    assert "3 of 5 seeds are evidence" in record["why"].iloc[3]
    assert record["effect"].iloc[3] == shown["effect [CI]"].iloc[3] == "–"  # untested: no interval over runs that are not evidence
    assert set(record["fresh seeds"]) == {"–"}


def test_a_record_says_how_fresh_seeds_read_each_decided_verdict() -> None:
    decided = _decided()
    fresh = decided.assign(verdict=["inconclusive", "held", "not held", "held"])
    record = verdicts.claim_record(decided, fresh=fresh)
    assert record["fresh seeds"].tolist() == ["not confirmed (interval)", "–", "confirmed", "–"]


def test_records_are_written_only_where_the_book_asks_and_read_back_in_the_status_pages_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = verdicts.claim_record(_decided())
    monkeypatch.delenv(verdicts.RECORDS_VARIABLE, raising=False)
    monkeypatch.delenv(verdicts.PAGE_VARIABLE, raising=False)
    assert verdicts.record_claims(record) is None and not list(tmp_path.iterdir())  # a reader's run writes nothing
    monkeypatch.setenv(verdicts.RECORDS_VARIABLE, str(tmp_path / "records"))
    monkeypatch.setenv(verdicts.PAGE_VARIABLE, "ic_size")
    assert verdicts.record_claims(record) == tmp_path / "records" / "ic_size.csv"
    table1 = record.iloc[:1].assign(line="A claim of Table 1")
    verdicts.record_claims(table1, page="table1")
    read = verdicts.read_records(tmp_path / "records")
    assert read["page"].tolist() == ["table1"] + ["ic_size"] * 4  # Table 1's section comes first
    assert read["section"].iloc[0] == "Claims of Table 1" and read["section"].iloc[1] == "The ablations"
    assert read["effect"].tolist()[1:] == record["effect"].tolist()  # "–" stays text
    verdicts.record_claims(pd.concat([table1, record.iloc[1:2].assign(line="A trend")]), page="scaling")  # Table 1's verdict again, and a trend
    again = verdicts.read_records(tmp_path / "records")
    assert again["page"].tolist() == ["table1"] + ["ic_size"] * 4 + ["scaling"]  # the repeated verdict once, where it first appears
    assert again["line"].iloc[-1] == "A trend"
    verdicts.record_claims(record, page="table9")
    with pytest.raises(ValueError, match=r"\['table9'\].*SECTIONS"):
        verdicts.read_records(tmp_path / "records")


def test_the_records_folder_is_the_parameter_else_the_books_and_a_missing_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(verdicts.RECORDS_VARIABLE, raising=False)
    with pytest.raises(ParameterError, match="^records must be a folder"):
        verdicts.records_folder(None)
    (tmp_path / "mine").mkdir()
    assert verdicts.records_folder(str(tmp_path / "mine")) == tmp_path / "mine"
    with pytest.raises(ParameterError, match="records"):
        verdicts.records_folder(str(tmp_path / "nowhere"))
    (tmp_path / "book" / "generated" / "records").mkdir(parents=True)
    assert verdicts.records_folder(None) == Path("book") / "generated" / "records"
    monkeypatch.setenv(verdicts.RECORDS_VARIABLE, str(tmp_path / "mine"))
    assert verdicts.records_folder(None) == tmp_path / "mine"


def _records() -> pd.DataFrame:
    record = verdicts.claim_record(_decided(), fresh=_decided().assign(verdict=["held", "held", "held", "held"]))
    return record.assign(page="table1", section="Claims of Table 1")


def test_the_matrix_has_a_line_a_claim_and_a_column_a_row() -> None:
    matrix = verdicts.verdict_matrix(_records())
    assert list(matrix.columns) == ["A", "B"]
    assert len(matrix) == 3  # the high-budget claim on A and B is one line
    high = matrix.xs(claims.MIXED_BEATS_JOINT_HIGH.statement, level="line").iloc[0]
    assert high["A"].startswith("held: 2.0 [") and high["B"].startswith("not held: -2.0 [")
    best = matrix.xs(claims.MIXED_BEST.statement, level="line").iloc[0]
    assert best["B"] == ""  # not measured on B
    gated = matrix.xs(f"{claims.DISJOINT_WEAK_LOW.statement}: conv 2L", level="line").iloc[0]
    assert gated["A"] == claims.NOT_CONVERGED  # untested on runs that are not evidence: the verdict alone


def test_the_summary_counts_the_verdicts_the_untested_by_why_and_the_fresh_readings() -> None:
    text = verdicts.verdict_summary(_records())
    assert text.startswith("4 verdicts on 3 claims over 2 rows of the profile (a trend across sizes counts as one): 1 held, 1 not held, 1 inconclusive and 1 untested (1 not converged).")
    assert "Of the 2 held or not held verdicts that a fresh set of seeds re-decided, 1 confirmed, 1 contradicted." in text
    counts = verdicts.counts_by_section(_records())
    assert counts.loc["Claims of Table 1"].to_dict() == {"held": 1, "not held": 1, "inconclusive": 1, claims.NOT_CONVERGED: 1}
    with pytest.raises(ValueError, match="unknown verdicts"):
        verdicts.verdict_counts(pd.DataFrame({"verdict": ["maybe"]}))


def test_the_matrix_figure_colours_each_cell_by_its_verdict_in_distinct_colours() -> None:
    records = _records()
    figure = verdicts.matrix_figure(records)
    cells = [p for p in figure.axes[0].patches if isinstance(p, Rectangle)]
    assert len(cells) == len(records)
    from matplotlib.colors import to_hex

    assert sorted(to_hex(c.get_facecolor()) for c in cells) == sorted(verdicts.VERDICT_COLOURS[v].lower() for v in records["verdict"])
    assert len(set(verdicts.VERDICT_COLOURS.values())) == len(claims.VERDICTS)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert any(t.startswith("held\n2.0 [") for t in texts) and "Claims of Table 1" in texts
    untested = {to_hex(verdicts.VERDICT_COLOURS[v]) for v in claims.UNTESTED}
    assert {c.get_hatch() for c in cells if to_hex(c.get_facecolor()) in untested} == {verdicts.UNTESTED_HATCH}
    assert {c.get_hatch() for c in cells if to_hex(c.get_facecolor()) not in untested} == {None}
    assert claims.NOT_CONVERGED in texts  # an untested cell names its verdict, and no interval over runs that are not evidence


def test_a_section_shows_only_the_rows_it_was_measured_on_a_few_at_a_time() -> None:
    records = pd.concat([_records(), _records().iloc[:1].assign(section="Open questions", page="scaling", row="C")], ignore_index=True)
    bands = verdicts.matrix_bands(records, max_columns=1)
    assert [(section, columns, len(lines)) for section, columns, lines in bands] == [
        ("Claims of Table 1", ["A"], 3), ("Claims of Table 1", ["B"], 1), ("Open questions", ["C"], 1),
    ]  # B's band holds only the one claim measured on B; C's the one line measured there
    assert [columns for _, columns, _ in verdicts.matrix_bands(records)] == [["A", "B"], ["C"]]
    figure = verdicts.matrix_figure(records, max_columns=1)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "Claims of Table 1 (continued)" in texts and len([p for p in figure.axes[0].patches if isinstance(p, Rectangle)]) == len(records)
    assert figure.get_figwidth() < verdicts.matrix_figure(records, max_columns=3).get_figwidth()


def test_every_page_that_decides_claims_has_a_section_and_every_section_page_exists() -> None:
    notebooks = {p.stem: json.loads(p.read_text()) for p in (ROOT / "notebooks").glob("*.ipynb")}
    deciding = {name for name, nb in notebooks.items() if any("glue_claims(" in "".join(c["source"]) for c in nb["cells"])}
    listed = {page for pages in verdicts.SECTIONS.values() for page in pages}
    assert deciding == listed
