"""sql_query: one read-only SELECT over the small shop database in data/shop.sqlite."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated

from langchain_core.tools import tool
from pydantic import Field

DB_PATH = Path(__file__).parent / "data" / "shop.sqlite"
MAX_ROWS = 20

# Only reading is allowed; the authorizer refuses everything else at prepare time, and the
# database is opened read-only besides.
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}


def _authorize(action: int, *_: object) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED else sqlite3.SQLITE_DENY


def run_select(query: str, max_rows: int = MAX_ROWS) -> tuple[list[str], list[tuple]]:
    text = query.strip().rstrip(";").strip()
    if not sqlite3.complete_statement(text + ";") or ";" in text:
        raise ValueError("exactly one SQL statement is allowed")
    if not text.lower().startswith(("select", "with")):
        raise ValueError("only SELECT queries are allowed")
    db = sqlite3.connect(f"file:{DB_PATH}?mode=ro", uri=True)
    try:
        db.set_authorizer(_authorize)
        try:
            cur = db.execute(text)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"the query was refused or failed: {exc}") from None
        columns = [c[0] for c in cur.description or []]
        return columns, cur.fetchmany(max_rows)
    finally:
        db.close()


# The pattern also keeps out double quotes and backslashes: a grammar built from it writes
# string content unescaped, and a quote inside the query broke the JSON of a call.
@tool
def sql_query(
    query: Annotated[
        str,
        Field(
            description="One SQLite SELECT statement",
            max_length=300,
            pattern=r"^[Ss][Ee][Ll][Ee][Cc][Tt] [^;\"\\]{1,290}$",
        ),
    ],
) -> str:
    """Run a read-only SELECT on the shop database (tables: products, customers, orders;
    at most 20 rows are returned)."""
    columns, rows = run_select(query)
    lines = [" | ".join(columns)] + [" | ".join(str(v) for v in row) for row in rows]
    return "\n".join(lines) if rows else "(no rows)"
