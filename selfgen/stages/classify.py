"""Step 4: does an instruction describe a classification task? A few-shot Yes/No question.

The demonstrations are seed tasks, which carry a human `is_classification` label, taken
alternately from each class in seed-file order so that every candidate sees the same prompt.
The last demonstration is a Yes: small models copy the last answer they saw, and with a No
last SmolLM2-135M answered No to 98% of candidates (57% right on 30 held-out seed tasks);
with a Yes last it is right on 63% of them and classification tasks get generated at all.
"""

from __future__ import annotations

from selfgen.prompts import load_prompt
from selfgen.records import SeedTask

# The answer follows "Is it classification?" after a space.
CHOICES = (" Yes", " No")


def pick_demos(seeds: list[SeedTask], count: int) -> list[SeedTask]:
    yes = [s for s in seeds if s.is_classification]
    no = [s for s in seeds if not s.is_classification]
    demos: list[SeedTask] = []
    while len(demos) < count and (yes or no):
        for pool in (yes, no):
            if pool and len(demos) < count:
                demos.append(pool.pop(0))
    return demos[::-1]  # ends with a Yes


def render_prompt(language: str, demos: list[SeedTask], instruction: str) -> str:
    demo_template = load_prompt(language, "classify_demo")
    demo_text = "".join(
        demo_template.format(
            instruction=d.instruction, answer="Yes" if d.is_classification else "No"
        )
        for d in demos
    )
    return load_prompt(language, "classify").format(demos=demo_text, instruction=instruction)


def parse_answer(text: str) -> bool | None:
    """True for Yes, False for No, None when the answer is neither."""
    words = text.strip().split()
    if not words:
        return None
    first = words[0].strip(".,:;!").lower()
    if first == "yes":
        return True
    if first == "no":
        return False
    return None
