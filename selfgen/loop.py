"""The Self-Instruct bootstrapping loop: scheduling, stopping, and the per-round commit.

One round: the instruction stages (instructions, classify, instances), then, when traces are
wanted, the tool stages (tool requests, the tool agent); everything the round produced is
committed to the run store in one transaction. Rounds repeat until the target number of kept
tasks (and verified traces) or a budget is reached. What each stage asks and how it judges the
answers lives in its module under `selfgen.stages`; this module only decides when requests go
to the backend and in which order answers are taken.

Each candidate's next request is queued as soon as the candidate passes its stage, and answers
are taken in order, so the data is the same as stage-by-stage batches and only the model's idle
time changes. Every request carries its own seed and the RNG state is stored with each round,
so a run killed and resumed produces the same data as one that was never interrupted.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from selfgen.backends.base import Backend, Completion, GenerationRequest
from selfgen.config import RunConfig
from selfgen.filters.novelty import NoveltyFilter
from selfgen.filters.rouge import TOKENIZERS
from selfgen.filters.rules import RuleFilter
from selfgen.records import TARGET_REACHED, Candidate, Fate, Stage, ToolSeed, Trace
from selfgen.stages.classify import ClassifyStage
from selfgen.stages.followups import FOLLOWUP_TRIES, MAX_USER_TURNS, FollowUpStage
from selfgen.stages.instances import InstanceStage
from selfgen.stages.instructions import InstructionStage, ListPrompt
from selfgen.stages.native_agent import NativeToolAgent
from selfgen.stages.tool_agent import ToolAgent, first_turn_kind, interleave_kinds, seeds_of_kind
from selfgen.stages.tool_requests import ToolRequestStage
from selfgen.store import GenerationRecord, RoundRecord, RunStore, RunTotals

if TYPE_CHECKING:
    from selfgen.sandbox import ToolSandbox
    from selfgen.stages.score import ScoreStage


@dataclass(frozen=True)
class RunResult:
    stop_reason: str
    totals: RunTotals


# Events for a display or a log, in the order they happen:
# - ("generated", {stage, tokens, completion_tokens}) after each generation call, and
#   ("generation_failed", {round, stage, error}) after one the backend answered with an error;
# - after each commit, ("rejected", {round, kind, stage, reason, text}) for each candidate
#   ("task") and trace the round rejected, then ("round", {round, candidates, kept, traces});
# - ("stopped", {reason, rounds, kept, traces}) when the run stops.
Callback = Callable[[str, dict], None]


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

    def ready(self, index: int) -> bool:
        """Whether request `index` was submitted and its completion has come back."""
        return index < len(self.futures) and self.futures[index].done()

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
        sandbox: ToolSandbox | None = None,
        scoring: ScoreStage | None = None,
    ) -> None:
        self.config = config
        self.scoring = scoring
        self.store = store
        self.backend = backend
        self.on_event = on_event or (lambda kind, data: None)
        self._queues: list[_Queue] = []  # the current round's, flushed before any wait
        self.rng = random.Random(config.seed)
        if (state := store.last_rng_state()) is not None:
            self.rng.setstate(state)

        seeds = store.seeds()
        rules = RuleFilter(config.rule_config())
        tokenizer = TOKENIZERS[config.tokenizer_name()]
        pool = [s.instruction for s in seeds] + store.novelty_pool()
        workers = config.novelty_workers
        novelty = NoveltyFilter(rules, tokenizer, config.rouge_threshold, pool, workers)
        self._novelty = [novelty]
        self.instructions = InstructionStage(config, seeds, novelty)
        self.classify = ClassifyStage(config, seeds)
        self.instances = InstanceStage(config, seeds)
        self.kept = store.kept_instructions()

        if config.num_traces > 0:
            if sandbox is None:
                raise ValueError("tool-use traces need a ToolSandbox to run the tools in")
            specs, tool_seeds = store.tool_specs(), store.tool_seeds()
            # The seeds' requests (and a multi-turn seed's follow-ups), then the run's.
            pool = [t.request for s in tool_seeds for t in s.turns()] + store.trace_pool()
            novelty = NoveltyFilter(rules, tokenizer, config.rouge_threshold, pool, workers)
            self._novelty.append(novelty)
            # One request stage per kind of trace, sharing one novelty pool (a multi-turn trace's
            # first request is written from the single traces' seeds).
            self.tool_requests = [
                ToolRequestStage(
                    config, specs, seeds_of_kind(tool_seeds, first_turn_kind(kind)), novelty, kind
                )
                for kind in config.trace_kind_list()
            ]
            agent = NativeToolAgent if config.tool_protocol == "native" else ToolAgent
            self.agent = agent(config, specs, tool_seeds, sandbox)
            # The user's follow-ups in multi-turn traces join the requests' novelty pool.
            self.followups = FollowUpStage(config, specs, novelty)
            self.verified = {
                kind: store.verified_requests(kind) for kind in config.trace_kind_list()
            }

    def _should_stop(self, totals: RunTotals) -> str | None:
        c = self.config
        if totals.kept >= c.num_tasks and totals.traces >= c.num_traces:
            if c.num_traces:
                return (
                    f"reached the targets of {c.num_tasks} kept tasks"
                    f" and {c.num_traces} verified traces"
                )
            return f"reached the target of {c.num_tasks} kept tasks"
        if c.max_rounds is not None and totals.rounds >= c.max_rounds:
            return f"reached --max-rounds {c.max_rounds}"
        tokens = totals.prompt_tokens + totals.completion_tokens
        if c.token_budget is not None and tokens >= c.token_budget:
            return f"spent the token budget ({tokens} of {c.token_budget} tokens)"
        if totals.rounds_without_kept >= c.patience:
            return f"no task kept in the last {c.patience} rounds (--patience)"
        return None

    def run(self) -> RunResult:
        """Rounds until a stop condition holds; then the novelty filters' worker processes
        (with --novelty-workers) end."""
        try:
            totals = self.store.totals()
            while (reason := self._should_stop(totals)) is None:
                self.run_round(
                    totals.rounds + 1,
                    self.config.num_tasks - totals.kept,
                    self.config.num_traces - totals.traces,
                )
                totals = self.store.totals()
        finally:
            self.close()
        self.on_event(
            "stopped",
            {
                "reason": reason,
                "rounds": totals.rounds,
                "kept": totals.kept,
                "traces": totals.traces,
            },
        )
        return RunResult(reason, totals)

    def close(self) -> None:
        """End the novelty filters' worker processes, if they have any."""
        for novelty in self._novelty:
            novelty.close()

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
        # Reported once committed, so that a log never names a rejection the store lacks.
        for kind, items, text in (
            ("task", rnd.candidates, "instruction"),
            ("trace", rnd.traces, "request"),
        ):
            for item in items:
                if item.fate is Fate.REJECTED:
                    self.on_event(
                        "rejected",
                        {
                            "round": number,
                            "kind": kind,
                            "stage": str(item.stage),
                            "reason": item.reason,
                            "text": getattr(item, text),
                        },
                    )
        self.on_event(
            "round",
            {
                "round": number,
                "candidates": len(rnd.candidates),
                "kept": sum(x.fate is Fate.KEPT for x in rnd.candidates),
                "traces": sum(t.fate is Fate.KEPT for t in rnd.traces),
            },
        )
        return rnd

    def _instruction_round(self, rnd: RoundRecord, still_needed: int) -> None:
        """Instructions, classification, instances: pipelined through three queues."""
        # The round's random draws, in a fixed order: the prompts' instructions, then the
        # instance demonstrations for each kind of task.
        prompts = self.instructions.prompts(self.rng, self.kept)
        demos = self.instances.round_demos(self.rng)
        lists, classify, instances = self._queue(), self._queue(), self._queue()
        for j, prompt in enumerate(prompts):
            lists.add(self.instructions.request(prompt, rnd.number, j))

        survivors: list[Candidate] = []
        for answered in self._batches(rnd, lists, prompts, self.instructions.name):
            for cands in self.instructions.apply_many(answered):
                for cand in cands:
                    rnd.candidates.append(cand)
                    if cand.fate is Fate.PENDING:
                        classify.add(self.classify.request(cand, rnd.number, len(survivors)))
                        survivors.append(cand)

        answered: list[Candidate] = []
        for j, cand in enumerate(survivors):
            cand.classify_generation_index, comp = self._take(rnd, classify, j, self.classify.name)
            if self.classify.apply(cand, comp):
                instances.add(self.instances.request(cand, demos, rnd.number, len(answered)))
                answered.append(cand)

        passed: list[Candidate] = []
        for j, cand in enumerate(answered):
            cand.instance_generation_index, comp = self._take(
                rnd, instances, j, self.instances.name
            )
            # The target counts kept tasks exactly: once it is met, the rest are surplus. With
            # scoring, a task counts only once its scores pass, below.
            if self.instances.apply(cand, comp, demos, room=still_needed > 0 or bool(self.scoring)):
                if self.scoring is None:
                    self.kept.append(cand.instruction)
                    still_needed -= 1
                else:
                    passed.append(cand)
        if self.scoring is not None and passed:
            rnd.scorers = self.scoring.meta
            for cand in self.scoring.apply(passed):
                if still_needed > 0:
                    self.kept.append(cand.instruction)
                    still_needed -= 1
                else:
                    cand.reject(Stage.SCORE, TARGET_REACHED)

    def _trace_round(self, rnd: RoundRecord, traces_needed: int) -> None:
        """Tool requests, then the tool agent on the novel ones, then verification (and the
        trace scorers, when the run scores)."""
        asked = []
        for stage in self.tool_requests:
            prompts = stage.prompts(self.rng, self.verified[stage.kind])
            lists = self._queue()
            for j, prompt in enumerate(prompts):
                lists.add(stage.request(prompt, rnd.number, j))
            asked.append((stage, prompts, lists))
        novel = []
        for stage, prompts, lists in asked:
            for answered in self._batches(rnd, lists, prompts, stage.name):
                for traces in stage.apply_many(answered):
                    rnd.traces.extend(traces)
                    novel += [t for t in traces if t.fate is Fate.PENDING]

        demos = self.agent.round_demos(self.rng)
        self.agent.run(
            novel, demos, rnd.number, lambda stage, requests: self._generate(rnd, stage, requests)
        )
        answered = self.agent.check_answers(novel)
        if any(t.kind == "multiturn" for t in answered):
            answered = self._follow_ups(rnd, answered, demos)
        if self.scoring is not None and answered:
            rnd.scorers = self.scoring.meta
            answered = self.scoring.apply_traces(answered)
        for trace in self.agent.keep(interleave_kinds(answered), traces_needed):
            self.verified[trace.kind].append((trace.request, trace.calls[0].name))

    def _follow_ups(
        self, rnd: RoundRecord, answered: list[Trace], demos: dict[str, list[ToolSeed]]
    ) -> list[Trace]:
        """The multi-turn traces' later turns, one turn of all of them at a time: the user's
        follow-up, then the agent on those that passed the filters, then the checks. Each
        conversation stops at its drawn number of user turns, or where a turn fails. Returns
        the answered traces that are still whole, in order."""
        multi = [t for t in answered if t.kind == "multiturn"]
        turns = self.followups.user_turns(self.rng, len(multi))
        wanted = {id(t): n for t, n in zip(multi, turns, strict=True)}

        def generate(stage: str, requests: list[GenerationRequest]) -> list[tuple[int, Completion]]:
            return self._generate(rnd, stage, requests)

        active = multi
        for turn in range(2, MAX_USER_TURNS + 1):
            active = [t for t in active if wanted[id(t)] >= turn]
            if not active:
                break
            novel, writing = [], active
            for attempt in range(FOLLOWUP_TRIES):
                written = generate(
                    self.followups.name,
                    [
                        self.followups.request(t, demos["multiturn"], rnd.number, j, attempt)
                        for j, t in enumerate(writing)
                    ],
                )
                again = []
                for t, (gen_index, comp) in zip(writing, written, strict=True):
                    verdict = self.followups.apply(
                        t, comp, gen_index, last_try=attempt == FOLLOWUP_TRIES - 1
                    )
                    if verdict is None:
                        again.append(t)
                    elif verdict:
                        novel.append(t)
                writing = again
                if not writing:
                    break
            passed = {id(t) for t in novel}
            novel = [t for t in active if id(t) in passed]  # in the traces' order
            self.agent.run(novel, demos, rnd.number, generate, turn=turn)
            active = self.agent.check_answers(novel)
        return [t for t in answered if t.fate is not Fate.REJECTED]

    def _queue(self) -> _Queue:
        """A new queue of requests, flushed with the others whenever the loop must wait."""
        queue = _Queue(self.backend)
        self._queues.append(queue)
        return queue

    def _take(
        self, rnd: RoundRecord, queue: _Queue, index: int, stage: str
    ) -> tuple[int, Completion]:
        """Wait for request `index` of `queue` and record it in the round as a call of `stage`;
        return the call's index in the round and the completion.

        Before blocking, every queue submits the requests it has gathered, as one batch each:
        the model always has the next work queued while this thread parses and filters.
        """
        if index >= len(queue.futures) or not queue.futures[index].done():
            for q in self._queues:
                q.flush()
        comp = queue.futures[index].result()
        return self._record(rnd, stage, queue.requests[index], comp), comp

    def _batches(
        self, rnd: RoundRecord, queue: _Queue, prompts: list[ListPrompt], stage: str
    ) -> Iterator[list[tuple[ListPrompt, Completion, int]]]:
        """The completions of `queue` (one per prompt), in order, as (prompt, completion,
        generation index): each batch is the next one, waited for, and those after it that have
        already come back, so that their items are judged together without waiting longer."""
        j = 0
        while j < len(prompts):
            batch = []
            while not batch or (j < len(prompts) and queue.ready(j)):
                gen_index, comp = self._take(rnd, queue, j, stage)
                batch.append((prompts[j], comp, gen_index))
                j += 1
            yield batch

    def _generate(
        self, rnd: RoundRecord, stage: str, requests: list[GenerationRequest]
    ) -> list[tuple[int, Completion]]:
        """Run a batch, record each call in the round, return (generation index, completion)."""
        queue = self._queue()
        for req in requests:
            queue.add(req)
        return [self._take(rnd, queue, j, stage) for j in range(len(requests))]

    def _record(
        self, rnd: RoundRecord, stage: str, req: GenerationRequest, comp: Completion
    ) -> int:
        """Record one generation call in the round; return its index there."""
        record = _generation_record(stage, req, comp)
        rnd.generations.append(record)
        self.on_event(
            "generated",
            {
                "stage": stage,
                "tokens": comp.prompt_tokens + comp.completion_tokens,
                "completion_tokens": comp.completion_tokens,
            },
        )
        if comp.finish_reason == "error":
            self.on_event(
                "generation_failed",
                {"round": rnd.number, "stage": stage, "error": record.error or "unknown error"},
            )
        return len(rnd.generations) - 1


def _generation_record(stage: str, req: GenerationRequest, comp: Completion) -> GenerationRecord:
    constraint = None
    if req.constraint is not None:
        constraint = (
            {"choices": list(req.constraint.choices)}
            if req.constraint.choices
            else {"json_schema": req.constraint.json_schema}
        )
    response = comp.text
    if req.tools:
        # A chat request with tools: the tools and what was asked of them, and the calls the
        # backend found beside the text (the tools themselves are the run's, in run_tools).
        constraint = {"tool_choice": req.tool_choice}
        response = json.dumps(
            {
                "content": comp.text,
                "tool_calls": comp.extra.get("tool_calls") or [],
                "tool_call_errors": comp.extra.get("tool_call_errors") or [],
            }
        )
    return GenerationRecord(
        stage=stage,
        prompt=req.prompt,
        messages=list(req.messages) if req.messages is not None else None,
        params=req.params.to_dict(),
        constraint=constraint,
        response=response,
        finish_reason=comp.finish_reason,
        prompt_tokens=comp.prompt_tokens,
        completion_tokens=comp.completion_tokens,
        latency_s=comp.latency_s,
        error=comp.extra.get("error") if comp.finish_reason == "error" else None,
    )
