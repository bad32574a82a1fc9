"""Instance generation: write input/output instances for a task, and filter them.

Classification tasks are prompted output-first (the class label, then an input for it), so the
model does not write inputs that all fall in one class; other tasks input-first. The
demonstrations are seed tasks of the same kind, drawn with the run's RNG.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from selfgen.backends.base import Completion, GenerationRequest, SamplingParams
from selfgen.config import RunConfig
from selfgen.prompts import load_prompt
from selfgen.records import TARGET_REACHED, Candidate, Instance, SeedTask, Stage
from selfgen.stages import request_seed, shared_prefix

# The demonstrations of a round, by kind of task (classification or not).
RoundDemos = dict[bool, list[SeedTask]]

_EXAMPLE = re.compile(r"^[ \t]*Example[ \t]*\d+[ \t]*:?[ \t]*$", re.MULTILINE)
_INPUT = re.compile(r"^[ \t]*Input[ \t]*:", re.MULTILINE)
_OUTPUT = re.compile(r"^[ \t]*Output[ \t]*:", re.MULTILINE)
_LABEL = re.compile(r"^[ \t]*Class label[ \t]*:", re.MULTILINE)
# A field label inside an input or output: the model lost the format.
_STRAY_LABEL = re.compile(
    r"^[ \t]*(Input|Output|Class label|Task|Example \d+)[ \t]*:", re.MULTILINE
)


def stop_strings(max_instances: int) -> tuple[str, ...]:
    return ("Task:", f"Example {max_instances + 1}")


def pick_demos(rng: random.Random, seeds: list[SeedTask], clf: bool, count: int) -> list[SeedTask]:
    pool = [s for s in seeds if s.is_classification == clf] or list(seeds)
    return rng.sample(pool, min(count, len(pool)))


def _demo_input_first(task: SeedTask) -> str:
    lines = [f"Task: {task.instruction}"]
    for i, inst in enumerate(task.instances, start=1):
        lines.append(f"Example {i}")
        if inst.input.strip():
            lines.append(f"Input: {inst.input.strip()}")
        lines.append(f"Output: {inst.output.strip()}")
    return "\n".join(lines) + "\n\n"


def _demo_output_first(task: SeedTask) -> str:
    lines = [f"Task: {task.instruction}"]
    for inst in task.instances:
        lines.append(f"Class label: {inst.output.strip()}")
        lines.append(f"Input: {inst.input.strip()}")
    return "\n".join(lines) + "\n\n"


def render_prompt(language: str, demos: list[SeedTask], instruction: str, clf: bool) -> str:
    if clf:
        demo_text = "".join(_demo_output_first(d) for d in demos)
        template = load_prompt(language, "instances_output_first")
    else:
        demo_text = "".join(_demo_input_first(d) for d in demos)
        template = load_prompt(language, "instances_input_first")
    return template.format(demos=demo_text, instruction=instruction)


def _sections(text: str, marker: re.Pattern[str]) -> list[str]:
    """The pieces of `text` that follow each match of `marker`."""
    marks = list(marker.finditer(text))
    return [
        text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        for i, m in enumerate(marks)
    ]


def _field(text: str) -> tuple[str, bool]:
    """A field's text up to the next field label, and whether such a label ends it.

    A model that writes a second ``Output:`` under one example is rambling; its first answer
    is the one asked for.
    """
    stray = _STRAY_LABEL.search(text)
    return (text[: stray.start()] if stray else text).strip(), stray is not None


def parse_input_first(text: str, finish_reason: str, max_instances: int) -> list[Instance]:
    """Parse ``Example N / Input: ... / Output: ...`` blocks (the prompt wrote ``Example 1``).

    When `max_tokens` cut the text, an output that runs to the very end is incomplete and
    dropped.
    """
    blocks = _sections("Example 1\n" + text, _EXAMPLE)
    out = []
    for n, block in enumerate(blocks[:max_instances]):
        o = _OUTPUT.search(block)
        if o is None:
            continue
        i = _INPUT.search(block, 0, o.start())
        output, closed = _field(block[o.end() :])
        if finish_reason == "length" and n == len(blocks) - 1 and not closed:
            continue
        inp = block[i.end() : o.start()].strip() if i else ""
        out.append(Instance(input=inp, output=output))
    return out


def parse_output_first(text: str, finish_reason: str, max_instances: int) -> list[Instance]:
    """Parse ``Class label: ... / Input: ...`` pairs (the prompt wrote the first ``Class label:``).

    A label with no ``Input:`` is a task that needs no input. When `max_tokens` cut the text,
    the field that runs to the very end is incomplete and its pair is dropped.
    """
    blocks = _sections("Class label:" + text, _LABEL)
    out = []
    for n, block in enumerate(blocks[:max_instances]):
        i = _INPUT.search(block)
        if i is None:
            label, closed = _field(block)
            inp = ""
        else:
            label = block[: i.start()].strip()
            inp, closed = _field(block[i.end() :])
        if finish_reason == "length" and n == len(blocks) - 1 and not closed:
            continue
        out.append(Instance(input=inp, output=label))
    return out


@dataclass
class InstanceVerdict:
    kept: list[Instance] = field(default_factory=list)
    dropped: list[tuple[Instance, str]] = field(default_factory=list)
    task_reason: str | None = None  # set when the whole task must be rejected


def filter_instances(instances: list[Instance], demos: list[SeedTask]) -> InstanceVerdict:
    """Drop unusable instances; reject the task when none is left or outputs disagree."""
    verdict = InstanceVerdict()
    demo_pairs = {(i.input.strip(), i.output.strip()) for d in demos for i in d.instances}
    seen: dict[str, str] = {}
    for inst in instances:
        reason = None
        if not inst.output:
            reason = "empty_output"
        elif inst.input == inst.output:
            reason = "input_equals_output"
        elif inst.output.endswith(":"):
            reason = "output_ends_with_colon"
        elif _STRAY_LABEL.search(inst.output) or _STRAY_LABEL.search(inst.input):
            reason = "stray_label"
        elif (inst.input, inst.output) in demo_pairs:
            reason = "copies_demo"
        elif inst.input in seen and seen[inst.input] == inst.output:
            reason = "duplicate"
        elif inst.input in seen:
            verdict.task_reason = "conflicting_outputs"
            reason = "conflicting_output"
        if reason:
            verdict.dropped.append((inst, reason))
        else:
            seen[inst.input] = inst.output
            verdict.kept.append(inst)
    if verdict.task_reason is None and not verdict.kept:
        reasons = sorted({r for _, r in verdict.dropped})
        verdict.task_reason = "no_valid_instance" + (f":{','.join(reasons)}" if reasons else "")
    return verdict


class InstanceStage:
    """Writes and filters the instances of each classified candidate; decides kept or not."""

    name = "instances"

    def __init__(self, config: RunConfig, seeds: list[SeedTask]) -> None:
        self.config = config
        self.seeds = seeds

    def round_demos(self, rng: random.Random) -> RoundDemos:
        """The round's demonstrations for each kind of task, drawn once per round so that the
        prompts of a round share them as a prefix."""
        return {
            clf: pick_demos(rng, self.seeds, clf, self.config.instance_demos)
            for clf in (False, True)
        }

    def request(
        self, candidate: Candidate, demos: RoundDemos, round_number: int, index: int
    ) -> GenerationRequest:
        c = self.config
        clf = bool(candidate.is_classification)
        prompt = render_prompt(c.language, demos[clf], candidate.instruction, clf)
        return GenerationRequest(
            prompt=prompt,
            shared_prefix=shared_prefix(prompt, f"Task: {candidate.instruction}"),
            params=SamplingParams(
                temperature=c.instance_temperature,
                top_p=1.0,
                max_tokens=c.instance_max_tokens,
                presence_penalty=c.instance_presence_penalty,
                stop=stop_strings(c.max_instances),
                seed=request_seed(c.seed, round_number, self.name, index),
            ),
        )

    def apply(
        self, candidate: Candidate, completion: Completion, demos: RoundDemos, *, room: bool
    ) -> bool:
        """Keep `candidate` with its valid instances, or reject it with the reason; True when
        kept. Without `room` (the target is met) a valid task is rejected as surplus."""
        clf = bool(candidate.is_classification)
        parse = parse_output_first if clf else parse_input_first
        verdict = filter_instances(
            parse(completion.text, completion.finish_reason, self.config.max_instances),
            demos[clf],
        )
        if verdict.task_reason:
            candidate.reject(Stage.INSTANCES, verdict.task_reason)
            return False
        if not room:
            # A surplus task stays in the store, marked, and is not exported.
            candidate.reject(Stage.INSTANCES, TARGET_REACHED)
            return False
        candidate.instances = verdict.kept
        candidate.keep(Stage.INSTANCES)
        return True
