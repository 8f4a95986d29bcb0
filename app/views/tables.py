"""A bundle's tables as server-paged DataTables, each folded until opened: the browser holds
one page of rows; paging, sorting and filtering run on the server over the whole table. A
22,536-row pattern table then costs the page what 15 rows cost (hand-built cells took the
browser seconds per table).

The filter row speaks DataTable's `filter_query` language, of which the table's filter cells
write `{column} OP value` clauses joined by ` && `; `rows_of` understands those clauses and
refuses anything else with a message shown under the table, never a silently unfiltered page.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from dash import dash_table, html

PAGE_SIZE = 15

# The operators the filter cells write, by name (DataTable accepts both spellings).
_COMPARE = {"=": "eq", "eq": "eq", "!=": "ne", "ne": "ne", "<": "lt", "lt": "lt", "<=": "le", "le": "le",
            ">": "gt", "gt": "gt", ">=": "ge", "ge": "ge", "contains": "contains", "datestartswith": "startswith"}
_CLAUSE = re.compile(r"^\{(?P<column>[^}]+)\}\s+(?P<case>[is]?)(?P<op>" + "|".join(
    sorted(map(re.escape, _COMPARE), key=len, reverse=True)) + r")\s+(?P<value>.+)$", re.S)


def table_ids(bundle: str, table: str) -> dict:
    return {"type": "bundle-table", "bundle": bundle, "table": table}


def status_ids(bundle: str, table: str) -> dict:
    return {"type": "bundle-table-status", "bundle": bundle, "table": table}


@dataclass(frozen=True)
class TablePage:
    """One page of a table: its rows as DataTable records, the page shown (clamped to the
    pages there are), how many pages, and a line saying which rows these are."""

    records: list[dict]
    page: int
    page_count: int
    status: str


def fold_ids(bundle: str, table: str) -> dict:
    return {"type": "bundle-table-fold", "bundle": bundle, "table": table}


def slot_ids(bundle: str, table: str) -> dict:
    return {"type": "bundle-table-slot", "bundle": bundle, "table": table}


def folded_table(bundle: str, name: str, frame: pd.DataFrame) -> html.Details:
    """Table `name` of `bundle` folded under a line with its size; the server draws it
    (`bundle_table`) when it is first opened. A table costs a new tab about 0.1-0.3 s to
    mount (and the first one 0.6 MB of DataTable code to evaluate), which made pages with
    several tables miss 2 s; every table is one click (or a CSV download) away."""
    summary = f"{len(frame):,} rows × {frame.shape[1]} columns: click to show, sort and filter"
    return html.Details([html.Summary(summary, id=fold_ids(bundle, name)), html.Div(id=slot_ids(bundle, name))],
                        id=f"table-{name}-fold", className="table-fold")


def bundle_table(bundle: str, name: str, frame: pd.DataFrame) -> html.Div:
    """Table `name` of `bundle` (whose rows are `frame`) with its first page filled in; the
    server callback `table_page` fills the others."""
    first = table_page(frame, 0, PAGE_SIZE, [], "")
    table = dash_table.DataTable(
        id=table_ids(bundle, name), columns=[_column(frame, c) for c in frame.columns], data=first.records,
        page_action="custom", page_current=0, page_size=PAGE_SIZE, page_count=first.page_count,
        sort_action="custom", sort_mode="multi", sort_by=[], filter_action="custom", filter_query="",
        style_table={"overflowX": "auto"}, style_header={"backgroundColor": "#f3f5f9", "fontWeight": "bold"},
        style_cell={"fontFamily": "system-ui, sans-serif", "fontSize": "13px", "textAlign": "left",
                    "padding": "3px 8px", "maxWidth": "420px", "overflow": "hidden", "textOverflow": "ellipsis"},
        tooltip_delay=400, tooltip_duration=None)
    return html.Div([table, html.P(first.status, id=status_ids(bundle, name), className="muted")],
                    id=f"table-{name}", className="table-wrap")


def table_page(frame: pd.DataFrame, page: int, size: int, sort_by: list[dict] | None, query: str | None) -> TablePage:
    """Page `page` (0-based, `size` rows) of `frame` filtered by `query` and sorted by
    `sort_by` (DataTable's [{column_id, direction}], first key first)."""
    try:
        rows = rows_of(frame, query or "")
    except ValueError as error:
        return TablePage([], 0, 1, f"filter not applied: {error}")
    if sort_by:
        rows = rows.sort_values([s["column_id"] for s in sort_by], ascending=[s["direction"] == "asc" for s in sort_by],
                                kind="stable", key=_sort_key)
    page_count = max(1, math.ceil(len(rows) / size))
    page = min(max(0, int(page or 0)), page_count - 1)
    shown = rows.iloc[page * size:(page + 1) * size]
    which = (f"rows {page * size + 1}–{page * size + len(shown)} of {len(rows):,}" if len(shown) else "no rows")
    if len(rows) != len(frame):
        which += f" matching the filter ({len(frame):,} in all)"
    return TablePage(_records(shown), page, page_count, which)


def rows_of(frame: pd.DataFrame, query: str) -> pd.DataFrame:
    """The rows of `frame` that pass every `{column} OP value` clause of `query` (joined by
    ` && `); a clause on a numeric column compares numbers, on any other its text. A leading
    `i` on the operator makes a text comparison ignore case."""
    keep = pd.Series(True, index=frame.index)
    for clause in filter(None, (part.strip() for part in query.split(" && "))):
        match = _CLAUSE.match(clause)
        if not match:
            raise ValueError(f"cannot read {clause!r}; write e.g. '> 0.5', '= 3' or a word to look for")
        column, op, value = match["column"], _COMPARE[match["op"]], _unquote(match["value"].strip())
        if column not in frame.columns:
            raise ValueError(f"no column {column!r}")
        keep &= _passes(frame[column], op, value, ignore_case=match["case"] == "i")
    return frame[keep]


def _passes(values: pd.Series, op: str, value: str, ignore_case: bool) -> pd.Series:
    if _is_numeric(values) and op != "contains":
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"column {values.name!r} holds numbers; {value!r} is not one") from None
        if op == "startswith":
            raise ValueError(f"column {values.name!r} holds numbers: compare with =, !=, <, <=, > or >=")
        return {"eq": values == number, "ne": values != number, "lt": values < number, "le": values <= number,
                "gt": values > number, "ge": values >= number}[op]
    text = values.map(_text)
    if ignore_case:
        text, value = text.str.lower(), value.lower()
    if op == "contains":
        return text.str.contains(value, regex=False)
    if op == "startswith":
        return text.str.startswith(value)
    if op in ("eq", "ne"):
        return (text == value) if op == "eq" else (text != value)
    raise ValueError(f"column {values.name!r} holds text: use '= word' or a word to look for, not {op!r}")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
        return value[1:-1]
    return value


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _sort_key(values: pd.Series) -> pd.Series:
    return values if _is_numeric(values) else values.map(_text)


def _column(frame: pd.DataFrame, name: str) -> dict:
    column = {"name": str(name), "id": str(name), "type": "numeric" if _is_numeric(frame[name]) else "text"}
    if pd.api.types.is_float_dtype(frame[name]):
        column["format"] = {"specifier": ".4~g"}  # 4 significant digits, as the other tables
    return column


def _text(value) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: numbers stay numbers (NaN becomes an empty cell), lists become text."""
    records = []
    for row in frame.itertuples(index=False):
        record = {}
        for name, value in zip(frame.columns, row):
            if isinstance(value, (float, np.floating)):
                record[str(name)] = None if np.isnan(value) else float(value)
            elif isinstance(value, (bool, np.bool_)):
                record[str(name)] = str(bool(value))
            elif isinstance(value, (int, np.integer)):
                record[str(name)] = int(value)
            else:
                record[str(name)] = _text(value)
        records.append(record)
    return records
