"""Date arithmetic: days between dates, adding days, the weekday of a date."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from langchain_core.tools import tool
from pydantic import Field

ISO_DATE = Field(
    description="A date as YYYY-MM-DD", pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", max_length=10
)


def _parse(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a valid YYYY-MM-DD date") from None


@tool
def date_diff(start: Annotated[str, ISO_DATE], end: Annotated[str, ISO_DATE]) -> str:
    """Count the days from the start date to the end date (negative if end is earlier)."""
    return f"{(_parse(end) - _parse(start)).days} days"


@tool
def add_days(
    start: Annotated[str, ISO_DATE],
    days: Annotated[
        int, Field(description="Days to add (negative to go back)", ge=-36500, le=36500)
    ],
) -> str:
    """The date a number of days after (or before) a date, with its weekday."""
    result = _parse(start) + timedelta(days=days)
    return f"{result.isoformat()} ({result.strftime('%A')})"


@tool
def weekday(day: Annotated[str, ISO_DATE]) -> str:
    """The day of the week of a date."""
    return _parse(day).strftime("%A")
