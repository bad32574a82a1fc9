"""Prompt templates, one file each, per language (`en`, `zh`), filled with str.format."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def load_prompt(language: str, name: str) -> str:
    """The text of `prompts/<language>/<name>.txt`."""
    return files(__name__).joinpath(language, f"{name}.txt").read_text(encoding="utf-8")
