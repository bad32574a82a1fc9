"""Progress for a log (selfgen.logs): the real loop, with a scripted model, writing plain lines
and JSON events; the heartbeat; the lines of `dedupe`; model text escaped for the terminal.
The real model's `selfgen run` writes its log in test_run_lock.py."""

import io
import itertools
import json
import re
import subprocess
import threading

import pytest
from conftest import ROOT, SEEDS, selfgen_cmd
from rich.console import Console

from selfgen.backends.base import get_backend
from selfgen.config import build_config
from selfgen.display import print_stats
from selfgen.logs import RunLog, TaskLog, duration
from selfgen.loop import Loop
from selfgen.seeds import load_seed_tasks
from selfgen.store import RunStore
from selfgen.terminal import printable

NEVER = 3600.0  # a heartbeat interval no test reaches


def fresh_instructions():
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    for a, b in itertools.permutations(words, 2):
        yield f"Explain {a}{b} and {b}{a} with {a}{a}{b} details"


def model(fail_first_list=False):
    """Each instruction list: two fresh instructions, one too short, one repeat (so every
    round rejects at the rules and at ROUGE-L); every task gets a valid instance."""
    source = fresh_instructions()
    lists = itertools.count()

    def reply(request):
        prompt = request.prompt
        if prompt.startswith("Come up with a series of tasks"):
            if fail_first_list and next(lists) == 0:
                return ("the server went away", "error")
            first = next(source)
            return f" {first}\n10. {next(source)}\n11. short\n12. {first}"
        if prompt.startswith("Can the following task"):
            return " No"
        return "\nInput: some input\nOutput: some output\n"

    return reply


def run_logged(tmp_path, scripted, log_factory, reply, **overrides):
    scripted(reply)
    cfg = build_config({}, {"backend": "scripted", "prompts_per_round": 2, **overrides})
    store = RunStore.create(tmp_path / "run", cfg.to_dict(), load_seed_tasks(SEEDS), {}, "test")
    start = store.totals()
    log = log_factory(
        rounds=start.rounds,
        kept=start.kept,
        candidates=start.candidates,
        traces=start.traces,
        target=cfg.num_tasks,
    )
    with log:
        result = Loop(cfg, store, get_backend("scripted"), on_event=log.on_event).run()
    store.close()
    return result


def test_a_plain_line_per_round(tmp_path, scripted):
    stream = io.StringIO()
    run_logged(
        tmp_path,
        scripted,
        lambda **kw: RunLog(stream, "plain", interval_s=NEVER, **kw),
        model(),
        num_tasks=5,
    )
    lines = stream.getvalue().splitlines()
    # Round 1 keeps 4 of its 8 candidates; round 2 needs one more of its 4 survivors.
    assert len(lines) == 2
    assert lines[0].startswith("round 1 done: kept 4/5, 8 candidates, 50% accepted, ")
    assert lines[1].startswith("round 2 done: kept 5/5, 16 candidates, 31% accepted, ")
    assert re.search(r", [\d.]+ tok/s, elapsed [\dhms]+, ETA [\dhms]+$", lines[0])
    assert lines[1].endswith("ETA 0s")


def test_json_events_of_the_loop(tmp_path, scripted):
    stream = io.StringIO()
    result = run_logged(
        tmp_path,
        scripted,
        lambda **kw: RunLog(stream, "json", interval_s=NEVER, **kw),
        model(fail_first_list=True),
        num_tasks=5,
    )
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "generation_failed" and kinds[-1] == "stopped"
    assert events[0]["round"] == 1 and events[0]["stage"] == "instructions"
    assert events[0]["error"] == "the server went away"
    rounds = [e for e in events if e["event"] == "round"]
    assert [(e["round"], e["round_kept"], e["kept"], e["target"]) for e in rounds] == [
        (1, 2, 2, 5),
        (2, 3, 5, 5),
    ]
    # The failed list counts as one empty item, rejected at parsing.
    assert rounds[-1]["candidates"] == 13 and rounds[-1]["eta_s"] == 0
    rejected = {(e["round"], e["stage"], e["reason"]) for e in events if e["event"] == "rejected"}
    assert rejected == {
        (1, "parse", "empty"),
        (1, "rules", "too_short"),
        (1, "rouge", "near_duplicate"),
        (2, "rules", "too_short"),
        (2, "rouge", "near_duplicate"),
        (2, "instances", "target_reached"),
    }
    short = next(e for e in events if e["event"] == "rejected" and e["reason"] == "too_short")
    assert short["kind"] == "task" and short["text"] == "short"
    # Each round's rejections come before its round event, once the round is committed.
    assert kinds.index("round") > kinds.index("rejected")
    assert events[-1]["reason"] == result.stop_reason == "reached the target of 5 kept tasks"
    assert (events[-1]["rounds"], events[-1]["kept"]) == (2, 5)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", e["time"]) for e in events)


class Watched(io.StringIO):
    """A stream that says when a line matching `pattern` was written to it."""

    def __init__(self, pattern):
        super().__init__()
        self.pattern = re.compile(pattern)
        self.seen = threading.Event()

    def write(self, text):
        n = super().write(text)
        if self.pattern.search(text):
            self.seen.set()
        return n


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_the_heartbeat_writes_while_a_call_takes_long(tmp_path, scripted, fmt):
    # The first call blocks until the heartbeat has written: a state the test sees, so that
    # nothing depends on how fast this machine is.
    stream = Watched(r"round 1 running|\"progress\"")
    inner = model()

    def reply(request):
        assert stream.seen.wait(60), "no heartbeat line"
        return inner(request)

    run_logged(
        tmp_path,
        scripted,
        lambda **kw: RunLog(stream, fmt, interval_s=0.05, **kw),
        reply,
        num_tasks=1,
    )
    lines = stream.getvalue().splitlines()
    first = lines[0]
    if fmt == "plain":
        assert first.startswith("round 1 running: kept 0/1, 0 candidates, - accepted, ")
        assert first.endswith("ETA -")
    else:
        event = json.loads(first)
        assert event["event"] == "progress"
        assert (event["round"], event["kept"], event["target"], event["eta_s"]) == (1, 0, 1, None)
    assert any(line.startswith(("round 1 done", '{"event": "round"')) for line in lines)


def test_task_log_lines():
    stream = io.StringIO()
    now = [0.0]
    log = TaskLog(stream, "plain", "tune", "steps", interval_s=NEVER, clock=lambda: now[0])
    now[0] = 10.0
    log.update(5, 20, loss=1.23456)  # a logged step: a line now
    now[0] = 40.0
    log.update(20, 20)  # done: one line, once
    log.update(20, 20)
    assert stream.getvalue().splitlines() == [
        "tune: 5/20 steps (25%), ETA 30s, loss 1.235",
        "tune: 20/20 steps, done in 40s",
    ]
    assert TaskLog(io.StringIO(), "plain", "score", "items").status()[0] == (
        "score: 0 items, ETA -"
    )


def test_durations():
    assert [duration(s) for s in (None, 0.4, 59, 61, 3600, 3725)] == [
        "-",
        "0s",
        "59s",
        "1m01s",
        "1h00m",
        "1h02m",
    ]


def test_dedupe_logs_lines_when_not_on_a_terminal(tmp_path, child_env):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"instruction": f"Tell me about {w} now"}) + "\n" for w in "abcd")
        + '{"instruction": 3}\n'
    )

    def dedupe(*flags):
        return subprocess.run(
            [*selfgen_cmd(), "dedupe", str(src), "--out", str(tmp_path / "o.jsonl"), *flags],
            capture_output=True,
            text=True,
            env=child_env,
            cwd=ROOT,
            timeout=120,
        )

    size = src.stat().st_size
    proc = dedupe()
    assert proc.returncode == 0, proc.stderr
    # The last line is read (done), then found malformed (skipped).
    done, skipped = proc.stderr.splitlines()
    assert re.fullmatch(rf"dedupe: {size}/{size} bytes read, done in [\dhms]+", done)
    assert skipped == f"skipped {src}:5: field 'instruction': the field is a int, not a string"
    proc = dedupe("--log-format", "json")
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [e["event"] for e in events] == ["done", "skipped"]
    assert (events[0]["done"], events[0]["total"], events[0]["unit"]) == (size, size, "bytes read")
    proc = dedupe("-q")
    assert proc.stderr.splitlines() == [
        f"skipped {src}:5: field 'instruction': the field is a int, not a string"
    ]
    proc = dedupe("--log-format", "xml")
    assert proc.returncode == 2
    assert proc.stderr == "error: --log-format: 'xml' is not one of auto, plain, json\n"


def test_printable_escapes_what_acts_on_a_terminal():
    text = "Say \x1b[31mred\x1b[0m\x1b]0;pwned\x07 then\r over\u202eevil\tand\nnext"
    assert printable(text) == (
        "Say \\x1b[31mred\\x1b[0m\\x1b]0;pwned\\x07 then\\r over\\u202eevil\tand\nnext"
    )
    assert printable("plain words, ünïcode 中文") == "plain words, ünïcode 中文"


def test_stats_tables_show_model_text_escaped():
    figures = {
        "funnel": {"candidates": 2, "rejected": {}, "surplus": 0},
        "kept": 2,
        "target": 2,
        "reasons": {"rules": {"bad\x1b[2Jreason": 1}},
        "instances": 2,
        "classification_share": 0.0,
        "classification": {"yes": 0, "no": 2},
        "curation": {"accepted": 0, "rejected": 0},
        "rounds": 1,
        "candidates_per_kept": 1.0,
        "tokens": {"prompt": 1, "completion": 1},
        "completion_tokens_per_s": 1.0,
        "elapsed_s": 1.0,
        "rouge_histogram": [],
        "instruction_words": [],
        "leading_verbs": [{"verb": "\x1b]0;title\x07[red]Write", "count": 2}],
        "tools": [
            {
                "tool": "calc\x1b[1A",
                "traces": 1,
                "format": 1,
                "target": 1,
                "execution": 1,
                "grounding": 1,
                "semantic": 1,
                "pass_rate": 1.0,
            }
        ],
    }
    out = io.StringIO()
    print_stats(Console(file=out, width=200, color_system=None), figures)
    shown = out.getvalue()
    assert "\x1b" not in shown
    assert "\\x1b]0;title\\x07[red]Write" in shown  # escaped, and not read as markup
    assert "bad\\x1b[2Jreason" in shown and "calc\\x1b[1A" in shown
