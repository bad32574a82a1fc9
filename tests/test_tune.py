"""selfgen tune / selfgen eval: data checks, assistant-only labels, the tool fallback, and real
LoRA training of the bundled SmolLM2 on the CPU (a few steps), resumed, loaded back and scored."""

from __future__ import annotations

import json
import subprocess

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from conftest import ROOT, SEEDS, selfgen_cmd, shared_file  # noqa: E402

from selfgen.export import to_row  # noqa: E402
from selfgen.seeds import load_seed_tasks  # noqa: E402
from selfgen.tune import TuneError  # noqa: E402
from selfgen.tune.data import (  # noqa: E402
    ChatExample,
    load_chat_file,
    template_messages,
    template_renders_tools,
    tokenize_example,
)
from selfgen.tune.evaluate import load_eval_items, rouge_l, summarize  # noqa: E402

USER_252 = "self_instruct_user_oriented_instructions_252.jsonl"

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
TRACE_ROW = {
    "messages": [
        {"role": "user", "content": "What is 17 * 23 + 4?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {
                        "name": "calculator",
                        "arguments": '{"expression": "17 * 23 + 4"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "395"},
        {"role": "assistant", "content": "17 * 23 + 4 = 395."},
    ],
    "tools": [CALCULATOR],
}

# A Hermes-style template that renders tools itself (as Qwen's and many others do).
TOOL_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\n<tools>\\n' }}"
    "{%- for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{%- endfor %}"
    "{{ '</tools><|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}{{ '<|im_start|>assistant\\n' }}"
    "{%- for call in message.tool_calls %}{{ '<tool_call>\\n' }}"
    "{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}"
    "{{ '\\n</tool_call>' }}{%- endfor %}{{ '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def training_rows(n_seed_rows: int) -> list[dict]:
    """The shortest seed tasks (training on the CPU costs by the token) and one tool trace."""
    tasks = sorted(
        load_seed_tasks(SEEDS), key=lambda t: len(t.instruction + t.instances[0].output)
    )[:n_seed_rows]
    return [to_row("openai", t.instruction, t.instances[0]) for t in tasks] + [TRACE_ROW]


@pytest.fixture(scope="module")
def tokenizer():
    from selfgen.tune.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("bundled"))


# Data files


def test_wrong_format_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps(training_rows(1)[0]) + "\n" + json.dumps({"instruction": "x", "output": "y"}),
        encoding="utf-8",
    )
    with pytest.raises(TuneError, match=rf"{path}:2: missing field 'messages' .*--format openai"):
        load_chat_file(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "role must be one of"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null,'
            ' "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]}',
            "arguments is not valid JSON",
        ),
    ],
)
def test_bad_rows_are_refused(tmp_path, line, problem):
    path = tmp_path / "train.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(TuneError, match=rf"{path}:1: .*{problem}"):
        load_chat_file(path)


def test_unverified_traces_are_left_out(tmp_path):
    failed = {**TRACE_ROW, "selfgen": {"verified": False, "stage": "semantic", "reason": "x"}}
    chat = load_chat_file(write_rows(tmp_path / "t.jsonl", [*training_rows(2), failed]))
    assert len(chat.examples) == 3 and chat.unverified == 1


# Rendering and labels


def labelled_text(tokenizer, tokens):
    return tokenizer.decode(
        [t for t, label in zip(tokens["input_ids"], tokens["labels"], strict=True) if label != -100]
    )


def test_smollm2_template_has_no_tools_so_the_fallback_renders_them(tokenizer):
    assert not template_renders_tools(tokenizer)
    example = ChatExample(TRACE_ROW["messages"], TRACE_ROW["tools"], "t:1")
    messages, tools = template_messages(example, native_tools=False)
    assert tools is None
    assert messages[0]["role"] == "system" and '"name": "calculator"' in messages[0]["content"]
    assert messages[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23 + 4"}}\n</tool_call>',
    }
    assert messages[3] == {"role": "user", "content": "<tool_response>\n395\n</tool_response>"}
    tokens = tokenize_example(tokenizer, messages, tools, example.where)
    # Only the assistant turns, each with its end-of-turn token, carry a loss.
    assert labelled_text(tokenizer, tokens) == (
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23 + 4"}}\n'
        "</tool_call><|im_end|>\n17 * 23 + 4 = 395.<|im_end|>\n"
    )


def test_plain_row_trains_on_the_answer_only(tokenizer):
    row = training_rows(1)[0]
    example = ChatExample(row["messages"], None, "t:1")
    tokens = tokenize_example(tokenizer, *template_messages(example, False), example.where)
    assert labelled_text(tokenizer, tokens) == row["messages"][1]["content"] + "<|im_end|>\n"
    assert len(tokens["labels"]) == len(tokens["input_ids"])


def test_a_template_with_tools_renders_them_itself(tokenizer):
    original = tokenizer.chat_template
    tokenizer.chat_template = TOOL_TEMPLATE
    try:
        assert template_renders_tools(tokenizer)
        example = ChatExample(TRACE_ROW["messages"], TRACE_ROW["tools"], "t:1")
        messages, tools = template_messages(example, native_tools=True)
        assert tools == [CALCULATOR]
        assert messages[1]["tool_calls"][0]["function"]["arguments"] == {
            "expression": "17 * 23 + 4"
        }
        tokens = tokenize_example(tokenizer, messages, tools, example.where)
        text = tokenizer.decode(tokens["input_ids"])
        assert text.startswith("<|im_start|>system\n<tools>\n") and "You can call" not in text
        assert labelled_text(tokenizer, tokens).endswith("17 * 23 + 4 = 395.<|im_end|>\n")
    finally:
        tokenizer.chat_template = original


def test_a_multiturn_row_trains_on_every_assistant_turn_only(tokenizer, tmp_path):
    from selfgen.records import FollowUp, ToolCall, Trace

    trace = Trace(
        request="What is 17 * 23 + 4?",
        generation_index=0,
        kind="multiturn",
        calls=[ToolCall("calculator", {"expression": "17 * 23 + 4"}, "395")],
        answer="17 * 23 + 4 = 395.",
        followups=[
            FollowUp(
                request="And times 2?",
                generation_index=1,
                calls=[ToolCall("calculator", {"expression": "395 * 2"}, "790")],
                answer="That is 790.",
            ),
            FollowUp(request="Is that even?", generation_index=2, answer="Yes, 790 is even."),
        ],
    )
    row = {"messages": trace.messages(), "tools": [CALCULATOR]}
    # The row as export writes it passes the data checks of `selfgen tune`.
    [example] = load_chat_file(write_rows(tmp_path / "train.jsonl", [row])).examples
    expected = (
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23 + 4"}}\n'
        "</tool_call><|im_end|>\n17 * 23 + 4 = 395.<|im_end|>\n"
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "395 * 2"}}\n'
        "</tool_call><|im_end|>\nThat is 790.<|im_end|>\nYes, 790 is even.<|im_end|>\n"
    )
    # SmolLM2's template, with the tools in the fallback system turn.
    tokens = tokenize_example(tokenizer, *template_messages(example, False), example.where)
    assert labelled_text(tokenizer, tokens) == expected
    # A template that renders tools itself: the same turns carry the loss, the user's
    # follow-ups and the results do not.
    original = tokenizer.chat_template
    tokenizer.chat_template = TOOL_TEMPLATE
    try:
        messages, tools = template_messages(example, native_tools=True)
        tokens = tokenize_example(tokenizer, messages, tools, example.where)
        text = labelled_text(tokenizer, tokens)
        assert "And times 2?" not in text and "790\n</tool_response>" not in text
        assert text.count("<tool_call>") == 2 and text.endswith("Yes, 790 is even.<|im_end|>\n")
        assert "And times 2?" in tokenizer.decode(tokens["input_ids"])
    finally:
        tokenizer.chat_template = original


def test_a_template_that_is_not_prefix_preserving_is_refused(tokenizer):
    original = tokenizer.chat_template
    # Drops the newline after the role when a message follows: the generation prompt
    # "<|im_start|>assistant\n" is then not where the answer starts.
    tokenizer.chat_template = (
        "{%- for m in messages %}{{ '<|im_start|>' + m.role + m.content + '<|im_end|>' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    try:
        row = training_rows(1)[0]
        with pytest.raises(TuneError, match="t:7: the model's chat template renders"):
            tokenize_example(tokenizer, row["messages"], None, "t:7")
    finally:
        tokenizer.chat_template = original


# Evaluation tasks and scores


def test_eval_reads_the_252_user_tasks_with_their_apps():
    items = load_eval_items(shared_file(USER_252), limit=5)
    assert len(items) == 5 and items[0].task_id == "user_oriented_task_0"
    assert items[0].category == "Grammarly"
    assert items[0].prompt.startswith("The sentence you are given might be too wordy")


def test_eval_reads_seed_tasks_as_one_category(tmp_path):
    items = load_eval_items(SEEDS, limit=3)
    assert {i.category for i in items} == {"all"} and len({i.task_id for i in items}) == 3
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"instruction": "x", "instances": []}\n', encoding="utf-8")
    with pytest.raises(TuneError, match=rf"{bad}:1: 'instances' must be a non-empty list"):
        load_eval_items(bad)


def test_scores_are_rouge_score_rouge_l_averaged_per_category():
    items = load_eval_items(SEEDS, limit=2)
    assert rouge_l("the cat sat", "the cat sat") == 1.0 and rouge_l("dog", "the cat") == 0.0
    summary = summarize(items, [1.0] * (len(items) - 1) + [0.0])
    assert summary["overall"]["n"] == len(items)
    assert summary["categories"]["all"]["rouge_l"] == pytest.approx((len(items) - 1) / len(items))


# Real training on the CPU


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Eight LoRA steps on the bundled model (4 rows, batch 2: four epochs), with snapshots."""
    from pathlib import Path

    from selfgen.tune.config import build_tune_config
    from selfgen.tune.train import prepare

    folder = tmp_path_factory.mktemp("tune")
    data = write_rows(folder / "train.jsonl", training_rows(3))
    settings = {
        "max_steps": 8,
        "max_length": 256,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_steps": 4,
        # One thread: tests share the cores with other work (see selfgen.tune.models.use_threads).
        "threads": 1,
    }
    job = prepare(data, Path(folder / "adapter"), build_tune_config(settings))
    before = {n: p.detach().clone() for n, p in job.trainable_parameters().items()}
    record = job.train(quiet=True)
    return job, before, record, data


@pytest.mark.slow
def test_training_lowers_the_loss_and_moves_every_lora_weight(trained):
    job, before, record, _ = trained
    assert record["status"] == "done" and record["tools_rendering"] == "fallback"
    assert record["train_rows"] == 4
    losses = [e["loss"] for e in record["train_loss"]]
    assert len(losses) == 8
    assert sum(losses[-2:]) < sum(losses[:2])  # last epoch against the first, same rows
    after = job.trainable_parameters()
    assert before and set(after) == set(before)
    assert all(n.count("lora_") == 1 for n in before)
    unchanged = [n for n in before if after[n].detach().equal(before[n])]
    assert unchanged == []


@pytest.mark.slow
def test_the_adapter_loads_back_and_generates(trained):
    from safetensors.torch import load_file

    from selfgen.tune.evaluate import generate_batch
    from selfgen.tune.models import attach_adapter, load_model, resolve_model

    job, _, _, _ = trained
    saved = load_file(str(job.out_dir / "adapter_model.safetensors"))
    trained_weights = {n: p.detach() for n, p in job.trainable_parameters().items()}
    assert len(saved) == len(trained_weights)
    model = attach_adapter(load_model(resolve_model("bundled")), job.out_dir, "bundled")
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    for name, value in trained_weights.items():
        assert loaded[name].equal(value), name
    prompt = job.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    [answer] = generate_batch(model, job.tokenizer, [prompt], max_new_tokens=12)
    assert answer.strip()


@pytest.mark.slow
def test_the_fingerprint_read_from_files_is_the_loaded_models(trained, tmp_path):
    """The GPU path (vLLM loads the base itself) checks adapters by reading the embeddings from
    the model folder's files; that must agree with the fingerprint of the loaded model."""
    import torch

    from selfgen.tune.models import fingerprint, fingerprint_files, resolve_model

    job, _, record, _ = trained
    base = job.model.get_base_model()
    base.to(torch.bfloat16).save_pretrained(str(tmp_path / "base"))
    base.to(torch.float32)
    assert fingerprint_files(resolve_model(str(tmp_path / "base"))) == record["base_fingerprint"]
    assert fingerprint(base) == record["base_fingerprint"]
    assert fingerprint_files(resolve_model("bundled")) is None  # a GGUF: loaded instead


@pytest.mark.slow
def test_cli_resumes_from_the_last_checkpoint_and_merges(trained, child_env):
    job, _, _, data = trained
    proc = subprocess.run(
        [*selfgen_cmd(), "tune", str(data), "--out", str(job.out_dir), "--resume"]
        + ["--max-steps", "10", "--merge", "--log-format", "json", "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((job.out_dir / "selfgen_tune.json").read_text())
    assert [e["step"] for e in record["train_loss"]][-2:] == [9, 10]
    assert record["config"]["max_steps"] == 10 and record["config"]["learning_rate"] == 1e-3
    assert (job.out_dir / "checkpoints" / "checkpoint-10").is_dir()
    assert (job.out_dir / "merged" / "config.json").is_file()
    assert "train loss:" in proc.stdout and "merged model:" in proc.stdout
    # Its log: the start, a line for each logged step (with its loss), the end.
    # (Lines that are not JSON would be the libraries' own warnings.)
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert events[0]["event"] == "start" and events[0]["message"].startswith("tuning ")
    logged = [e for e in events if e["event"] == "progress" and "loss" in e]
    assert [(e["done"], e["total"]) for e in logged] == [(9, 10), (10, 10)]
    assert events[-1] | {"time": None} == {
        "event": "done",
        "time": None,
        "task": "tune",
        "done": 10,
        "total": 10,
        "unit": "steps",
    }


@pytest.mark.slow
def test_an_adapter_is_refused_on_the_model_it_was_merged_into(trained, child_env):
    job, _, _, _ = trained
    merged = job.out_dir / "merged"
    if not (merged / "config.json").is_file():  # when run without the test above
        job.merge()
    proc = run_cli(
        ["eval", "--tasks", str(SEEDS), "--model", str(merged), "--adapter", str(job.out_dir)]
        + ["--limit", "1", "--threads", "1"],
        child_env,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"--adapter: {job.out_dir} is already merged into {merged}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_trl_collator_trains_on_the_assistant_turns_only(trained):
    """What reaches the model's loss is what TRL's collator makes of our labels: the tool call
    and the answer are trained on, the system turn, the request and the tool result are not."""
    job, _, _, _ = trained
    trainer = job._trainer(quiet=True)
    texts = []
    for batch in trainer.get_train_dataloader():
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            if "<tool_response>" in job.tokenizer.decode(ids):
                texts.append(job.tokenizer.decode(labels[labels != -100]))
    assert texts == [
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23 + 4"}}\n'
        "</tool_call><|im_end|>\n17 * 23 + 4 = 395.<|im_end|>\n"
    ]


@pytest.mark.slow
def test_eval_compares_base_and_tuned_on_the_252_tasks(trained, tmp_path, child_env):
    job, _, _, _ = trained
    tasks = shared_file(USER_252)
    results_path = tmp_path / "results.json"
    proc = subprocess.run(
        [*selfgen_cmd(), "eval", "--tasks", str(tasks), "--adapter", str(job.out_dir)]
        + ["--compare", "--limit", "4", "--max-new-tokens", "16", "--out", str(results_path)]
        + ["--threads", "1", "--log-format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(results_path.read_text())
    assert results["model"] == "bundled" and results["generator"] == "transformers"
    assert set(results["models"]) == {"base", "tuned"}
    assert len(results["items"]) == 4
    for run in ("base", "tuned"):
        summary = results["models"][run]
        assert summary["overall"]["n"] == 4
        assert sum(c["n"] for c in summary["categories"].values()) == 4
        assert all(0.0 <= row[f"{run}_rouge_l"] <= 1.0 and row[run] for row in results["items"])
        scores = [row[f"{run}_rouge_l"] for row in results["items"]]
        assert summary["overall"]["rouge_l"] == pytest.approx(sum(scores) / 4)
    assert "overall" in proc.stdout and "Grammarly" in proc.stdout and "change" in proc.stdout
    done = [json.loads(line) for line in proc.stderr.splitlines() if '"event": "done"' in line]
    assert [(e["task"], e["done"], e["total"]) for e in done] == [("eval", 8, 8)]


# Bad input on the command line: one message, exit code 2, nothing written


def run_cli(args, child_env):
    return subprocess.run(
        [*selfgen_cmd(), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=300,
    )


def test_cli_refuses_a_data_file_in_another_format(tmp_path, child_env):
    data = write_rows(tmp_path / "alpaca.jsonl", [{"instruction": "x", "input": "", "output": "y"}])
    proc = run_cli(["tune", str(data), "--out", str(tmp_path / "out")], child_env)
    assert proc.returncode == 2
    assert f"{data}:1: missing field 'messages'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_cli_refuses_a_missing_model(tmp_path, child_env):
    data = write_rows(tmp_path / "train.jsonl", training_rows(2))
    missing = tmp_path / "no-such-model.gguf"
    proc = run_cli(
        ["tune", str(data), "--out", str(tmp_path / "out"), "--base-model", str(missing)],
        child_env,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: --base-model: no such model: {missing} (give a model folder, a .gguf file or 'bundled')"
    )
    assert not (tmp_path / "out").exists()


def test_cli_refuses_compare_without_an_adapter(child_env):
    proc = run_cli(["eval", "--tasks", str(SEEDS), "--compare"], child_env)
    assert proc.returncode == 2 and "--compare: needs --adapter" in proc.stderr


@pytest.mark.slow
def test_cli_refuses_an_adapter_tuned_on_another_base_model(
    trained, tmp_path, tokenizer, child_env
):
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    job, _, _, _ = trained
    set_seed(0)
    tiny = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    tiny.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    proc = run_cli(
        ["eval", "--tasks", str(SEEDS), "--model", str(tmp_path / "tiny")]
        + ["--adapter", str(job.out_dir), "--limit", "1", "--threads", "1"],
        child_env,
    )
    assert proc.returncode == 2
    assert f"--adapter: {job.out_dir} was tuned on another base model (bundled)" in proc.stderr
    assert "Traceback" not in proc.stderr


# Settings


def test_settings_come_from_defaults_then_file_then_flags(tmp_path):
    from selfgen.tune.config import build_tune_config, load_tune_toml, resume_conflicts

    toml = tmp_path / "tune.toml"
    toml.write_text('lora_r = 8\ntarget_modules = "q_proj"\n[tune]\nepochs = 1\n', encoding="utf-8")
    cfg = build_tune_config(load_tune_toml(toml), {"lora_r": 4, "seed": None})
    assert (cfg.lora_r, cfg.epochs, cfg.target_modules, cfg.seed) == (4, 1, ["q_proj"], 0)
    toml.write_text("lora_rank = 8\n", encoding="utf-8")
    with pytest.raises(TuneError, match=rf"{toml}: unknown setting\(s\): lora_rank"):
        load_tune_toml(toml)
    with pytest.raises(TuneError, match="setting 'valid_split': must be in"):
        build_tune_config({"valid_split": 1.5})
    with pytest.raises(TuneError, match="setting 'max_steps': must be a whole number"):
        build_tune_config({"max_steps": "ten"})
    stored = build_tune_config({}).to_dict()
    assert resume_conflicts(stored, {"max_steps": 50, "threads": 1}) == []
    assert resume_conflicts(stored, {"lora_r": 4}) == ["lora_r is 16, not 4"]


def test_validation_split_holds_out_whole_rows_with_a_seed():
    from selfgen.tune.data import split_rows

    examples = [ChatExample([], None, f"t:{i}") for i in range(10)]
    train, valid = split_rows(examples, 0.2, seed=3)
    assert len(valid) == 2 and len(train) == 8
    assert {e.where for e in train} | {e.where for e in valid} == {e.where for e in examples}
    assert split_rows(examples, 0.2, seed=3) == (train, valid)


def test_vllm_lora_rank_is_the_next_rank_vllm_takes():
    from selfgen.tune.evaluate import vllm_lora_rank

    assert [vllm_lora_rank(r) for r in (1, 2, 4, 8, 9, 16, 300, 512)] == [
        1,
        8,
        8,
        8,
        16,
        16,
        320,
        512,
    ]
    with pytest.raises(TuneError, match="LoRA rank 600 is more than vLLM takes .512."):
        vllm_lora_rank(600)


def test_eval_on_vllm_passes_what_vllm_takes(tmp_path, monkeypatch):
    """Control flow only, on the scripted stand-in (tests/vllm_standin.py): the rank, the
    tokenization and the progress. tests/test_vllm_contract.py runs it through vLLM."""
    import vllm_standin

    from selfgen.tune.evaluate import _generate_vllm
    from selfgen.tune.models import ModelSource

    vllm = vllm_standin.install(monkeypatch)
    made = []

    def llm(**options):
        made.append(options)
        engine = vllm_standin.LLM(reply=lambda prompt: (f" answer to {prompt} ", "stop"))
        made.append(engine)
        return engine

    vllm.LLM = llm
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    progress = []
    source = ModelSource("folder", tmp_path)
    answers = _generate_vllm(
        source,
        adapter,
        prompts=["p1", "p2"],
        runs=["base", "tuned"],
        max_new_tokens=5,
        progress=lambda done, total: progress.append((done, total)),
    )
    options, engine = made
    assert options == {"model": str(tmp_path), "enable_lora": True, "max_lora_rank": 8}
    # The prompts are chat-formatted already: no second BOS, as on the transformers path.
    assert [c.kwargs["tokenization_kwargs"] for c in engine.calls] == [
        {"add_special_tokens": False}
    ] * 2
    assert [c.kwargs["lora_request"] for c in engine.calls][0] is None
    assert engine.calls[1].kwargs["lora_request"].lora_path == str(adapter)
    assert answers == {"base": ["answer to p1", "answer to p2"], "tuned": answers["base"]}
    assert progress == [(2, 4), (4, 4)]

    def refuse(**_):
        raise ValueError("1 validation error for LoRAConfig\nmax_lora_rank\n  Input should be 8")

    vllm.LLM = refuse
    with pytest.raises(TuneError, match="--model: vLLM cannot load folder .1 validation error"):
        _generate_vllm(source, None, prompts=["p"], runs=["base"], max_new_tokens=5)


def test_long_rows_in_batches_get_a_memory_note():
    """Tool-use rows (about 1,400 tokens with SmolLM2's fallback) in batches of four took 23 GB
    on a CPU and the process was killed without a word; `tune` now says what to do first."""
    from selfgen.cli import _batch_memory_hint

    note = _batch_memory_hint(4, 2, 1481)
    assert note is not None and "--batch-size 1 --grad-accum 8" in note and "1481" in note
    assert _batch_memory_hint(1, 8, 1481) is None  # one row a batch already
    assert _batch_memory_hint(4, 1, 400) is None  # short instruction rows
