"""What the book's pages share, each computed once and tested here, so that no notebook copies a cell.

Every page ends on its claims (:func:`glue_claims`). An ablation page (IC placement, IC size, loss
scaling, phase split, methods) is its parameters, one call and one line a figure or table::

    page = ablation_page(s, change=(claims.LARGER_ICS_HELP_DISJOINT, "disjoint", "disjoint"))
    format_budget_table(page.table, ci=True)
    page.variant_figure();
    page.glue_claims(profile)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from mexit import claims
from mexit.claims import Claim
from mexit.evaluate import ExitOutputs, at_stated_budget, budget_table, evidence_view, run_points
from mexit.plots import flops_accuracy, panels, variant_accuracy
from mexit.study import Study, exit_table, head_costs, p1_sharing, sweep_table
from mexit.verdicts import claim_record, record_claims

VARIANT_GROUPS: tuple[str, ...] = ("row", "variant", "regime")


def claim_glue(status: pd.DataFrame, profile: str | None, digits: int = 1, measures: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """A page's claims as its text cites them, by glue name: ``claims`` (the verdicts under
    ``profile``, effects to ``digits`` decimals: :func:`mexit.claims.status_view`) and
    ``claim_measures`` (how each claim of ``measures`` is measured; None: each of ``status``'s)."""
    return {"claims": claims.status_view(status, profile, digits), "claim_measures": claims.measures_view(status if measures is None else measures)}


def glue_claims(
    status: pd.DataFrame, profile: str | None, digits: int = 1, fresh: pd.DataFrame | None = None, measures: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Glue :func:`claim_glue` into the executing notebook (myst-nb), record the same rows for the
    verdict matrix (:func:`mexit.verdicts.record_claims`, where ``mexit book`` asks for it; with
    ``fresh``, the same claims decided on a fresh set of seeds, how those read each verdict), and
    return the verdicts' view. ``measures``: the rows whose claims the page's "measured as" table
    defines (a page that repeats another page's claims leaves those to it)."""
    values = claim_glue(status, profile, digits, measures)
    _glue(values)
    record_claims(claim_record(status, digits, fresh))
    return values["claims"]


def _glue(values: dict[str, Any]) -> None:
    from myst_nb import glue  # the book's executing kernel; nothing else needs myst-nb

    for name, value in values.items():
        glue(name, value, display=False)


@dataclass(frozen=True)
class AblationPage:
    """An ablation study's runs and what its page shows of them.

    ``outputs``: every run's logits (:meth:`Study.outputs`); ``evidence``: which runs a verdict may
    rest on; ``points``: each run's operating point at each budget; ``table``: the budget table per
    row, variant and regime; ``status``: the claims' verdicts (:func:`mexit.claims.ablation_claims`);
    ``sharing``: how the runs that begin with P1 share it (:func:`mexit.study.p1_sharing`)."""

    study: Study
    outputs: list[ExitOutputs]
    evidence: pd.DataFrame
    points: pd.DataFrame
    table: pd.DataFrame
    status: pd.DataFrame
    sharing: pd.DataFrame

    @property
    def needs(self) -> str:
        """What the page's verdicts ask of a run (:attr:`mexit.claims.Claim.needs`): ``"learned"``
        where every claim it decides reads runs at a stated training budget (the phase split),
        else ``"convergence"``."""
        needs = {claims.claim_needs(str(key)) for key in self.status["key"]} if len(self.status) else set()
        return "learned" if needs == {"learned"} else "convergence"

    def evidence_view(self) -> pd.DataFrame:
        """Per row, variant and regime, the runs the page's verdicts may rest on (:attr:`needs`):
        which runs are evidence and why not where not, or at a stated budget which runs learned."""
        return evidence_view(self.evidence, by=VARIANT_GROUPS, needs=self.needs)

    def variant_figure(self) -> Figure:
        """Each row's variants side by side at the highest budget: accuracy per regime with its 95% CI."""
        budget = max(self.study.scoring.budgets)
        return panels(self.table, lambda frame, ax: variant_accuracy(frame, budget=budget, ax=ax), ncols=1, size=(8.0, 4.5))

    def curve_figure(self) -> Figure:
        """Accuracy against cost per row and variant: each regime's curve (a band over seeds) and its
        single exits."""
        curves = sweep_table(self.outputs, self.study.scoring)
        exits = exit_table(self.outputs)
        curves["panel"] = curves["row"] + " - " + curves["variant"]

        def draw(frame: pd.DataFrame, ax: Any) -> None:
            same = (exits["row"] == frame["row"].iloc[0]) & (exits["variant"] == frame["variant"].iloc[0])
            flops_accuracy(frame, hue="regime", singles=exits[same], band="seed", ax=ax)

        return panels(curves, draw, by="panel", ncols=3, size=(4.5, 3.5))

    def head_costs(self) -> pd.DataFrame:
        """What each variant's ICs add to the backbone (:func:`mexit.study.head_costs`), rounded."""
        return head_costs(self.outputs).round({"ic_pct": 2, "ic_macs": 0, "macs_per_ic": 0})

    def glued(self, profile: str | None) -> dict[str, Any]:
        """The values the page's text cites, by glue name: how many "mixed ahead" verdicts held of
        those tested, the P1 runs and states, and the claims' views under ``profile``."""
        ahead = self.status[self.status["key"] == claims.MIXED_AHEAD.key] if len(self.status) else self.status
        held = int((ahead["verdict"] == "held").sum()) if len(ahead) else 0
        return {
            "ahead_held": held,
            "ahead_tested": len(ahead),
            "ahead_sentence": (
                f'Mixed stays ahead of the other regimes ("held") in {held} of the {len(ahead)} variants that train it beside another regime.'
                if len(ahead) else 'No variant here trains mixed beside another regime, so "mixed stays ahead" is not measured on this page.'
            ),
            "p1_runs": int(self.sharing["runs"].sum()),
            "p1_states": int(self.sharing["p1_states"].sum()),
            **claim_glue(self.status, profile),
        }

    def glue_claims(self, profile: str | None) -> pd.DataFrame:
        """Glue :meth:`glued` into the executing notebook (myst-nb), record the claims for the
        verdict matrix (as :func:`glue_claims` does); return the verdicts' view."""
        values = self.glued(profile)
        _glue(values)
        record_claims(claim_record(self.status))
        return values["claims"]

    def summary(self) -> str:
        """The page's machine-independent summary (what nbval checks): runs per variant and regime,
        exits per run, P1 states per seed and how many runs are evidence (at a stated training
        budget, :attr:`needs`: how many learned and trained it)."""
        exits = exit_table(self.outputs)
        return "\n".join(
            [
                self.table.groupby(["variant", "regime"], sort=False)["n"].first().to_string(),
                f"exits per run: {sorted(exits.groupby(['variant', 'regime', 'seed']).size().unique().tolist())}",
                f"P1 states per seed: {self.sharing['p1_states'].tolist()}",
                (f"runs that learned at the stated budget: {int(at_stated_budget(self.evidence).sum())} of {len(self.evidence)}" if self.needs == "learned"
                 else f"evidence runs: {int(self.evidence['evidence'].sum())} of {len(self.evidence)}"),
            ]
        )


def ablation_page(s: Study, change: tuple[Claim, str, str] | None = None) -> AblationPage:
    """Train or load ``s``'s runs (it must have variants) and compute what an ablation page shows;
    ``change``: the claim the ablation tests, as :func:`mexit.claims.ablation_claims` takes it
    (None: only "mixed ahead" per variant)."""
    if not all(row.variant is not None for row in s.rows):
        raise ValueError("ablation_page needs a study with variants (make_study(..., variants=[...]))")
    outputs = s.outputs()  # trained once into the run store; disjoint and mixed share one P1 per seed
    evidence, _ = s.evidence()
    points = run_points(outputs, s.scoring)
    return AblationPage(
        study=s,
        outputs=outputs,
        evidence=evidence,
        points=points,
        table=budget_table(outputs, s.scoring, by=VARIANT_GROUPS),
        status=claims.ablation_claims(points, evidence, change),
        sharing=p1_sharing(s.phase_costs()),
    )
