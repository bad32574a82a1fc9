"""kb_search: ranked (BM25) search over the small knowledge base in data/kb.jsonl."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Annotated

from langchain_core.tools import tool
from pydantic import Field

KB_PATH = Path(__file__).parent / "data" / "kb.jsonl"
_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = {
    "the",
    "a",
    "an",
    "of",
    "and",
    "or",
    "to",
    "in",
    "is",
    "are",
    "for",
    "on",
    "what",
    "how",
    "does",
    "do",
    "which",
    "who",
    "with",
    "by",
    "at",
    "it",
    "its",
    "as",
    "be",
}


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]


@cache
def _index() -> tuple[list[dict], list[Counter], dict[str, int], float]:
    docs = [json.loads(line) for line in KB_PATH.read_text(encoding="utf-8").splitlines() if line]
    bags = [Counter(_tokens(d["title"] + " " + d["text"])) for d in docs]
    df: Counter[str] = Counter()
    for bag in bags:
        df.update(bag.keys())
    avg = sum(sum(b.values()) for b in bags) / len(bags)
    return docs, bags, dict(df), avg


def search(query: str, k: int = 3) -> list[tuple[float, dict]]:
    """BM25 (k1=1.2, b=0.75) scores of the best `k` documents with a score above 0."""
    docs, bags, df, avg = _index()
    n = len(docs)
    scored = []
    for doc, bag in zip(docs, bags, strict=True):
        length = sum(bag.values())
        score = 0.0
        for term in set(_tokens(query)):
            tf = bag.get(term, 0)
            if tf:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / avg))
        if score > 0:
            scored.append((score, doc))
    scored.sort(key=lambda pair: (-pair[0], pair[1]["id"]))
    return scored[:k]


@tool
def kb_search(
    query: Annotated[
        str,
        Field(
            description="What to look up, in a few words",
            max_length=80,
            pattern=r"^[A-Za-z0-9 ,.'?-]{1,80}$",
        ),
    ],
    k: Annotated[int, Field(description="How many documents to return", ge=1, le=5)] = 2,
) -> str:
    """Search the knowledge base and return the best matching documents."""
    hits = search(query, k)
    if not hits:
        return "No document matches."
    return "\n".join(f"[{doc['id']}] {doc['title']}: {doc['text']}" for _, doc in hits)
