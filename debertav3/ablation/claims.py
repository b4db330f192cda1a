"""The DeBERTaV3 paper's embedding-sharing claims, checked against an ablation's per-mode means.

Paper (section 5.1, table 2; docs/reference.md "Embedding sharing: ES, NES, GDES"): GDES beats ES and NES
downstream (MNLI-m 89.3 vs 88.8 / 88.3 for base models) and every RTD variant beats the MLM baseline (86.3); NES
converges faster than ES on the generator's MLM loss; the generator's embeddings stay coherent (higher average
pairwise cosine similarity) under NES and GDES, while ES's are pulled apart by the tug of war; under NES the
generator's are more coherent than the discriminator's. Pretrained models beating a random initialisation is
the sanity check.

A claim "holds" when the means compare the paper's way. With several seeds, a gap smaller than the larger of
the two standard deviations is flagged as within the seed spread; with one seed there is no spread to judge by.
"""

from __future__ import annotations

from typing import Optional

from ..constants import SHARING_MODES


def downstream(summary: dict, mode: str, tasks: list[str]) -> dict:
    """{mean, std}: the mean over tasks of the headline dev metric (std: the largest of the tasks' stds)."""
    stats = [summary.get(mode, {}).get(task, {}) for task in tasks]
    if not tasks or any(s.get("mean") is None for s in stats):
        return {"mean": None, "std": None}
    stds = [s["std"] for s in stats if s["std"] is not None]
    return {"mean": sum(s["mean"] for s in stats) / len(stats), "std": max(stds) if stds else None}


def compare(a: dict, b: dict, a_name: str, b_name: str, higher_is_better: bool) -> tuple[Optional[bool], str]:
    """(whether a beats b, the evidence as text); None when either was not measured."""
    if a.get("mean") is None or b.get("mean") is None:
        return None, f"{a_name} or {b_name} not measured"
    gap = a["mean"] - b["mean"]
    better = gap > 0 if higher_is_better else gap < 0
    evidence = f"{a_name} {a['mean']:.4f} vs {b_name} {b['mean']:.4f}"
    spreads = [s for s in (a.get("std"), b.get("std")) if s is not None]
    if spreads and abs(gap) < max(spreads):
        evidence += f" (gap {abs(gap):.4f} within the seed spread {max(spreads):.4f})"
    elif not spreads:
        evidence += " (one seed: no spread estimate)"
    return better, evidence


def verdict(results: list[tuple[Optional[bool], str]]) -> tuple[str, str]:
    evidence = "; ".join(text for _, text in results)
    if not results or any(r is None for r, _ in results):
        return "not measured", evidence or "not measured"
    return ("holds" if all(r for r, _ in results) else "does not hold"), evidence


def check_claims(summary: dict, tasks: list[str]) -> list[dict]:
    """[{claim, verdict, evidence}] for the claims whose modes the ablation ran (others: "not measured")."""
    def stat(mode: str, metric: str) -> dict:
        return summary.get(mode, {}).get(metric, {})

    def down(mode: str) -> dict:
        return downstream(summary, mode, tasks)

    checks = {
        "GDES beats ES and NES downstream (paper: MNLI 89.3 vs 88.8 / 88.3)":
            [compare(down("gdes"), down(m), "gdes", m, True) for m in ("es", "nes")],
        "Every RTD variant beats the MLM baseline downstream (paper: 88.3-89.3 vs 86.3)":
            [compare(down(m), down("mlm"), m, "mlm", True) for m in SHARING_MODES],
        "NES converges faster than ES on the generator's MLM loss (training loss at 25% and 50% of the steps)":
            [compare(stat("nes", k), stat("es", k), "nes", "es", False) for k in ("mlm_loss@25%", "mlm_loss@50%")],
        "GDES keeps NES's faster MLM convergence (GDES below ES at 25% and 50%)":
            [compare(stat("gdes", k), stat("es", k), "gdes", "es", False) for k in ("mlm_loss@25%", "mlm_loss@50%")],
        "Under NES the generator's embeddings are more coherent than the discriminator's (cos E_G > cos E_D)":
            [compare(stat("nes", "cosine_E_G"), stat("nes", "cosine_E_D"), "nes E_G", "nes E_D", True)],
        "Tug of war: ES's shared embeddings are less coherent than the generator's under NES and GDES":
            [compare(stat(m, "cosine_E_G"), stat("es", "cosine_E_G"), f"{m} E_G", "es E_G", True)
             for m in ("nes", "gdes")],
        "Pretraining beats a random initialisation downstream (sanity check)":
            [compare(down(m), down("random"), m, "random", True) for m in (*SHARING_MODES, "mlm") if m in summary],
    }
    return [dict(zip(("claim", "verdict", "evidence"), (claim, *verdict(results))))
            for claim, results in checks.items()]
