"""Markdown tables of metrics with their intervals and of paired differences (evaluator, sweeps, demo).

The reporting rule these tables apply: every value carries its bootstrap interval when one was computed,
a difference to the baseline is set in bold only when its paired interval excludes zero, and nothing is
marked as "best" (a ranking of values inside each other's noise says nothing).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from .bootstrap import DIRECTIONS

ORDER = ("fid", "sfid", "kid", "inception_score", "precision", "recall")
LABELS = {
    "fid": "FID",
    "sfid": "sFID",
    "kid": "KID×10³",
    "inception_score": "IS",
    "precision": "Precision",
    "recall": "Recall",
}
SCALES = {"kid": 1e3}
DECIMALS = {"precision": 3, "recall": 3}

__all__ = [
    "ORDER",
    "LABELS",
    "header",
    "value_cell",
    "difference_cell",
    "excludes_zero",
    "values_table",
    "differences_table",
    "comparison_table",
]


def header(metric: str) -> str:
    """``FID↓`` / ``Precision↑``: the name and which way is better."""
    return LABELS[metric] + ("↓" if DIRECTIONS[metric] == "lower" else "↑")


def _number(metric: str, value: float, signed: bool = False) -> str:
    text = f"{value * SCALES.get(metric, 1.0):{'+' if signed else ''}.{DECIMALS.get(metric, 2)}f}"
    return "+0." + text[3:] if signed and text.startswith("-0.") and float(text) == 0 else text


def excludes_zero(interval: Optional[Sequence[float]]) -> bool:
    return interval is not None and (interval[0] > 0 or interval[1] < 0)


def value_cell(metric: str, value, interval=None) -> str:
    """``57.69 [53.10, 62.40]`` (the interval only when there is one)."""
    if value is None:
        return "n/a"
    text = _number(metric, value)
    if interval is not None:
        text += f" [{_number(metric, interval[0])}, {_number(metric, interval[1])}]"
    return text


def difference_cell(metric: str, difference, interval=None, wins=None, sets=None) -> str:
    """``**+3.52** [+0.40, +6.90] (4/5)``: bold when the interval excludes zero; ``(w/K)``: seed sets won."""
    if difference is None:
        return "n/a"
    number = _number(metric, difference, signed=True)
    text = f"**{number}**" if excludes_zero(interval) else number
    if interval is not None:
        text += f" [{_number(metric, interval[0], True)}, {_number(metric, interval[1], True)}]"
    if wins is not None and sets:
        text += f" ({wins}/{sets})"
    return text


def _present(records: Sequence[Optional[Dict]], metrics: Optional[Sequence[str]]) -> List[str]:
    names = metrics or ORDER
    return [m for m in names if any(r and r.get(m) is not None for r in records)]


def values_table(
    label_headers: Sequence[str],
    rows: Sequence[tuple],
    metrics: Optional[Sequence[str]] = None,
) -> str:
    """Rows ``(label_cells, record_or_None, status)``; a record holds metric values and ``"intervals"``."""
    present = _present([r for _, r, _ in rows], metrics)
    head = list(label_headers) + [header(m) for m in present]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for labels, record, status in rows:
        cells = list(labels)
        for m in present:
            if not record:
                cells.append(status)
            else:
                cells.append(value_cell(m, record.get(m), (record.get("intervals") or {}).get(m)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def differences_table(
    label_headers: Sequence[str],
    rows: Sequence[tuple],
    metrics: Optional[Sequence[str]] = None,
) -> str:
    """Rows ``(label_cells, comparison_or_None, status)`` with comparisons from
    :func:`evaluations.bootstrap.compare` (the row is B, the baseline A)."""
    comparisons = [c for _, c, _ in rows]
    present = _present([c and c.get("difference") for c in comparisons], metrics)
    head = list(label_headers) + ["Δ" + header(m) for m in present]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for labels, comparison, status in rows:
        cells = list(labels)
        for m in present:
            if not comparison:
                cells.append(status)
                continue
            sets = comparison.get("seed_sets") or {}
            wins = (sets.get("wins") or {}).get(m, {})
            cells.append(difference_cell(
                m, comparison["difference"].get(m), comparison["difference_intervals"].get(m),
                wins.get("b_better"), sets.get("count"),
            ))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(comparison: Dict, name_a: str = "A", name_b: str = "B") -> str:
    """One comparison as a table: a row per metric with A, B, B - A and the seed-set tally."""
    sets = comparison["seed_sets"]
    head = ["metric", name_a, name_b, f"{name_b} − {name_a} [paired]",
            f"seed sets: {name_b} better / {name_a} better / tie"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in ORDER:
        if m not in comparison["difference"]:
            continue
        a, b, wins = comparison["a"], comparison["b"], sets["wins"][m]
        lines.append("| " + " | ".join([
            header(m),
            value_cell(m, a[m], a["intervals"].get(m)),
            value_cell(m, b[m], b["intervals"].get(m)),
            difference_cell(m, comparison["difference"][m], comparison["difference_intervals"][m]),
            f"{wins['b_better']} / {wins['a_better']} / {wins['ties']}",
        ]) + " |")
    return "\n".join(lines) + "\n"
