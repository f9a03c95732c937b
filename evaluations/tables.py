"""Markdown tables of metrics with their intervals and of paired differences (evaluator, sweeps, demo).

The reporting rule these tables apply: every value carries its bootstrap interval when one was computed,
a difference to the baseline is set in bold only when its paired interval excludes zero, and nothing is
marked as "best" (a ranking of values inside each other's noise says nothing).
"""


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


def header(metric):
    """``FID↓`` / ``Precision↑``: the name and which way is better."""
    return LABELS[metric] + ("↓" if DIRECTIONS[metric] == "lower" else "↑")


def _number(metric, value, signed=False):
    text = f"{value * SCALES.get(metric, 1.0):{'+' if signed else ''}.{DECIMALS.get(metric, 2)}f}"
    return "+0." + text[3:] if signed and text.startswith("-0.") and float(text) == 0 else text


def excludes_zero(interval):
    """Whether `interval` ([low, high], or None) lies wholly on one side of zero."""
    return interval is not None and (interval[0] > 0 or interval[1] < 0)


def value_cell(metric, value, interval=None):
    """``57.69 [53.10, 62.40]`` (the interval only when there is one)."""
    if value is None:
        return "n/a"
    text = _number(metric, value)
    if interval is not None:
        text += f" [{_number(metric, interval[0])}, {_number(metric, interval[1])}]"
    return text


def difference_cell(metric, difference, interval=None, wins=None, sets=None):
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


def _present(records, metrics):
    """The names of `metrics` (default: all, in table order) that some record (a dict or None) has a value for."""
    names = metrics or ORDER
    return [m for m in names if any(r and r.get(m) is not None for r in records)]


def _markdown(head, body):
    """A markdown table of header cells `head` and rows of cells `body`."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def _metric_table(label_headers, rows, present, metric_header, cell):
    """Rows `(label_cells, record_or_None, status)` with a column per metric in `present`, headed
    `metric_header(m)`; a cell is `cell(m, record)`, or `status` in a row without a record."""
    head = list(label_headers) + [metric_header(m) for m in present]
    body = [list(labels) + [cell(m, record) if record else status for m in present]
            for labels, record, status in rows]
    return _markdown(head, body)


def values_table(
    label_headers,
    rows,
    metrics=None,
):
    """Rows ``(label_cells, record_or_None, status)``; a record holds metric values and ``"intervals"``."""
    present = _present([r for _, r, _ in rows], metrics)

    def cell(m, record):
        return value_cell(m, record.get(m), (record.get("intervals") or {}).get(m))

    return _metric_table(label_headers, rows, present, header, cell)


def differences_table(
    label_headers,
    rows,
    metrics=None,
):
    """Rows ``(label_cells, comparison_or_None, status)`` with comparisons from
    :func:`evaluations.bootstrap.compare` (the row is B, the baseline A)."""
    present = _present([c and c.get("difference") for _, c, _ in rows], metrics)

    def cell(m, comparison):
        sets = comparison.get("seed_sets") or {}
        wins = (sets.get("wins") or {}).get(m, {})
        return difference_cell(
            m, comparison["difference"].get(m), comparison["difference_intervals"].get(m),
            wins.get("b_better"), sets.get("count"),
        )

    return _metric_table(label_headers, rows, present, lambda m: "Δ" + header(m), cell)


def comparison_table(comparison, name_a="A", name_b="B"):
    """One comparison as a table: a row per metric with A, B, B - A and the seed-set tally."""
    sets = comparison["seed_sets"]
    head = ["metric", name_a, name_b, f"{name_b} − {name_a} [paired]",
            f"seed sets: {name_b} better / {name_a} better / tie"]
    body = []
    for m in ORDER:
        if m not in comparison["difference"]:
            continue
        a, b, wins = comparison["a"], comparison["b"], sets["wins"][m]
        body.append([
            header(m),
            value_cell(m, a[m], a["intervals"].get(m)),
            value_cell(m, b[m], b["intervals"].get(m)),
            difference_cell(m, comparison["difference"][m], comparison["difference_intervals"][m]),
            f"{wins['b_better']} / {wins['a_better']} / {wins['ties']}",
        ])
    return _markdown(head, body)
