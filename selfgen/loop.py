"""The Self-Instruct bootstrapping loop.

One round: generate instructions from a few seed + machine instructions, filter them by rules
and ROUGE-L novelty, ask whether each is a classification task, write instances, filter those,
and commit everything to the run store in one transaction. Rounds repeat until the target
number of kept tasks or a budget is reached.

Every request carries a seed derived from the run seed, the round and its position, and the
prompt sampling RNG is stored after each round, so a run killed and resumed produces the same
data as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from selfgen.backends.base import Backend, Completion, Constraint, GenerationRequest, SamplingParams
from selfgen.config import RunConfig
from selfgen.filters.rouge import TOKENIZERS, RougeIndex
from selfgen.filters.rules import RuleFilter
from selfgen.records import Candidate, SeedTask, ToolCall, Trace
from selfgen.stages import classify, instances, instructions
from selfgen.store import GenerationRecord, RoundRecord, RunStore, RunTotals


@dataclass(frozen=True)
class RunResult:
    stop_reason: str
    progress: RunTotals


Callback = Callable[[str, dict], None]


def request_seed(run_seed: int, round_number: int, stage: str, index: int) -> int:
    """A 31-bit seed for one request that depends on nothing but its coordinates."""
    digest = hashlib.sha256(f"{run_seed}/{round_number}/{stage}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def shared_prefix(prompt: str, instruction: str) -> int:
    """Length of the few-shot part of a prompt: everything before the task being asked about."""
    return prompt.rindex(f"Task: {instruction}")


class _Queue:
    """Requests of one stage of a round, submitted to the backend in batches."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.requests: list[GenerationRequest] = []
        self.futures: list[Future[Completion]] = []

    def add(self, request: GenerationRequest) -> None:
        self.requests.append(request)

    def flush(self) -> None:
        """Submit every request added since the last flush, as one batch."""
        new = self.requests[len(self.futures) :]
        if new:
            self.futures.extend(self.backend.submit(new))

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()


class Loop:
    """Runs rounds of the loop against a backend, writing each round to `store`."""

    def __init__(
        self,
        config: RunConfig,
        store: RunStore,
        backend: Backend,
        on_event: Callback | None = None,
        sandbox: Any = None,
    ) -> None:
        self.config = config
        self.sandbox = sandbox  # a selfgen.sandbox.ToolSandbox when traces are generated
        self.store = store
        self.backend = backend
        self.on_event = on_event or (lambda kind, data: None)
        self._queues: list[_Queue] = []  # the current round's, flushed before any wait
        self.seeds: list[SeedTask] = store.seeds()
        self.rules = RuleFilter(config.rule_config())
        self.index = RougeIndex(TOKENIZERS[config.tokenizer_name()])
        for seed in self.seeds:
            self.index.add(seed.instruction)
        for text in store.novelty_pool():
            self.index.add(text)
        self.kept = store.kept_instructions()
        self.rng = random.Random(config.seed)
        state = store.last_rng_state()
        if state is not None:
            self.rng.setstate(state)
        self.classify_demos = classify.pick_demos(self.seeds, config.classify_demos)
        if config.num_traces > 0:
            self.tool_specs = store.tool_specs()
            self.tool_seeds = store.tool_seeds()
            self.trace_index = RougeIndex(TOKENIZERS[config.tokenizer_name()])
            for tool_seed in self.tool_seeds:
                self.trace_index.add(tool_seed.request)
            for text in store.trace_pool():
                self.trace_index.add(text)
            self.verified_requests = store.verified_requests()

    def _should_stop(self, progress: RunTotals) -> str | None:
        c = self.config
        if progress.kept >= c.num_tasks and progress.traces >= c.num_traces:
            if c.num_traces:
                return (
                    f"reached the targets of {c.num_tasks} kept tasks"
                    f" and {c.num_traces} verified traces"
                )
            return f"reached the target of {c.num_tasks} kept tasks"
        if c.max_rounds is not None and progress.rounds >= c.max_rounds:
            return f"reached --max-rounds {c.max_rounds}"
        tokens = progress.prompt_tokens + progress.completion_tokens
        if c.token_budget is not None and tokens >= c.token_budget:
            return f"spent the token budget ({tokens} of {c.token_budget} tokens)"
        if progress.rounds_without_kept >= c.patience:
            return f"no task kept in the last {c.patience} rounds (--patience)"
        return None

    def run(self) -> RunResult:
        progress = self.store.totals()
        while (reason := self._should_stop(progress)) is None:
            self.run_round(
                progress.rounds + 1,
                self.config.num_tasks - progress.kept,
                self.config.num_traces - progress.traces,
            )
            progress = self.store.totals()
        return RunResult(reason, progress)

    def _queue(self) -> _Queue:
        """A new queue of requests, flushed with the others whenever the loop must wait."""
        queue = _Queue(self.backend)
        self._queues.append(queue)
        return queue

    def _wait(self, queue: _Queue, index: int) -> Completion:
        """The completion of request `index` of `queue`.

        Before blocking, every queue submits the requests it has gathered, as one batch each:
        the model always has the next work queued while this thread parses and filters.
        """
        if index >= len(queue.futures) or not queue.futures[index].done():
            for q in self._queues:
                q.flush()
        return queue.futures[index].result()

    def _record(
        self, rnd: RoundRecord, stage: str, req: GenerationRequest, comp: Completion
    ) -> int:
        """Record one generation call in the round; return its index there."""
        rnd.generations.append(
            GenerationRecord(
                stage=stage,
                prompt=req.prompt,
                messages=list(req.messages) if req.messages is not None else None,
                params=req.params.to_dict(),
                constraint=(
                    {"choices": list(req.constraint.choices)}
                    if req.constraint and req.constraint.choices
                    else ({"json_schema": req.constraint.json_schema} if req.constraint else None)
                ),
                response=comp.text,
                finish_reason=comp.finish_reason,
                prompt_tokens=comp.prompt_tokens,
                completion_tokens=comp.completion_tokens,
                latency_s=comp.latency_s,
                error=comp.extra.get("error") if comp.finish_reason == "error" else None,
            )
        )
        self.on_event(
            "generated",
            {
                "stage": stage,
                "tokens": comp.prompt_tokens + comp.completion_tokens,
                "completion_tokens": comp.completion_tokens,
            },
        )
        return len(rnd.generations) - 1

    def _generate(
        self,
        rnd: RoundRecord,
        stage: str,
        requests: list[GenerationRequest],
    ) -> list[tuple[int, Completion]]:
        """Run a batch, record each call in the round, return (generation index, completion)."""
        queue = self._queue()
        for req in requests:
            queue.add(req)
        out = []
        for j, req in enumerate(requests):
            comp = self._wait(queue, j)
            out.append((self._record(rnd, stage, req, comp), comp))
        return out

    def run_round(self, number: int, still_needed: int, traces_needed: int = 0) -> RoundRecord:
        started = time.perf_counter()
        rnd = RoundRecord(
            number=number,
            started_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            rng_state=None,
            elapsed_s=0.0,
        )
        self._queues = []
        try:
            if still_needed > 0:
                self._instruction_round(rnd, still_needed)
            if traces_needed > 0:
                self._trace_round(rnd, traces_needed)
        except BaseException:
            # A failed round is not committed; nothing it queued may keep the model busy.
            for queue in self._queues:
                queue.cancel()
            raise
        rnd.rng_state = self.rng.getstate()
        rnd.elapsed_s = time.perf_counter() - started
        self.store.commit_round(rnd)
        self.on_event(
            "round",
            {
                "round": number,
                "candidates": len(rnd.candidates),
                "kept": sum(x.fate == "kept" for x in rnd.candidates),
                "traces": sum(t.fate == "kept" for t in rnd.traces),
            },
        )
        return rnd

    def _novel_items(
        self,
        rnd: RoundRecord,
        stage: str,
        prompts: list[tuple[str, int]],
        index: RougeIndex,
        records: list[Any],
        make: Callable[[str, int], Any],
        on_survivor: Callable[[Any], None] = lambda record: None,
    ) -> list[Any]:
        """Generate the continuations of numbered-list `prompts` ((prompt, next number)),
        and pass each item through parsing, the rule filters and ROUGE-L novelty against
        `index` (sequentially, in prompt order: an accepted item joins the index at once).
        Every item becomes a record (`make(text, generation index)`) appended to `records`;
        each survivor is handed to `on_survivor` as soon as it is known (to queue its next
        request while the other lists are still being generated), and all are returned."""
        c = self.config
        queue = self._queue()
        for j, (prompt, _) in enumerate(prompts):
            queue.add(
                GenerationRequest(
                    prompt=prompt,
                    params=SamplingParams(
                        temperature=c.temperature,
                        top_p=c.top_p,
                        max_tokens=c.max_tokens,
                        stop=instructions.stop_strings(c.list_length),
                        presence_penalty=c.presence_penalty,
                        frequency_penalty=c.frequency_penalty,
                        seed=request_seed(c.seed, rnd.number, stage, j),
                    ),
                )
            )
        survivors = []
        for j, (_, next_number) in enumerate(prompts):
            comp = self._wait(queue, j)
            gen_index = self._record(rnd, stage, queue.requests[j], comp)
            for item in instructions.parse_continuation(
                comp.text, next_number, comp.finish_reason, c.list_length
            ):
                record = make(item.text, gen_index)
                records.append(record)
                if item.reason:
                    record.reject("parse", item.reason)
                    continue
                if reason := self.rules.check(item.text):
                    record.reject("rules", reason)
                    continue
                score, nearest = index.best(item.text)
                record.rouge_l = score
                # No nearest neighbour when no indexed text shares a single token with it.
                record.nearest = index.texts[nearest] if nearest is not None else None
                if score > c.rouge_threshold:
                    record.reject("rouge", "near_duplicate")
                    continue
                index.add(item.text)
                record.stage = "rouge"
                survivors.append(record)
                on_survivor(record)
        return survivors

    def _instruction_round(self, rnd: RoundRecord, still_needed: int) -> None:
        """Instructions, classification, instances: pipelined through three queues.

        Each candidate's next request is queued as soon as the candidate passes its stage,
        and results are consumed in order, so the data is the same as stage-by-stage batches
        and only the model's idle time changes.
        """
        c = self.config
        number = rnd.number
        seed_texts = [s.instruction for s in self.seeds]

        # The round's random draws, in a fixed order: the prompts' instructions, then the
        # instance demonstrations for each kind of task (drawn once per round, so that the
        # prompts of a round share them as a prefix).
        prompts = []
        for _ in range(c.prompts_per_round):
            shown = instructions.choose_prompt_instructions(
                self.rng, seed_texts, self.kept, c.seed_instructions, c.machine_instructions
            )
            prompts.append((instructions.render_prompt(c.language, shown), len(shown) + 1))
        round_demos = {
            clf: instances.pick_demos(self.rng, self.seeds, clf, c.instance_demos)
            for clf in (False, True)
        }

        # 1-3. Instruction generation; parse, rule filters, ROUGE-L novelty; each survivor's
        # classification request queued at once.
        classify_queue = self._queue()

        def ask_classify(cand: Candidate) -> None:
            prompt = classify.render_prompt(c.language, self.classify_demos, cand.instruction)
            classify_queue.add(
                GenerationRequest(
                    prompt=prompt,
                    shared_prefix=shared_prefix(prompt, cand.instruction),
                    params=SamplingParams(
                        temperature=0.0,
                        max_tokens=3,
                        seed=request_seed(c.seed, number, "classify", len(classify_queue.requests)),
                    ),
                    constraint=Constraint(choices=classify.CHOICES)
                    if c.constrain_classify
                    else None,
                )
            )

        survivors: list[Candidate] = self._novel_items(
            rnd,
            "instructions",
            prompts,
            self.index,
            rnd.candidates,
            lambda text, gen_index: Candidate(instruction=text, generation_index=gen_index),
            ask_classify,
        )

        # 4. Classification identification; each answered candidate's instance request queued.
        instance_queue = self._queue()
        answered = []
        for j, cand in enumerate(survivors):
            comp = self._wait(classify_queue, j)
            cand.classify_generation_index = self._record(
                rnd, "classify", classify_queue.requests[j], comp
            )
            verdict = classify.parse_answer(comp.text)
            if verdict is None:
                cand.reject("classify", "unparseable_answer")
                continue
            cand.is_classification = verdict
            cand.stage = "classify"
            prompt = instances.render_prompt(
                c.language, round_demos[verdict], cand.instruction, verdict
            )
            instance_queue.add(
                GenerationRequest(
                    prompt=prompt,
                    shared_prefix=shared_prefix(prompt, cand.instruction),
                    params=SamplingParams(
                        temperature=c.instance_temperature,
                        top_p=1.0,
                        max_tokens=c.instance_max_tokens,
                        presence_penalty=c.instance_presence_penalty,
                        stop=instances.stop_strings(c.max_instances),
                        seed=request_seed(c.seed, number, "instances", len(answered)),
                    ),
                )
            )
            answered.append(cand)

        # 5. Instance filters; the target counts kept tasks exactly.
        for j, cand in enumerate(answered):
            comp = self._wait(instance_queue, j)
            cand.instance_generation_index = self._record(
                rnd, "instances", instance_queue.requests[j], comp
            )
            parse = (
                instances.parse_output_first
                if cand.is_classification
                else instances.parse_input_first
            )
            verdict = instances.filter_instances(
                parse(comp.text, comp.finish_reason, c.max_instances),
                round_demos[bool(cand.is_classification)],
            )
            if verdict.task_reason:
                cand.reject("instances", verdict.task_reason)
            elif still_needed <= 0:
                # A surplus task stays in the store, marked, and is not exported.
                cand.reject("instances", "target_reached")
            else:
                cand.stage, cand.fate, cand.instances = "instances", "kept", verdict.kept
                self.kept.append(cand.instruction)
                still_needed -= 1

    def _trace_round(self, rnd: RoundRecord, traces_needed: int) -> None:
        """Tool-use traces: new requests, then the agent loop, then verification."""
        from selfgen.stages import tool_traces as tt
        from selfgen.tooling import validate_arguments

        c = self.config
        number = rnd.number
        specs = self.tool_specs
        seed_requests = [s.request for s in self.tool_seeds if s.calls]

        # New requests: the numbered-list continuation again, filtered like instructions.
        prompts = []
        for _ in range(c.trace_prompts_per_round):
            shown = instructions.choose_prompt_instructions(
                self.rng,
                seed_requests,
                self.verified_requests,
                c.seed_instructions,
                c.machine_instructions,
            )
            prompts.append((tt.render_request_prompt(c.language, specs, shown), len(shown) + 1))
        traces: list[Trace] = self._novel_items(
            rnd,
            "tool_requests",
            prompts,
            self.trace_index,
            rnd.traces,
            lambda text, gen_index: Trace(request=text, generation_index=gen_index),
        )

        # The agent loop, one step for all active traces at a time: a call (constrained to
        # the tools' schemas where the backend can), its execution, then "Call:" or "Answer:".
        demos = tt.pick_demos(self.rng, self.tool_seeds, c.trace_demos)
        schema = tt.call_schema(specs)
        active = list(traces)
        for step in range(c.max_tool_steps + 1):
            if not active:
                break
            if step > 0:
                # After a result: another call, or the answer (forced at the step limit).
                choices = ("Answer:",) if step >= c.max_tool_steps else ("Call:", "Answer:")
                nexts = self._generate(
                    rnd,
                    "tool_next",
                    [
                        self._agent_request(
                            tt,
                            demos,
                            t,
                            "",
                            SamplingParams(
                                temperature=0.0,
                                max_tokens=4,
                                seed=request_seed(c.seed, number, f"next{step}", j),
                            ),
                            Constraint(choices=choices),
                        )
                        for j, t in enumerate(active)
                    ],
                )
                answering = []
                calling = []
                for t, (gen_index, comp) in zip(active, nexts, strict=True):
                    t.step_generation_indexes.append(gen_index)
                    if comp.finish_reason == "error":
                        t.reject("semantic", f"no_next_step: {comp.extra.get('error', '')}"[:200])
                    elif comp.text.strip().startswith("Call"):
                        calling.append(t)
                    else:
                        answering.append(t)
                self._answer(rnd, tt, demos, answering, step)
                active = calling
                if not active:
                    break
            calls = self._generate(
                rnd,
                "tool_call",
                [
                    self._agent_request(
                        tt,
                        demos,
                        t,
                        "Call:",
                        SamplingParams(
                            temperature=0.0,
                            max_tokens=c.call_max_tokens,
                            stop=("\n",),
                            seed=request_seed(c.seed, number, f"call{step}", j),
                        ),
                        Constraint(json_schema=schema) if c.constrain_calls else None,
                    )
                    for j, t in enumerate(active)
                ],
            )
            still_active = []
            for t, (gen_index, comp) in zip(active, calls, strict=True):
                t.step_generation_indexes.append(gen_index)
                call, problem = tt.parse_call(comp.text, comp.finish_reason, specs)
                if comp.finish_reason == "error":
                    problem = f"call_not_generated: {comp.extra.get('error', '')}"[:200]
                if call is not None:
                    problem = validate_arguments(specs[call.name], call.arguments)
                    problem = f"invalid_arguments: {problem}" if problem else None
                if not t.check("format", problem):
                    continue
                assert call is not None
                result = self.sandbox.call(call.name, call.arguments)
                t.calls.append(
                    ToolCall(
                        call.name,
                        call.arguments,
                        result.output if result.ok else None,
                        None if result.ok else result.error,
                    )
                )
                if not t.check("execution", None if result.ok else f"tool_failed: {result.error}"):
                    continue
                still_active.append(t)
            active = still_active

        for t in traces:
            if t.fate == "rejected" or t.answer is None:
                if t.fate != "rejected":
                    t.reject("semantic", "no_answer")
                continue
            if not t.check("semantic", tt.semantic_check(t.calls[-1].output or "", t.answer)):
                continue
            if traces_needed <= 0:
                t.reject("verified", "target_reached")
                continue
            t.stage, t.fate = "verified", "kept"
            self.verified_requests.append(t.request)
            traces_needed -= 1

    def _agent_request(
        self,
        tt: Any,
        demos: list,
        trace: Any,
        closing: str,
        params: SamplingParams,
        constraint: Constraint | None = None,
    ) -> GenerationRequest:
        prompt = self._agent_prompt(tt, demos, trace, closing)
        # Tools and demonstrations are the same for every trace of the round: a shared prefix.
        return GenerationRequest(
            prompt=prompt,
            params=params,
            constraint=constraint,
            shared_prefix=prompt.rindex(f"Request: {trace.request}"),
        )

    def _agent_prompt(self, tt: Any, demos: list, trace: Any, closing: str = "Call:") -> str:
        prompt = tt.render_agent_prompt(
            self.config.language, self.tool_specs, demos, trace.request, trace.calls
        )
        # render_agent_prompt ends with "Call:" before the first call and with "Result: ...\n"
        # after each; `closing` is what the model is asked to continue from.
        if trace.calls:
            return prompt + closing
        return prompt

    def _answer(self, rnd: RoundRecord, tt: Any, demos: list, traces: list, step: int) -> None:
        c = self.config
        answers = self._generate(
            rnd,
            "tool_answer",
            [
                self._agent_request(
                    tt,
                    demos,
                    t,
                    "Answer:",
                    SamplingParams(
                        temperature=0.0,
                        max_tokens=c.answer_max_tokens,
                        stop=("\n\n", "\nRequest:", "\nCall:"),
                        seed=request_seed(c.seed, rnd.number, f"answer{step}", j),
                    ),
                )
                for j, t in enumerate(traces)
            ],
        )
        for t, (gen_index, comp) in zip(traces, answers, strict=True):
            t.step_generation_indexes.append(gen_index)
            if comp.finish_reason == "error":
                t.reject("semantic", f"answer_not_generated: {comp.extra.get('error', '')}"[:200])
                continue
            # The answer is its first non-empty line (the model may open with a line break).
            lines = [line.strip() for line in comp.text.splitlines() if line.strip()]
            t.answer = lines[0] if lines else ""
