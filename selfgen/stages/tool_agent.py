"""The tool agent: runs each trace's calls and answer, and verifies the trace.

Step by step for all active traces of a round at once: the model writes a call (constrained to
the tools' schemas where the backend can), selfgen validates its arguments and executes it in
the sandbox (a separate process with a timeout and a memory limit), the result goes back into
the prompt, and the model chooses between another call and the answer (forced to answer at the
step limit). Each trace is then verified stage by stage (after APIGen): format (the call
parses, names a known tool, and its arguments validate), target (a request written for one tool
is first answered with a call of that tool; see `selfgen.stages.tool_requests`), execution (the
tool ran without error within its limits), grounding (the arguments come from the request and
earlier results; see `selfgen.stages.grounding`) and semantic (the final answer uses the
tool's output).

A multi-turn trace goes on after its first turn with the user's follow-ups (written by
`selfgen.stages.followups`): each is run the same way with the whole conversation so far in the
prompt, except that the model may answer it without a call, and each turn is verified on its
own (`Trace.check_turn`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from selfgen.backends.base import Completion, Constraint, GenerationRequest, SamplingParams
from selfgen.config import RunConfig
from selfgen.prompts import load_prompt
from selfgen.records import (
    TARGET_REACHED,
    Fate,
    FollowUp,
    Stage,
    ToolCall,
    ToolSeed,
    Trace,
    call_turns,
)
from selfgen.stages import request_seed, shared_prefix
from selfgen.stages.grounding import grounding_problem
from selfgen.tooling import ToolSpec, validate_arguments

if TYPE_CHECKING:
    from selfgen.sandbox import ToolSandbox

# Runs a batch of one kind of agent request (its generation stage label, the requests) and
# returns, for each, the index of the recorded generation call and the completion.
Generate = Callable[[str, list[GenerationRequest]], list[tuple[int, Completion]]]


def _grammar_friendly(schema: Any) -> Any:
    """A schema that constrains decoding as tightly as the tool's own: llama.cpp's grammar
    ignores minimum/maximum, so small integer ranges become an enum (a model wrote k: 1000
    for a 1..5 argument otherwise). Larger ranges stay, and validation still catches them."""
    if isinstance(schema, dict):
        out = {k: _grammar_friendly(v) for k, v in schema.items()}
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if schema.get("type") == "integer" and isinstance(lo, int) and isinstance(hi, int):
            if hi - lo <= 64:
                return {"enum": list(range(lo, hi + 1))}
        return out
    if isinstance(schema, list):
        return [_grammar_friendly(x) for x in schema]
    return schema


def call_schema(specs: dict[str, ToolSpec]) -> dict[str, Any]:
    """JSON schema of one call: {"name": <a tool>, "arguments": <that tool's arguments>}."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": _grammar_friendly(spec.parameters),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, spec in sorted(specs.items())
        ]
    }


# Most calls in one turn of parallel calls.
PARALLEL_MAX = 3


def parallel_schema(specs: dict[str, ToolSpec]) -> dict[str, Any]:
    """JSON schema of one turn of parallel calls: a list of two to PARALLEL_MAX calls."""
    return {
        "type": "array",
        "items": call_schema(specs),
        "minItems": 2,
        "maxItems": PARALLEL_MAX,
    }


def tool_list(specs: dict[str, ToolSpec]) -> str:
    return "\n".join(
        json.dumps({"name": s.name, "description": s.description, "parameters": s.parameters})
        for _, s in sorted(specs.items())
    )


def _call_json(call: ToolCall) -> dict[str, Any]:
    return {"name": call.name, "arguments": call.arguments}


def _turn_lines(turn: list[ToolCall]) -> tuple[str, list[str]]:
    """One turn's calls as the text protocol writes them: one call as a JSON object and its
    "Result:"; parallel calls as a JSON list and a numbered "Result N:" line each."""
    if len(turn) == 1:
        call = turn[0]
        shown = call.output if call.output is not None else "error: " + (call.error or "")
        return json.dumps(_call_json(call)), [f"Result: {_one_line(shown)}"]
    results = []
    for n, call in enumerate(turn, start=1):
        shown = call.output if call.output is not None else "error: " + (call.error or "")
        results.append(f"Result {n}: {_one_line(shown)}")
    return json.dumps([_call_json(c) for c in turn]), results


def _demo(seed: ToolSeed) -> str:
    """A worked example: its request, calls, results and answer (and, for a multi-turn one,
    each follow-up's), then a blank line."""
    lines = []
    for turn in seed.turns():
        lines.append(f"Request: {turn.request}")
        for group in call_turns(turn.calls):
            calls, results = _turn_lines(
                [ToolCall(c.name, c.arguments, c.output or "") for c in group]
            )
            lines.append("Call: " + calls)
            lines += results
        lines.append(f"Answer: {_one_line(turn.answer)}")
    return "\n".join(lines) + "\n\n"


RESULT_CHARS = 400  # of a tool result shown in a prompt; the trace keeps all of it


def _one_line(text: str) -> str:
    text = re.sub(r"\s*\n\s*", " | ", text.strip())
    return text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS] + " ..."


def render_agent_prompt(
    language: str,
    specs: dict[str, ToolSpec],
    demos: list[ToolSeed],
    request: str,
    steps: list[ToolCall],
) -> str:
    """The prompt for the next step: ends with "Call:" after the request, or with "Result: ..."
    after each executed call (the model then writes "Call:" again or "Answer:")."""
    text = load_prompt(language, "tool_agent").format(
        tools=tool_list(specs), demos="".join(_demo(d) for d in demos), request=request
    )
    for i, turn in enumerate(call_turns(steps)):
        calls, results = _turn_lines(turn)
        text += ("Call: " if i else " ") + calls + "\n" + "\n".join(results) + "\n"
    return text


def render_conversation_prompt(
    language: str,
    specs: dict[str, ToolSpec],
    demos: list[ToolSeed],
    trace: Trace,
) -> str:
    """The prompt for the next step of a multi-turn trace in a follow-up turn (the first turn's
    is a single trace's, `render_agent_prompt`): the worked conversations, the earlier turns in
    full, then the follow-up and its calls so far. It ends with the follow-up's line or a
    result's, and the model writes "Call:" or "Answer:"."""
    text = load_prompt(language, "tool_agent_multiturn").format(
        tools=tool_list(specs), demos="".join(_demo(d) for d in demos)
    )
    for request, calls, answer in trace.earlier_turns():
        text += f"Request: {request}\n"
        for group in call_turns(calls):
            shown, results = _turn_lines(group)
            text += "Call: " + shown + "\n" + "\n".join(results) + "\n"
        text += f"Answer: {_one_line(answer or '')}\n"
    text += f"Request: {trace.turn_request}\n"
    for group in call_turns(trace.turn_calls):
        shown, results = _turn_lines(group)
        text += "Call: " + shown + "\n" + "\n".join(results) + "\n"
    return text


def pick_demos(rng: random.Random, seeds: list[ToolSeed], count: int) -> list[ToolSeed]:
    with_calls = [s for s in seeds if s.calls]
    return rng.sample(with_calls, min(count, len(with_calls)))


def first_turn_kind(kind: str) -> str:
    """The kind whose request lists, worked examples and prompts make a trace's first turn: a
    multi-turn trace starts as a single one."""
    return "single" if kind == "multiturn" else kind


def seeds_of_kind(seeds: list[ToolSeed], kind: str) -> list[ToolSeed]:
    """The seeds that demonstrate a kind of trace: one call a turn, parallel calls, or a
    conversation with follow-ups."""
    return [s for s in seeds if s.kind == kind]


def parse_call(
    text: str, finish_reason: str, specs: dict[str, ToolSpec]
) -> tuple[ToolCall | None, str | None]:
    """A call from the model's JSON, or None and the format failure."""
    if finish_reason == "length":
        return None, "cut_off"  # a call cut by max_tokens is never a success
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError:
        return None, "not_json"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None, "no_tool_name"
    if obj["name"] not in specs:
        return None, f"unknown_tool:{obj['name'][:40]}"
    arguments = obj.get("arguments")
    if not isinstance(arguments, dict):
        return None, "arguments_not_an_object"
    return ToolCall(obj["name"], arguments), None


def parse_parallel_calls(
    text: str, finish_reason: str, specs: dict[str, ToolSpec]
) -> tuple[list[ToolCall], str | None]:
    """One turn of parallel calls from the model's JSON list, or the format failure."""
    if finish_reason == "length":
        return [], "cut_off"
    try:
        items = json.loads(text.strip())
    except json.JSONDecodeError:
        return [], "not_json"
    if not isinstance(items, list) or len(items) < 2:
        return [], "not_parallel: one turn needs a list of at least two calls"
    calls = []
    for n, item in enumerate(items, start=1):
        call, problem = parse_call(json.dumps(item), "stop", specs)
        if problem:
            return [], f"call {n}: {problem}"
        assert call is not None
        calls.append(ToolCall(call.name, call.arguments, parallel=n > 1))
    keys = {json.dumps(_call_json(c), sort_keys=True) for c in calls}
    if len(keys) < len(calls):
        return [], "duplicate_calls"
    return calls, None


_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[a-z0-9]+")


def _numbers(text: str) -> set[str]:
    out = set()
    for raw in _NUMBER.findall(text):
        value = raw.replace(",", "")
        out.add(value)
        if "." in value:
            try:
                out.add(f"{float(value):g}")
            except ValueError:
                pass
    return out


# Weekday names as the tools write them, and as a Chinese answer says them.
_WEEKDAYS_ZH = {
    "monday": ("星期一", "周一"),
    "tuesday": ("星期二", "周二"),
    "wednesday": ("星期三", "周三"),
    "thursday": ("星期四", "周四"),
    "friday": ("星期五", "周五"),
    "saturday": ("星期六", "周六"),
    "sunday": ("星期日", "星期天", "周日"),
}


def semantic_check(
    output: str, answer: str, *, request: str | None = None, language: str = "en"
) -> str | None:
    """Why the final answer does not use the tool's output, or None when it does.

    The rule: an answer must repeat a number (or date) of the output when the output has one,
    and otherwise share at least two content words with it, or the one it has ("Saturday").
    In Chinese (`language` "zh"), where the answer translates the tools' English words, a
    weekday counts in its Chinese name and the answer needs the output's words only as far as
    it has any (names of products and people stay in Latin letters). A model judge can be
    layered on top where a capable backend is configured.

    Given the `request`, an output of several sentences (documents a search returned) must
    also answer it: a sentence the answer draws on (one holding a number or a content word of
    the answer) must share a content word with the request. A search returns its best matches
    even when none is about the request, and an answer quoting a number from an unrelated
    document otherwise passes. Not checked in Chinese, whose requests share no words with the
    tools' English outputs.
    """
    if not answer.strip():
        return "empty_answer"
    numbers = _numbers(output)
    if numbers:
        if not numbers & _numbers(answer):
            return "answer_ignores_tool_numbers"
    else:
        out_words = {w for w in _WORD.findall(output.lower()) if len(w) > 3}
        ans_words = {w for w in _WORD.findall(answer.lower()) if len(w) > 3}
        if language == "zh":
            for day, names in _WEEKDAYS_ZH.items():
                if day in out_words and any(n in answer for n in names):
                    ans_words.add(day)
        wanted = max(1, min(2, len(out_words)))
        if len(out_words & ans_words) < wanted:
            return "answer_ignores_tool_output"
    if request is None or language == "zh":
        return None
    return _unrelated_source(output, answer, request)


# Words too common in requests to tie a request to a document.
_REQUEST_STOP = frozenset(
    "what which when where does that this with from have many much there their about into"
    " them they your will would could should tell give know like make most more some than"
    " then were been being just only also very".split()
)
# Where a sentence of prose ends (a table's rows are not sentences: a value ends a line).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _content_words(text: str) -> set[str]:
    """Words of more than three letters, not among the commonest, a plural `s` dropped."""
    out = set()
    for w in _WORD.findall(text.lower()):
        if len(w) > 3 and not w.isdigit() and w not in _REQUEST_STOP:
            out.add(w[:-1] if w.endswith("s") and len(w) > 4 else w)
    return out


def _unrelated_source(output: str, answer: str, request: str) -> str | None:
    sentences = [x for x in _SENTENCE_END.split(output) if x.strip()]
    asked = _content_words(request)
    if len(sentences) < 2 or not asked:
        return None
    numbers, words = _numbers(answer), _content_words(answer)
    used = [x for x in sentences if _numbers(x) & numbers or _content_words(x) & words]
    if any(_content_words(x) & asked for x in used):
        return None
    return "answer_from_an_unrelated_result"


def _repeated_call(trace: Trace, calls: list[ToolCall]) -> str | None:
    """Why a follow-up's calls repeat a call of an earlier turn (the same tool and arguments,
    so the same result), or None."""
    earlier = {
        json.dumps(_call_json(c), sort_keys=True): n
        for n, (_, turn_calls, _) in enumerate(trace.earlier_turns(), start=1)
        for c in turn_calls
    }
    for call in calls:
        if (n := earlier.get(json.dumps(_call_json(call), sort_keys=True))) is not None:
            return f"repeats_a_call_of_turn_{n}: {call.name}"
    return None


def turn_grounding_problem(trace: Trace, specs: dict[str, ToolSpec]) -> str | None:
    """The grounding check of the current turn's calls. A follow-up's sources are the
    conversation's user messages and the results of the earlier turns' calls."""
    if not trace.followups:
        return grounding_problem(trace.request, trace.calls, specs)
    earlier = trace.earlier_turns()
    sources = [request for request, _, _ in earlier] + [trace.turn_request]
    sources += [c.output or "" for _, calls, _ in earlier for c in calls]
    return grounding_problem("\n".join(sources), trace.turn_calls, specs)


def recheck_problem(
    trace: Trace, specs: dict[str, ToolSpec], *, language: str = "en", ground: bool = True
) -> tuple[Stage, str] | None:
    """The first check of today's grounding and semantic rules that a stored trace fails, turn
    by turn as the agent checks them, with its stage; None when it passes them all. Checks
    change between versions: this re-judges a trace verified by an earlier one."""
    turns = [(trace.request, trace.calls, trace.answer)]
    turns += [(f.request, f.calls, f.answer) for f in trace.followups]
    for n in range(1, len(turns) + 1):
        (request, calls, answer), *later = turns[:n]
        partial = Trace(
            request=request,
            generation_index=-1,
            kind=trace.kind,
            calls=calls,
            answer=answer,
            followups=[FollowUp(request=r, generation_index=-1, calls=c, answer=a)
                       for r, c, a in later],
        )  # fmt: skip
        where = f"turn {n}: " if n > 1 else ""
        if partial.turn_answer is None:
            return Stage.SEMANTIC, f"{where}no_answer"
        if ground and partial.turn_calls:
            if problem := turn_grounding_problem(partial, specs):
                return Stage.GROUNDING, where + problem
        if problem := answer_problem(partial, language):
            return Stage.SEMANTIC, where + problem
    return None


def interleave_kinds(traces: list[Trace]) -> list[Trace]:
    """The traces with their kinds taken in turn (the first of each kind, then the second...),
    so that a round short of its target keeps traces of every kind; one kind stays in order."""
    by_kind: dict[str, list[Trace]] = {}
    for t in traces:
        by_kind.setdefault(t.kind, []).append(t)
    out = []
    for i in range(max((len(v) for v in by_kind.values()), default=0)):
        out += [v[i] for v in by_kind.values() if i < len(v)]
    return out


def _normal(text: str) -> str:
    """A text's words, for telling a repeated answer (case, spacing and punctuation aside)."""
    return re.sub(r"\W+", " ", text.lower()).strip()


def answer_problem(trace: Trace, language: str = "en") -> str | None:
    """The semantic check of the current turn's answer against its last call turn: the answer
    must use the result of that turn's call, and after parallel calls the result of every one
    of them. A follow-up answered without a call must use a result of the conversation's
    earlier calls, and no follow-up's answer may repeat an earlier answer."""
    answer = trace.turn_answer
    assert answer is not None
    for n, (_, _, earlier) in enumerate(trace.earlier_turns(), start=1):
        if earlier is not None and _normal(earlier) == _normal(answer):
            return f"repeats_the_answer_of_turn_{n}"
    # The turn's request, with the conversation's first for a follow-up ("What are they?").
    request = (
        trace.turn_request if not trace.followups else f"{trace.request}\n{trace.turn_request}"
    )
    if not trace.turn_calls:
        outputs = "\n".join(c.output or "" for _, calls, _ in trace.earlier_turns() for c in calls)
        problem = semantic_check(outputs, answer, request=request, language=language)
        return f"{problem} (answered without a call)" if problem else None
    last = call_turns(trace.turn_calls)[-1]
    if len(last) == 1:
        return semantic_check(last[0].output or "", answer, request=request, language=language)
    for n, call in enumerate(last, start=1):
        problem = semantic_check(call.output or "", answer, request=request, language=language)
        if problem:
            return f"{problem} (result {n})"
    return None


class ToolAgent:
    """Runs and verifies the traces of a round."""

    def __init__(
        self,
        config: RunConfig,
        specs: dict[str, ToolSpec],
        tool_seeds: list[ToolSeed],
        sandbox: ToolSandbox,
    ) -> None:
        self.config = config
        self.specs = specs
        self.tool_seeds = tool_seeds
        self.sandbox = sandbox
        self.schema = call_schema(specs)
        self.target_schemas = {name: call_schema({name: spec}) for name, spec in specs.items()}
        self.parallel_schema = parallel_schema(specs)

    def round_demos(self, rng: random.Random) -> dict[str, list[ToolSeed]]:
        """The worked examples shown in every agent prompt of a round, by kind of trace (and
        those of single traces where multi-turn ones need them for their first turn)."""
        kinds = self.config.trace_kind_list()
        if "multiturn" in kinds and "single" not in kinds:
            kinds = ["single", *kinds]
        return {
            kind: pick_demos(rng, seeds_of_kind(self.tool_seeds, kind), self.config.trace_demos)
            for kind in kinds
        }

    def run(
        self,
        traces: list[Trace],
        demos: dict[str, list[ToolSeed]],
        round_number: int,
        generate: Generate,
        turn: int = 1,
    ) -> None:
        """Take every trace through its calls to an answer, or reject it where it fails. In a
        follow-up turn (`turn` 2 and on, every trace at that turn) the model first chooses
        between a call and the answer."""
        c = self.config
        # The requests' seeds: a follow-up turn's differ from the first turn's.
        label = "" if turn == 1 else f"turn{turn}."
        active = list(traces)
        for step in range(c.max_tool_steps + 1):
            if not active:
                break
            if step > 0 or turn > 1:
                active = self._next_steps(active, demos, round_number, step, generate, label)
                if not active:
                    break
            calls = generate(
                "tool_call",
                [
                    self._request(
                        demos,
                        t,
                        "Call:",
                        SamplingParams(
                            temperature=0.0,
                            max_tokens=c.call_max_tokens * (PARALLEL_MAX if p else 1),
                            stop=("\n",),
                            seed=request_seed(c.seed, round_number, f"{label}call{step}", j),
                        ),
                        self._call_constraint(t, parallel=p),
                    )
                    for j, t in enumerate(active)
                    # A parallel trace makes its parallel calls in its first turn.
                    for p in [t.kind == "parallel" and step == 0]
                ],
            )
            active = [
                t
                for t, (gen_index, comp) in zip(active, calls, strict=True)
                if self._call(t, gen_index, comp)
            ]

    def _call_constraint(self, trace: Trace, parallel: bool = False) -> Constraint | None:
        """The grammar of the trace's next call: a list of calls for a parallel turn; any
        tool's call, or only its target tool's for the first call of a targeted request
        (`target_tools = "constrain"`)."""
        c = self.config
        if not c.constrain_calls:
            return None
        if parallel:
            return Constraint(json_schema=self.parallel_schema)
        if c.target_tools == "constrain" and trace.target is not None and not trace.calls:
            return Constraint(json_schema=self.target_schemas[trace.target])
        return Constraint(json_schema=self.schema)

    def _next_steps(
        self,
        active: list[Trace],
        demos: dict[str, list[ToolSeed]],
        round_number: int,
        step: int,
        generate: Generate,
        label: str = "",
    ) -> list[Trace]:
        """After a result (or a follow-up request): another call, or the answer (forced at the
        step limit). Answers the traces that chose to answer; returns those that call."""
        choices = ("Answer:",) if step >= self.config.max_tool_steps else ("Call:", "Answer:")
        nexts = generate(
            "tool_next",
            [
                self._request(
                    demos,
                    t,
                    "",
                    SamplingParams(
                        temperature=0.0,
                        max_tokens=4,
                        seed=request_seed(self.config.seed, round_number, f"{label}next{step}", j),
                    ),
                    Constraint(choices=choices),
                )
                for j, t in enumerate(active)
            ],
        )
        answering, calling = [], []
        for t, (gen_index, comp) in zip(active, nexts, strict=True):
            t.step_generation_indexes.append(gen_index)
            if comp.finish_reason == "error":
                t.reject_turn(Stage.SEMANTIC, f"no_next_step: {comp.extra.get('error', '')}"[:200])
            elif comp.text.strip().startswith("Call"):
                calling.append(t)
            else:
                answering.append(t)
        self._answer(answering, demos, round_number, step, generate, label)
        return calling

    def _call(self, trace: Trace, gen_index: int, comp: Completion) -> bool:
        """Parse, validate and execute the call (or, in a parallel trace's first turn, the
        parallel calls) the model wrote; False when the trace failed."""
        trace.step_generation_indexes.append(gen_index)
        calls: list[ToolCall] = []
        if trace.kind == "parallel" and not trace.calls:
            calls, problem = parse_parallel_calls(comp.text, comp.finish_reason, self.specs)
        else:
            call, problem = parse_call(comp.text, comp.finish_reason, self.specs)
            calls = [call] if call is not None else []
        if comp.finish_reason == "error":
            problem, calls = f"call_not_generated: {comp.extra.get('error', '')}"[:200], []
        return self.run_calls(trace, calls, problem)

    def run_calls(self, trace: Trace, calls: list[ToolCall], problem: str | None) -> bool:
        """Validate one turn's calls (or record why they could not be parsed), check the
        first call against the request's target tool, execute them in the sandbox and record
        the results; False when the trace failed."""
        for n, call in enumerate(calls, start=1):
            if invalid := validate_arguments(self.specs[call.name], call.arguments):
                where = f"call {n}: " if len(calls) > 1 else ""
                problem = f"{where}invalid_arguments: {invalid}"
                break
        if problem is None and trace.followups:
            problem = _repeated_call(trace, calls)
        if not trace.check_turn(Stage.FORMAT, problem):
            return False
        if trace.target is not None and not trace.calls:
            call = calls[0]  # a targeted trace's first call is checked
            if call.name != trace.target:
                # Kept in the trace (not run), so that stats count it under the tool it named.
                trace.calls.append(ToolCall(call.name, call.arguments, None, "not run"))
            off = f"off_target: written for {trace.target}, called {call.name}"
            if not trace.check(Stage.TARGET, None if call.name == trace.target else off):
                return False
        failures = []
        for n, call in enumerate(calls, start=1):
            result = self.sandbox.call(call.name, call.arguments)
            trace.turn_calls.append(
                ToolCall(
                    call.name,
                    call.arguments,
                    result.output if result.ok else None,
                    None if result.ok else result.error,
                    call.parallel,
                )
            )
            if not result.ok:
                where = f"call {n}: " if len(calls) > 1 else ""
                failures.append(f"{where}tool_failed: {result.error}")
        return trace.check_turn(Stage.EXECUTION, "; ".join(failures)[:500] if failures else None)

    def _answer(
        self,
        traces: list[Trace],
        demos: dict[str, list[ToolSeed]],
        round_number: int,
        step: int,
        generate: Generate,
        label: str = "",
    ) -> None:
        c = self.config
        answers = generate(
            "tool_answer",
            [
                self._request(
                    demos,
                    t,
                    "Answer:",
                    SamplingParams(
                        temperature=0.0,
                        max_tokens=c.answer_max_tokens,
                        stop=("\n\n", "\nRequest:", "\nCall:"),
                        seed=request_seed(c.seed, round_number, f"{label}answer{step}", j),
                    ),
                )
                for j, t in enumerate(traces)
            ],
        )
        for t, (gen_index, comp) in zip(traces, answers, strict=True):
            t.step_generation_indexes.append(gen_index)
            if comp.finish_reason == "error":
                t.reject_turn(
                    Stage.SEMANTIC, f"answer_not_generated: {comp.extra.get('error', '')}"[:200]
                )
                continue
            # The answer is its first non-empty line (the model may open with a line break).
            lines = [line.strip() for line in comp.text.splitlines() if line.strip()]
            t.set_answer(lines[0] if lines else "")

    def _request(
        self,
        demos: dict[str, list[ToolSeed]],
        trace: Trace,
        closing: str,
        params: SamplingParams,
        constraint: Constraint | None = None,
    ) -> GenerationRequest:
        if trace.followups:
            prompt = render_conversation_prompt(
                self.config.language, self.specs, demos[trace.kind], trace
            )
        else:
            prompt = render_agent_prompt(
                self.config.language,
                self.specs,
                demos[first_turn_kind(trace.kind)],
                trace.request,
                trace.calls,
            )
        # The prompt ends with "Call:" before the first call of a trace and with "Result: ...\n"
        # after each call or "Request: ...\n" in a follow-up turn; `closing` is what the model
        # is asked to continue from.
        if trace.calls or trace.followups:
            prompt += closing
        # Tools and demonstrations are the same for every trace of the round: a shared prefix.
        return GenerationRequest(
            prompt=prompt,
            params=params,
            constraint=constraint,
            shared_prefix=shared_prefix(prompt, f"Request: {trace.request}"),
        )

    def check_answers(self, traces: list[Trace]) -> list[Trace]:
        """The grounding check (where the run has it) and the semantic check of every answered
        trace; returns those that pass both, in order."""
        passed = []
        for t in traces:
            if t.fate is Fate.REJECTED or t.turn_answer is None:
                if t.fate is not Fate.REJECTED:
                    t.reject_turn(Stage.SEMANTIC, "no_answer")
                continue
            if (
                self.config.ground_calls
                and t.turn_calls
                and not t.check_turn(Stage.GROUNDING, turn_grounding_problem(t, self.specs))
            ):
                continue
            if t.check_turn(Stage.SEMANTIC, answer_problem(t, self.config.language)):
                passed.append(t)
        return passed

    @staticmethod
    def keep(traces: list[Trace], still_needed: int) -> list[Trace]:
        """Keep the traces that passed every check, up to `still_needed` (the rest are
        surplus). Returns the traces kept."""
        kept = []
        for t in traces:
            if len(kept) >= still_needed:
                t.reject(Stage.VERIFIED, TARGET_REACHED)
                continue
            t.keep(Stage.VERIFIED)
            kept.append(t)
        return kept
