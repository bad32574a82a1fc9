"""A real run with tools on the embedded default: verified traces, exported and re-executed."""

import json
import sqlite3
import subprocess

import jsonschema
import pytest
from conftest import ROOT, SEEDS, selfgen_cmd
from fingerprint import check_fingerprint

pytestmark = pytest.mark.slow

# A tool-capable chat template in the style of Hermes/Qwen models: tools in the system turn,
# calls as <tool_call> JSON, results as <tool_response>.
TEMPLATE = """{%- if tools %}<|im_start|>system
You may call these functions:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import os

    out = tmp_path_factory.mktemp("traces") / "run"
    proc = subprocess.run(
        [
            *selfgen_cmd(),
            "run",
            "--seeds",
            str(SEEDS),
            "--tools",
            "tools",
            "--num-traces",
            "5",
            "-n",
            "1",
            "--seed",
            "1",
            "--out",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_run_reaches_five_verified_traces(run_dir):
    db = sqlite3.connect(run_dir / "selfgen.db")
    assert db.execute("SELECT COUNT(*) FROM traces WHERE fate = 'kept'").fetchone()[0] == 5
    for (checks,) in db.execute("SELECT checks FROM traces WHERE fate = 'kept'"):
        assert {k: v["ok"] for k, v in json.loads(checks).items()} == {
            "format": True,
            "target": True,
            "execution": True,
            "grounding": True,
            "semantic": True,
        }
    # Every trace that reached the call stage has its verification recorded with reasons.
    for _stage, reason in db.execute(
        "SELECT stage, reason FROM traces WHERE fate = 'rejected'"
        " AND stage IN ('format', 'target', 'execution', 'grounding', 'semantic')"
    ):
        assert reason


def test_the_data_of_a_seed_fixed_run_with_tools_is_the_recorded_data(run_dir):
    check_fingerprint(run_dir, "traces")


def test_constrained_calls_always_parse(run_dir):
    # With the grammar on, a call can fail validation only on what the grammar cannot
    # express (numeric ranges); it never names an unknown tool. llama.cpp still lets the model
    # end its generation (the end-of-text token) before the grammar is complete: such a call is
    # unfinished JSON, and what it wrote follows the grammar as far as it went.
    db = sqlite3.connect(run_dir / "selfgen.db")
    rows = db.execute(
        "SELECT t.reason, g.response FROM traces t JOIN generations g"
        " ON g.id = json_extract(t.step_generation_ids, '$[#-1]') WHERE t.stage = 'format'"
    ).fetchall()
    assert not [r for r, _ in rows if r == "no_tool_name" or r.startswith("unknown_tool")]
    for reason, response in rows:
        if reason == "not_json":
            assert response.lstrip().startswith('{"name": "'), response
            assert not response.rstrip().endswith("}") or response.count('"') % 2, response


def test_export_validates_and_renders(run_dir, tmp_path, child_env):
    out = tmp_path / "train.jsonl"
    subprocess.run(
        [*selfgen_cmd(), "export", str(run_dir), "--format", "openai", "--out", str(out)],
        check=True,
        cwd=ROOT,
        env=child_env,
        timeout=120,
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    traces = [r for r in rows if "tools" in r]
    assert len(traces) == 5
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x: json.dumps(x)
    template = env.from_string(TEMPLATE)
    for row in traces:
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in row["tools"]}
        calls = [c for m in row["messages"] for c in m.get("tool_calls") or []]
        assert calls
        for call in calls:
            assert call["type"] == "function" and call["id"]
            jsonschema.validate(
                json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]]
            )
        ids = {c["id"] for c in calls}
        assert {m["tool_call_id"] for m in row["messages"] if m["role"] == "tool"} == ids
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"]
        rendered = template.render(messages=row["messages"], tools=row["tools"])
        assert "<tool_call>" in rendered and "<tool_response>" in rendered
        # The same through transformers' chat-template renderer (what apply_chat_template uses).
        from transformers.utils.chat_template_utils import render_jinja_template

        chats, _ = render_jinja_template(
            conversations=[row["messages"]], tools=row["tools"], chat_template=TEMPLATE
        )
        assert "<tool_call>" in chats[0] and call["function"]["name"] in chats[0]

    sharegpt = tmp_path / "sharegpt.jsonl"
    subprocess.run(
        [*selfgen_cmd(), "export", str(run_dir), "--format", "sharegpt", "--out", str(sharegpt)],
        check=True,
        cwd=ROOT,
        env=child_env,
        timeout=120,
    )
    srows = [json.loads(line) for line in sharegpt.read_text().splitlines()]
    straces = [r for r in srows if "tools" in r]
    assert len(straces) == 5
    for row in straces:
        assert isinstance(row["tools"], str) and json.loads(row["tools"])
        roles = [t["from"] for t in row["conversations"]]
        assert roles[0] == "human" and roles[-1] == "gpt" and "function_call" in roles
        assert roles.count("function_call") == roles.count("observation")


def test_replay_reproduces_every_recorded_output(run_dir, child_env):
    proc = subprocess.run(
        [*selfgen_cmd(), "traces", "replay", str(run_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 differ" in proc.stdout
