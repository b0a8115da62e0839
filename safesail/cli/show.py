"""The tables the step commands and the demo print: the SAE ranking, the safety landscape across
layers, and each concept's top candidate with its top contexts. Apart from the handlers so the
demo and the single commands print the same thing from one piece of code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from safesail.db.contracts import Workspace

if TYPE_CHECKING:
    from safesail import workspace


def print_ranking(ws: Workspace) -> None:
    """One ranked table: today's score (and rank), Safe-SAIL's pre-explanation index (mean
    I_CDF over concepts, its rank, mean L0 at t) and SAEBench's core metrics; then per SAE
    the best AUROC / probe F1 / I_CDF of its first concepts."""
    from safesail.selection.score import ranking_rows

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    records = {r.id: r for r in ws.saes()}
    print(
        f"{'SAE':<22}{'layer':>6}{'d_sae':>7}{'k':>5}{'score':>8}{'#':>3}{'I_CDF':>7}{'#':>3}"
        f"{'L0_t':>7}{'L0':>6}{'FVE':>6}{'MSE':>8}{'CE rec':>8}{'dead':>6}{'dense':>6}"
    )
    for row in ranking_rows(list(records.values())):
        mark = " *" if row["selected"] else ""
        print(
            f"{row['id'] + mark:<22}{row['layer']:>6}{row['d_sae']:>7}{row['k'] or '-':>5}"
            f"{fmt(row['score'], '.3f'):>8}{row['rank'] or '-':>3}"
            f"{fmt(row['pre_index'], '.3f'):>7}{row['pre_rank'] or '-':>3}"
            f"{fmt(row['l0_t'], '.1f'):>7}{fmt(row['l0'], '.1f'):>6}{fmt(row['fve'], '.2f'):>6}"
            f"{fmt(row['mse'], '.3g'):>8}{fmt(row['ce_loss_score'], '.3f'):>8}"
            f"{fmt(row['dead_fraction'], '.0%'):>6}{fmt(row['dense_fraction'], '.0%'):>6}"
        )
        selection = records[row["id"]].selection or {}
        pre = (selection.get("pre_explanation") or {}).get("concepts", {})
        detail = " ".join(
            f"{c}:{v['best_auroc']:.2f}/{v['probe_f1']:.2f}/{pre[c]['i_cdf']:.2f}"
            if c in pre
            else f"{c}:{v['best_auroc']:.2f}/{v['probe_f1']:.2f}/-"
            for c, v in list(selection.get("concepts", {}).items())[:4]
        )
        if detail:
            print(f"    best AUROC / probe F1 / I_CDF: {detail} ...")


def print_landscape(ws: workspace.Workspace) -> None:
    """Safety candidates per concept (columns) and layer (rows) of the selected configuration."""
    land = ws.landscape()
    concepts = sorted({c for counts in land.values() for c in counts})
    short = {c: c[:8] for c in concepts}
    print("\nlandscape: safety candidates per layer and concept")
    print(f"{'layer':>6}" + "".join(f"{short[c]:>9}" for c in concepts) + f"{'all':>6}")
    for layer, counts in land.items():
        cells = "".join(f"{counts.get(c, 0):>9}" for c in concepts)
        print(f"{layer:>6}{cells}{sum(counts.values()):>6}")


def print_candidates(
    ws: Workspace, sae_id: str | None = None, per_concept: int = 1, contexts: int = 3
) -> None:
    """The best candidates of each concept (of `sae_id`, default the selected SAE) with their
    top contexts, the peak token marked: what triage found is judged by reading it."""
    from sqlmodel import Session, select

    from safesail.db.tables import Context, Feature
    from safesail.features.examples import feature_examples

    with Session(ws.engine) as session:
        rows = session.exec(
            select(Feature)
            .where(Feature.sae_id == (sae_id or ws.selected_sae), Feature.candidate)
            .order_by(Feature.safety_score.desc())
        ).all()
        shown: dict[str, int] = {}
        for feature in rows:
            if shown.get(feature.concept, 0) >= per_concept:
                continue
            shown[feature.concept] = shown.get(feature.concept, 0) + 1
            print(
                f"\n  [{feature.concept}] feature {feature.index} (AUROC {feature.auroc:.2f}, fires on {feature.firing_rate:.2%} of tokens)"
            )
            for ex in feature_examples(feature)[:contexts]:
                tokens = session.get(Context, ex.text_id).tokens
                peak = int(ex.activations.argmax())
                marked = "".join(f"[[{t}]]" if i == peak else t for i, t in enumerate(tokens))
                print(f"    {ex.max_act:6.2f}  {marked.strip()[:150]!r}")
