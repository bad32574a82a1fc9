"""Rule filters on generated instructions (Self-Instruct's heuristics), all driven by data.

Each rule returns a short reason when it rejects, or None. The reasons are stored with the
candidate and counted in the funnel, so they are stable identifiers: ``too_short``,
``too_long``, ``blacklist:<word>``, ``banned_prefix:<prefix>``, ``leading_punctuation``,
``language:<lang>``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass, field

from selfgen.filters.rouge import CJK_CHAR

# The paper's keyword list: tasks a text-only model cannot do.
BLACKLIST_EN = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
]  # fmt: skip
BLACKLIST_ZH = [
    "图片",
    "图像",
    "图表",
    "文件",
    "地图",
    "绘制",
    "画",
    "视频",
    "音频",
    "音乐",
    "流程图",
]

_WORD = re.compile(f"{CJK_CHAR.pattern}|[^\\s{CJK_CHAR.pattern[1:-1]}]+")


def count_words(text: str) -> int:
    """Whitespace-separated words, with each CJK character counted as a word."""
    return len(_WORD.findall(text))


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


@dataclass
class RuleConfig:
    min_words: int = 4
    max_words: int = 150
    blacklist: list[str] = field(default_factory=lambda: list(BLACKLIST_EN))
    banned_prefixes: list[str] = field(default_factory=lambda: ["Write a program"])
    # "ascii_start" is the paper's rule (first character is ASCII); "cjk" asks for at least one
    # CJK character; "none" turns the check off.
    language_check: str = "ascii_start"


class RuleFilter:
    def __init__(self, config: RuleConfig) -> None:
        self.config = config
        self._blacklist = []
        for word in config.blacklist:
            if CJK_CHAR.search(word):
                # \b does not separate CJK characters, so these match as substrings.
                self._blacklist.append((word, re.compile(re.escape(word))))
            else:
                self._blacklist.append(
                    (word, re.compile(rf"\b{re.escape(word)}\b", flags=re.IGNORECASE))
                )

    def check(self, instruction: str) -> str | None:
        """Why `instruction` is rejected, or None when it passes every rule."""
        text = instruction.strip()
        words = count_words(text)
        if words < self.config.min_words:
            return "too_short"
        if words > self.config.max_words:
            return "too_long"
        for word, pattern in self._blacklist:
            if pattern.search(text):
                return f"blacklist:{word}"
        for prefix in self.config.banned_prefixes:
            if text.lower().startswith(prefix.lower()):
                return f"banned_prefix:{prefix}"
        if _is_punctuation(text[0]):
            return "leading_punctuation"
        check = self.config.language_check
        if check == "ascii_start" and not text[0].isascii():
            return "language:not_ascii_start"
        if check == "cjk" and not CJK_CHAR.search(text):
            return "language:no_cjk"
        if check not in ("ascii_start", "cjk", "none"):
            raise ValueError(f"unknown language_check '{check}'")
        return None
