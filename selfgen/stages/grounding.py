"""The grounding check: a call's arguments must come from the request, not from the model.

The format, execution and semantic checks pass a call such as `add_days(start="2023-02-09",
days=90)` for "What's the date 90 days before February 1, 2023?": it parses, it runs, and the
answer repeats its result. What is wrong is that the model made the date up. Read by hand,
most traces the bundled model writes fail this way: a date that is not in the request,
`17 * 100 + 1` for a 17-year-old, an SQL query for a question about snails. Training on them
teaches a model to invent arguments.

The rule, for every call of a trace, against its sources (the request, and the results of the
turns before the call):

- every date in an argument (YYYY-MM-DD) is a date the sources mention, in any common
  spelling ("February 1, 2023", "1 Feb 2023", "2023-02-01", "the 4th of July"; a date written
  without a year takes any year the sources name, or any year where they name none);
- every number in an argument (a number argument, or a number inside a text argument such as
  an expression or a query) is a number of the sources, spelled as digits or as a word ("three
  weeks"), or one of those times or divided by a common unit factor (7 days a week, 60 minutes
  an hour, 100 for a percentage...), up to its sign; 0 and 1 are always allowed;
- a text argument of several words shares at least one content word with the sources (the
  first five letters of a word of four or more, so "products" meets "product");
- two arguments with the same schema do not have the same value (a conversion from litres to
  litres, the days between a date and itself);
- a number argument that may be negative has the sign the request gives its number: "90 days
  before" is -90 and "3 weeks after" is +21 (the request's direction words: before, ago,
  earlier, after, later, from...).

Arguments with a default or a closed set of values (an enum, a small integer range) are
settings, not content, and are not checked. The check is a heuristic: it rejects some honest
calls (a year the model knows, "Halloween") and keeps some wrong ones (the right numbers in the
wrong expression). What it rejects is recorded with the argument and the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from selfgen.records import ToolCall, call_turns
from selfgen.tooling import ToolSpec

MONTHS = {
    name: n
    for n, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_MONTH = "(" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(?:,?\s+(\d{4}))?"
ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
# "February 1, 2023", "Feb 1st 2023", "July 4"
MONTH_DAY = re.compile(rf"\b{_MONTH}\s+{_DAY}\b{_YEAR}", re.IGNORECASE)
# "1 February 2023", "4th of July"
DAY_MONTH = re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}\b{_YEAR}", re.IGNORECASE)
# "03/21/2026" (month first, as the bundled seeds write it)
SLASH_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b")
# "2023 年 12 月 28 日", "12月28号"
CJK_DATE = re.compile(r"(?:(\d{4})\s*年\s*)?(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]")
# Digits next to Chinese characters count: those are word characters to `\b`.
YEAR = re.compile(r"(?<![0-9])(1[5-9]\d\d|2[01]\d\d)(?![0-9])")

NUMBER = re.compile(r"(?<![A-Za-z0-9_.])-?\d+(?:,\d{3})*(?:\.\d+)?")
CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "hundred": 100,
    "thousand": 1000,
    "million": 1_000_000,
    "twice": 2,
    "double": 2,
    "triple": 3,
    "half": 2,
    "quarter": 4,
    "dozen": 12,
    "fortnight": 14,
}
# Numbers a request implies without writing them, and the words that imply them: days in a
# week, months in a year, hours in a day, minutes in an hour, a percentage... A factor is
# allowed where one of its words is in the sources; a source number times or divided by any
# factor always is ("3 weeks" gives 21 days).
FACTORS = {
    7: ("week",),
    12: ("month", "year", "dozen", "inch", "feet", "foot"),
    24: ("day", "hour"),
    60: ("hour", "minute", "second"),
    100: ("%", "percent", "cent", "百分"),
    1000: ("thousand", "kilo", "km", "kg", "gram", "litre", "liter"),
    365: ("year", "annual"),
    3600: ("hour",),
}
FREE_NUMBERS = {0.0, 1.0, 2.0}
# Chinese numerals up to 99 ("四", "十五", "二十五") and days named without a number.
CJK_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
              "八": 8, "九": 9}  # fmt: skip
CJK_NUMERAL = re.compile(r"[零一二两三四五六七八九十]+")
CJK_HOLIDAYS = {"元旦": (1, 1), "情人节": (2, 14), "国庆节": (10, 1), "万圣节": (10, 31),
                "平安夜": (12, 24), "圣诞节": (12, 25)}  # fmt: skip
# Days a request names without a number.
HOLIDAYS = {
    "christmas eve": (12, 24),
    "christmas": (12, 25),
    "new year's eve": (12, 31),
    "new year's day": (1, 1),
    "new year": (1, 1),
    "halloween": (10, 31),
    "valentine's day": (2, 14),
    "independence day": (7, 4),
    "fourth of july": (7, 4),
}
WORD = re.compile(r"[^\W\d_]+")
STOPWORDS = frozenset(
    "that this with from what which when where have many much does there their them they"
    " than then into your about would could should will been were over under each more most"
    " some such only also very just like make made give show tell find list select order"
    " group limit count".split()
)


def source_dates(text: str) -> tuple[set[tuple[int, int, int]], set[tuple[int, int]], set[int]]:
    """The dates a text mentions: full dates (year, month, day), dates without a year (month,
    day), and the years it names."""
    full: set[tuple[int, int, int]] = set()
    partial: set[tuple[int, int]] = set()
    for y, m, d in ISO_DATE.findall(text):
        full.add((int(y), int(m), int(d)))
    for m, d, y in SLASH_DATE.findall(text):
        full.add((int(y), int(m), int(d)))
    for year, month, day in CJK_DATE.findall(text):
        _add_date(full, partial, int(month), day, year)
    for name, (month, day) in CJK_HOLIDAYS.items():
        for year in re.findall(rf"(?:(\d{{4}})\s*年\s*的?\s*)?{name}", text):
            _add_date(full, partial, month, str(day), year)
    for month, day, year in MONTH_DAY.findall(text):
        _add_date(full, partial, MONTHS[month.lower()], day, year)
    for day, month, year in DAY_MONTH.findall(text):
        _add_date(full, partial, MONTHS[month.lower()], day, year)
    lower = text.lower().replace("\u2019", "'")
    # Longest names first, each blanked once read ("new year's eve" is not "new year").
    for name, (month, day) in sorted(HOLIDAYS.items(), key=lambda h: -len(h[0])):
        pattern = rf"\b{re.escape(name)}\b(?:\s+(?:day\s+)?(?:of\s+)?(\d{{4}}))?"
        for m in re.finditer(pattern, lower):
            _add_date(full, partial, month, str(day), m.group(1) or "")
        lower = re.sub(pattern, " ", lower)
    return full, partial, {int(y) for y in YEAR.findall(text)}


def _add_date(
    full: set[tuple[int, int, int]], partial: set[tuple[int, int]], month: int, day: str, year: str
) -> None:
    if not 1 <= month <= 12:
        return
    if year:
        full.add((int(year), month, int(day)))
    else:
        partial.add((month, int(day)))


# "90 days before", "two weeks ago", "a month from now", "3 business days after": a number, a
# unit of time, a direction.
DIRECTED = re.compile(
    r"\b(\d[\d,]*(?:\.\d+)?|"
    + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True))
    + r"|an?)\s+(?:[a-z]+\s+)?(?:day|week|fortnight|month|year|hour|minute|second)s?\s+"
    r"(before|ago|earlier|prior|back|after|later|from|hence)\b"
)
BACKWARD = frozenset(("before", "ago", "earlier", "prior", "back"))


def directed_numbers(text: str) -> dict[float, int]:
    """The numbers a text gives a direction in time, with their sign: {90.0: -1} for "90 days
    before", {3.0: 1} for "3 weeks after"; a number given both directions is left out."""
    signs: dict[float, set[int]] = {}
    for raw, word in DIRECTED.findall(text.lower()):
        value = float(raw.replace(",", "")) if raw[0].isdigit() else NUMBER_WORDS.get(raw, 1)
        signs.setdefault(value, set()).add(-1 if word in BACKWARD else 1)
    return {float(value): next(iter(s)) for value, s in signs.items() if len(s) == 1}


def source_numbers(text: str) -> set[float]:
    """The numbers a text writes, in digits or as words (a month's name gives its number)."""
    out = {float(n.replace(",", "")) for n in NUMBER.findall(text)}
    for w in WORD.findall(text.lower()):
        if w in NUMBER_WORDS:
            out.add(float(NUMBER_WORDS[w]))
        elif w in MONTHS and len(w) > 3:
            out.add(float(MONTHS[w]))
    for numeral in CJK_NUMERAL.findall(text):
        if (value := cjk_number(numeral)) is not None:
            out.add(float(value))
    return out


def cjk_number(numeral: str) -> int | None:
    """A Chinese numeral up to 99 ("四" 4, "十五" 15, "二十" 20), else None."""
    if numeral in CJK_DIGITS:
        return CJK_DIGITS[numeral]
    tens, ten, ones = numeral.partition("十")
    if not ten or len(tens) > 1 or len(ones) > 1:
        return None
    if (tens and tens not in CJK_DIGITS) or (ones and ones not in CJK_DIGITS):
        return None
    return CJK_DIGITS.get(tens, 1) * 10 + CJK_DIGITS.get(ones, 0)


def content_stems(text: str) -> set[str]:
    """The content words of a text, by their first five letters; Chinese text, which has no
    spaces, by its pairs of adjacent characters."""
    stems = {
        w[:5]
        for w in WORD.findall(CJK_RUN.sub(" ", text.lower()))
        if len(w) >= 4 and w not in STOPWORDS
    }
    for run in CJK_RUN.findall(text):
        stems |= {run[i : i + 2] for i in range(len(run) - 1)}
    return stems


class Sources:
    """What a call's arguments may be taken from."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.full_dates, self.partial_dates, self.years = source_dates(text)
        self.numbers = source_numbers(text)
        self.directed = directed_numbers(text)
        self.stems = content_stems(text)
        self.chinese = CJK_RUN.search(text) is not None
        lower = text.lower()
        self.free = FREE_NUMBERS | {
            float(f) for f, words in FACTORS.items() if any(w in lower for w in words)
        }

    def has_date(self, year: int, month: int, day: int) -> bool:
        if (year, month, day) in self.full_dates:
            return True
        return (month, day) in self.partial_dates and (not self.years or year in self.years)

    def has_number(self, value: float) -> bool:
        value = abs(value)
        if value in self.free:
            return True
        for n in self.numbers:
            n = abs(n)
            if _close(value, n):
                return True
            if n in (0.0, 1.0):
                continue  # 1 times a factor is the factor: allowed only by its words
            for f in FACTORS:
                if _close(value, n * f) or _close(value, n / f):
                    return True
        return False

    def sign_of(self, value: float) -> int | None:
        """The sign the sources give a number (itself, or times or divided by a unit
        factor: "3 weeks before" gives -21 days), or None where they give none."""
        value = abs(value)
        for n, sign in self.directed.items():
            if _close(value, n) or any(_close(value, n * f) for f in FACTORS):
                return sign
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _is_setting(schema: dict[str, Any]) -> bool:
    """Whether an argument is a setting rather than content: it has a default, a closed set
    of values, or is a small integer range."""
    if "default" in schema or "enum" in schema or "const" in schema:
        return True
    lo, hi = schema.get("minimum"), schema.get("maximum")
    return schema.get("type") == "integer" and lo is not None and hi is not None and hi - lo <= 64


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def value_problem(value: Any, sources: Sources) -> str | None:
    """Why one argument value is not grounded in the sources, or None."""
    for leaf in _leaves(value):
        if isinstance(leaf, bool) or leaf is None:
            continue
        if isinstance(leaf, int | float):
            if not sources.has_number(float(leaf)):
                return f"the number {leaf} is not in the request"
            continue
        text = str(leaf)
        for y, m, d in ISO_DATE.findall(text):
            if not sources.has_date(int(y), int(m), int(d)):
                return f"the date {y}-{m}-{d} is not in the request"
        rest = ISO_DATE.sub(" ", text)
        numbers = NUMBER.findall(rest)
        for raw in numbers:
            if not sources.has_number(float(raw.replace(",", ""))):
                return f"the number {raw} is not in the request"
        # A text of several words shares a content word with the sources, or a number.
        stems = content_stems(rest)
        # (Not across scripts: a Chinese request's English search query shares no word.)
        across = sources.chinese and not CJK_RUN.search(rest)
        several = (
            len(WORD.findall(CJK_RUN.sub(" ", rest))) + len("".join(CJK_RUN.findall(rest))) // 2
        )
        if several >= 2 and stems and not stems & sources.stems and not numbers and not across:
            return "no word of it is in the request"
    return None


def sign_problem(value: Any, schema: dict[str, Any], sources: Sources) -> str | None:
    """Why a signed number argument goes the wrong way ("90 days before" as +90), or None.
    Only for arguments that may be negative: elsewhere the direction is the tool's own."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value == 0:
        return None
    if schema.get("type") not in ("integer", "number") or schema.get("minimum", -1) >= 0:
        return None
    sign = sources.sign_of(float(value))
    if sign is None or (value > 0) == (sign > 0):
        return None
    way = "back" if sign < 0 else "forward"
    return f"the number {value} has the wrong sign (the request goes {way} in time)"


def call_problem(call: ToolCall, spec: ToolSpec, sources: Sources) -> str | None:
    """Why one call's arguments are not grounded in the sources, or None."""
    properties = spec.parameters.get("properties", {})
    for name, value in call.arguments.items():
        schema = properties.get(name, {})
        if _is_setting(schema):
            continue
        if problem := value_problem(value, sources):
            return f"{call.name}.{name}: {problem}"
        if problem := sign_problem(value, schema, sources):
            return f"{call.name}.{name}: {problem}"
    seen: dict[str, str] = {}
    for name, value in call.arguments.items():
        if _is_setting(properties.get(name, {})) and "enum" not in properties.get(name, {}):
            continue
        schema = properties.get(name, {})
        shape = {k: schema.get(k) for k in ("type", "enum", "pattern", "format")}
        key = repr(sorted(shape.items())) + "=" + repr(value)
        if key in seen:
            return f"{call.name}: {seen[key]} and {name} are the same ({value!r})"
        seen[key] = name
    return None


def grounding_problem(
    request: str, calls: list[ToolCall], specs: dict[str, ToolSpec]
) -> str | None:
    """Why a trace's calls are not grounded in its request (and the results of the turns
    before each call), or None when they are. See the module's docstring for the rule."""
    text = request
    for turn in call_turns(calls):
        sources = Sources(text)
        for call in turn:
            if call.name in specs and (problem := call_problem(call, specs[call.name], sources)):
                return f"ungrounded: {problem}"[:300]
        text += "\n" + "\n".join(c.output or "" for c in turn)
    return None
