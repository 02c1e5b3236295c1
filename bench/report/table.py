"""Pivot tables of a suite's results (``pivot.Pivot``) as md, csv, LaTeX or HTML, and ``ssl-bench table``.

A value cell reads ``mean ± std [ci_low, ci_high] n=N`` (the 95 % t-interval), ``mean (n=1, no interval)`` for
one run, and the status of cells that did not complete. With a baseline, each column gets ``Δ`` (the difference
of means; ``n.s.`` where it is not significant) and ``p`` (the two-sided t-test's p, its Benjamini–Hochberg q and
which test). With the paper column, each column gets the published number closest to the cells' protocol
(``reference.paper_column``): plain where every must-match field of its protocol record equals ours, ``†n`` where
some differ and ``‡n`` where the source does not state some, footnote n naming them (``epochs: 1000 vs 6``). The
caption says all of that. The csv keeps the unrounded numbers.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from bench.core.states import CellStatus
from bench.errors import ConfigError
from bench.report.labels import EMPTY, format_p, format_value, label_text, method_label
from bench.report.metric_key import parse_metric
from bench.report.pivot import Pivot, as_tuple, pivot
from bench.report.protocol import MUST_MATCH_TEXT, MatchKind
from bench.report.provenance import environment_warnings
from bench.report.proxy import proxy_agreement
from bench.report.reference import PaperMatch, paper_column
from bench.report.runs import STATUSES, shown_report_suite, suite_runs
from bench.report.stats import ALPHA, CONFIDENCE
from bench.tracking.mlflow_runs import tracking_uri

#: the mark of a difference to the baseline that is not significant († and ‡ mark published numbers)
NOT_SIGNIFICANT = "n.s."
TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$", "Δ": r"$\Delta$",
               "–": "--", "†": r"\dag{}", "‡": r"\ddag{}", "≥": r"$\geq$", "<": r"$<$", ">": r"$>$"}


def caption(table: Pivot) -> str:
    """The line above a table: the metric and its unit, what the numbers are, the tests, and any notes."""
    accuracy = parse_metric(table.metric).is_accuracy
    unit = " (%; accuracy × 100)" if accuracy else ""
    level = f"{CONFIDENCE:.0%}".replace("%", " %")
    parts = [f"{table.metric}{unit}: mean ± sample std [{level} confidence interval, t-distribution with n-1 degrees of "
             "freedom] over n runs (one run: no ± and no interval); best per column in bold (baseline rows never)"]
    if table.delta is not None:
        points = " in percentage points" if accuracy else ""
        parts.append(f"Δ: difference to {table.rows[0]} = {table.baseline}{points}; p: two-sided t-test against that row, "
                     "paired by seed when both rows are one method with the same seeds (each once), else Welch's; "
                     f"q: p adjusted by Benjamini-Hochberg over the table's {table.tests} tests; "
                     f"{NOT_SIGNIFICANT} not significant (q ≥ {ALPHA:g}); {EMPTY}: no test (fewer than two runs in a row)")
    if table.left_out:
        parts.append(f"{table.left_out} cells without a value for {', '.join(table.rows + table.cols)} left out")
    if table.sources:
        parts.append("paper: the published number closest to the cells' protocol, plain where its record equals ours in "
                     f"every must-match field ({MUST_MATCH_TEXT}); {MatchKind.PARTIAL.mark}n: some differ, "
                     f"{MatchKind.UNKNOWN.mark}n: the source does not state some, footnote n names them as "
                     "field: theirs vs ours; from " + "; ".join(table.sources))
    if table.proxy:
        parts.append(table.proxy)
    return ". ".join(parts) + "."


def to_markdown(table: Pivot) -> str:
    """A GitHub-flavoured markdown table under its caption line."""
    header, body = _grid(table)

    def cell(entry: _Entry) -> str:
        text = entry.text.replace("|", r"\|")
        text = f"**{text}**" if entry.best else text
        return f"{text} {entry.note}" if entry.note else text

    align = ["---"] * len(table.rows) + ["---:"] * (len(header) - len(table.rows))
    lines = [caption(table), "", _md_row(h.replace("|", r"\|") for h in header), _md_row(align)]
    lines += [_md_row(cell(entry) for entry in line) for line in body]
    notes = _notes(body)
    lines += ["", *(f"{mark} {text}" for mark, text in notes.items())] if notes else []
    return "\n".join(lines) + "\n"


def to_latex(table: Pivot) -> str:
    """A booktabs ``table`` environment (``\\toprule``, ``\\midrule``, ``\\bottomrule``), best values in ``\\textbf``."""
    header, body = _grid(table)

    def cell(entry: _Entry) -> str:
        text = _tex(entry.text)
        text = rf"\textbf{{{text}}}" if entry.best else text
        return rf"{text}\textsuperscript{{{_tex(entry.note)}}}" if entry.note else text

    spec = "l" * len(table.rows) + "r" * (len(header) - len(table.rows))
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(caption(table))}}}", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(entry) for entry in line) + r" \\" for line in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = _notes(body)
    if notes:  # the footnotes under the tabular, inside the float
        lines += [r"\par\footnotesize"] + [rf"\textsuperscript{{{_tex(mark)}}} {_tex(text)}\\" for mark, text in notes.items()]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_html(table: Pivot) -> str:
    """A plain ``<table class="ssl-bench-table">``; cells carry classes (key, value, best, delta, p, paper, missing, ...)."""
    header, body = _grid(table)
    lines = ['<table class="ssl-bench-table">', f"<caption>{html.escape(caption(table))}</caption>", "<thead>",
             "<tr>" + "".join(f'<th scope="col">{html.escape(h)}</th>' for h in header) + "</tr>", "</thead>", "<tbody>"]
    notes = _notes(body)
    for line in body:
        cells = []
        for entry in line:
            text = html.escape(entry.text)
            classes = entry.kind + " best" * entry.best + f" {entry.match}" * bool(entry.match)
            if entry.kind == "key":
                cells.append(f'<th scope="row" class="{classes}">{text}</th>')
                continue
            text = f"<strong>{text}</strong>" if entry.best else text
            if entry.note:  # the footnote as a tooltip too
                text += f' <sup title="{html.escape(notes[entry.note])}">{html.escape(entry.note)}</sup>'
            cells.append(f'<td class="{classes}">{text}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody>")
    if notes:
        lines.append(f'<tfoot><tr><td colspan="{len(header)}" class="notes">'
                     + "<br>".join(html.escape(f"{mark} {text}") for mark, text in notes.items()) + "</td></tr></tfoot>")
    lines.append("</table>")
    return "\n".join(lines) + "\n"


def to_csv(table: Pivot) -> str:
    """The unrounded numbers: the row keys, then per column ``<col> mean``, ``std``, ``ci_low``, ``ci_high``, ``n``
    (with a baseline ``delta``, ``p``, ``q``, ``test``; with the paper column ``paper``, ``paper_match`` (exact,
    partial, unknown), ``paper_diff`` (``field=theirs|ours;...``) and ``paper_source``) and ``status``."""
    data: dict[str, Any] = {key: [as_tuple(label)[k] for label in table.mean.index] for k, key in enumerate(table.rows)}
    for j, column in enumerate(table.mean.columns):
        name = _column_text(column)
        frames = {"mean": table.mean, "std": table.std, "ci_low": table.ci_low, "ci_high": table.ci_high, "n": table.n,
                  "delta": table.delta, "p": table.p, "q": table.q, "test": table.test, "paper": table.paper}
        data.update({f"{name} {field}": frame.iloc[:, j].to_numpy() for field, frame in frames.items() if frame is not None})
        if table.matches is not None:
            found: list[PaperMatch | None] = table.matches.iloc[:, j].tolist()
            data[f"{name} paper_match"] = [m.kind.value if m else "" for m in found]
            data[f"{name} paper_diff"] = [m.comparison.csv() if m else "" for m in found]
            data[f"{name} paper_source"] = [m.reference.citation() if m else "" for m in found]
        data[f"{name} status"] = [table.note(i, j) or (CellStatus.COMPLETE if table.status_counts(i, j) else "none")
                                  for i in range(len(table.mean.index))]
    return pd.DataFrame(data).to_csv(index=False)


#: --format name -> renderer; the name is also the file extension
RENDERERS: dict[str, Callable[[Pivot], str]] = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "html": to_html}


def table_path(out: Path, suite_name: str, table: Pivot, fmt: str) -> Path:
    """``out`` when it names a file; for a directory ``<out>/<suite>/tables/<metric>_<rows>_by_<cols>.<fmt>``."""
    if out.suffix and not out.is_dir():
        return out
    return out / suite_name / "tables" / f"{table.metric}_{'-'.join(table.rows)}_by_{'-'.join(table.cols)}.{fmt}"


def cmd_table(args: argparse.Namespace, console: Console) -> int:
    """``ssl-bench table SUITE --rows ... --cols ... --metric ...``: print the table, or write it with ``--out``.

    Which variant of the suite it shows goes to stderr, so the table alone goes to stdout."""
    shown = shown_report_suite(args.suite, args.set, as_run=args.as_run, as_file=args.as_file, tracking=args.tracking)
    Console(stderr=True, soft_wrap=True).print(shown.line, markup=False, highlight=False)
    df = suite_runs(shown.suite, uri=tracking_uri(args.tracking) if args.tracking else None)
    if df["run_id"].isna().all():
        raise ConfigError(f"no cell of the suite shown has run ({shown.line}); run it, or pick a variant that ran "
                          "(leave out --set and --as-file, or give --as-run N)")
    table = pivot(df, args.rows, args.cols, args.metric, baseline=args.baseline)
    for line in environment_warnings(df):
        Console(stderr=True).print(f"warning: {line}", style="yellow", markup=False, highlight=False)
    if args.paper:
        table = paper_column(table, df)
    if args.proxy:
        table = replace(table, proxy=proxy_agreement(df, args.proxy, args.metric).line())
    suffix = args.out.suffix.lstrip(".") if args.out else ""
    fmt = args.format or (suffix if suffix in RENDERERS else "md")
    text = RENDERERS[fmt](table)
    if args.out is None:
        console.out(text, highlight=False, end="")
        return 0
    path = table_path(args.out, shown.suite.name, table, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    console.print(f"wrote {path}", markup=False, highlight=False)
    return 0


@dataclass(frozen=True)
class _Entry:
    """One rendered cell: its text, its kind (key, value, delta, p, paper, or the status of a cell without a value);
    a paper cell also its match (exact, partial, unknown), its footnote mark (``†1``) and the footnote."""

    text: str
    kind: str
    best: bool = False
    match: str = ""
    note: str = ""
    footnote: str = ""


def _grid(table: Pivot) -> tuple[list[str], list[list[_Entry]]]:
    """The header and the rows of text that every renderer but csv lays out."""
    header = list(table.rows)
    for column in table.mean.columns:
        name = _column_text(column)
        header.append(name)
        if table.delta is not None:
            header += [f"{name} Δ {table.baseline}", f"{name} p"]
        if table.paper is not None:
            header.append(f"{name} (paper)")
    body, numbers = [], {}
    for i, label in enumerate(table.mean.index):
        line = [_Entry(method_label(value) if key == "method" else label_text(value), "key")
                for key, value in zip(table.rows, as_tuple(label))]
        for j in range(len(table.mean.columns)):
            line.append(_value_entry(table, i, j))
            if table.delta is not None:
                line += _test_entries(table, i, j)
            if table.paper is not None:
                line.append(_paper_entry(table, i, j, numbers))
        body.append(line)
    return header, body


def _paper_entry(table: Pivot, i: int, j: int, numbers: dict[str, int]) -> _Entry:
    """The published number, marked with its footnote (``†1``) where the protocols are not the same; ``numbers``
    numbers the footnotes of the table in order of appearance (one number per distinct footnote)."""
    text = format_value(table.metric, table.paper.iat[i, j])
    match: PaperMatch | None = table.matches.iat[i, j] if table.matches is not None else None
    if match is None or match.kind == MatchKind.EXACT:
        return _Entry(text, "paper", match=match.kind.value if match else "")
    footnote = f"({match.reference.citation()}) {match.comparison.note()}"
    number = numbers.setdefault(footnote, len(numbers) + 1)
    return _Entry(text, "paper", match=match.kind.value, note=f"{match.kind.mark}{number}", footnote=footnote)


def _notes(body: list[list[_Entry]]) -> dict[str, str]:
    """Footnote mark (``†1``) -> its text, in the order of the table's cells."""
    return {entry.note: entry.footnote for line in body for entry in line if entry.note}


def _value_entry(table: Pivot, i: int, j: int) -> _Entry:
    """``mean ± std [low, high] n=N`` with the cell's status note, e.g. ``71.2 (n=1, no interval), failed (1/2)``."""
    n = table.n.iat[i, j]
    value = ""
    if n:
        value = format_value(table.metric, table.mean.iat[i, j])
        if n > 1:
            low, high = (format_value(table.metric, frame.iat[i, j]) for frame in (table.ci_low, table.ci_high))
            value += f" ± {format_value(table.metric, table.std.iat[i, j])} [{low}, {high}] n={n}"
        else:
            value += " (n=1, no interval)"
    counts = table.status_counts(i, j)
    kind = "value" if n else next((s for s in STATUSES if counts.get(s)), "empty")
    text = ", ".join(part for part in (value, table.note(i, j)) if part) or EMPTY
    return _Entry(text, kind, bool(table.best.iat[i, j]))


def _test_entries(table: Pivot, i: int, j: int) -> list[_Entry]:
    """The Δ cell (``+1.2``, ``-0.4 †`` when not significant) and the p cell (``p 0.012, q 0.030 (Welch)``)."""
    delta = format_value(table.metric, table.delta.iat[i, j], signed=True)
    significant = table.significant(i, j)
    if significant is None:
        return [_Entry(delta, "delta"), _Entry(EMPTY, "p")]
    mark = "" if significant else f" {NOT_SIGNIFICANT}"
    p = f"p {format_p(table.p.iat[i, j])}, q {format_p(table.q.iat[i, j])} ({table.test.iat[i, j]})"
    return [_Entry(delta + mark, "delta"), _Entry(p, "p")]


def _column_text(label: Any) -> str:
    return " / ".join(label_text(value) for value in as_tuple(label))


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _tex(text: str) -> str:
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in text)
