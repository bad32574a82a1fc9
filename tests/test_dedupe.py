"""`selfgen dedupe` end to end, and the index's decisions against a plain reference."""

import json
import subprocess

import pytest
from conftest import ROOT, selfgen_cmd, shared_file

import selfgen.dedupe as dedupe_module
from selfgen.dedupe import (
    DedupeError,
    dedupe,
    default_workers,
    extract,
    parse_field_path,
)
from selfgen.filters.rouge import RougeIndex, rouge_l_f, rouge_tokenize


def run(args, env):
    return subprocess.run(
        [*selfgen_cmd(), "dedupe", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_jsonl_rows_kept_verbatim_and_rejected_with_nearest(tmp_path, child_env):
    src = tmp_path / "in.jsonl"
    rows = [
        '{"instruction": "Tell me a joke about cats please", "extra":   1}\n',
        '{"instruction": "Tell me a joke about cats, please!"}\n',
        "this line is not json\n",
        '{"prompt": "no instruction here"}\n',
        "\n",
        '{"instruction": "Explain how rainbows form in the sky"}',  # no final newline
    ]
    src.write_text("".join(rows))
    out, rej = tmp_path / "kept.jsonl", tmp_path / "rej.jsonl"
    proc = run([str(src), "--out", str(out), "--rejected", str(rej), "-q"], child_env)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == rows[0] + rows[5] + "\n"  # spacing kept exactly as read
    assert f"skipped {src}:3: not valid JSON" in proc.stderr
    assert f"skipped {src}:4: field 'instruction': no field 'instruction'" in proc.stderr
    rejected = [json.loads(line) for line in rej.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (2, "near_duplicate"),
        (3, "malformed"),
        (4, "malformed"),
    ]
    assert rejected[0]["nearest"] == "Tell me a joke about cats please"
    assert rejected[0]["nearest_source"] == f"{src}:1"
    assert rejected[0]["score"] == 1.0


def test_strict_stops_at_a_malformed_line_and_writes_nothing(tmp_path, child_env):
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "a b c d"}\n{"instruction": 3}\n')
    out = tmp_path / "kept.jsonl"
    proc = run([str(src), "--out", str(out), "--strict", "-q"], child_env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {src}:2: field 'instruction': the field is a int, not a string"
    )
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src]


def test_plain_text_and_against(tmp_path, child_env):
    src = tmp_path / "in.txt"
    src.write_text("Name three rivers in Asia.\nName three rivers in Asia!\nSum 2 and 3.\n")
    other = tmp_path / "old.txt"
    other.write_text("Sum 2 and 3\n")
    out = tmp_path / "kept.txt"
    proc = run([str(src), "--out", str(out), "--against", str(other), "-q"], child_env)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "Name three rivers in Asia.\n"
    assert "kept 1, rejected 2" in proc.stdout


def test_nested_field_of_openai_rows(tmp_path, child_env):
    src = tmp_path / "chat.jsonl"

    def row(system, user):
        return (
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": "ok"},
                    ]
                }
            )
            + "\n"
        )

    src.write_text(
        row("You are terse.", "List three prime numbers")
        + row("You are verbose and kind.", "List three prime numbers")
        + row("You are terse.", "Describe the water cycle")
    )
    out = tmp_path / "kept.jsonl"
    proc = run(
        [str(src), "--out", str(out), "--field", "messages[role=user].content", "-q"], child_env
    )
    assert proc.returncode == 0, proc.stderr
    kept = [json.loads(line)["messages"][1]["content"] for line in out.read_text().splitlines()]
    assert kept == ["List three prime numbers", "Describe the water cycle"]


def test_field_paths():
    row = {"a": {"b": [{"k": "x", "v": "first"}, {"k": "y", "v": "second"}]}}
    assert extract(row, parse_field_path("a.b.1.v")) == "second"
    assert extract(row, parse_field_path("a.b[0].v")) == "first"
    assert extract(row, parse_field_path("a.b[k=y].v")) == "second"
    with pytest.raises(KeyError):
        extract(row, parse_field_path("a.b[k=z].v"))
    with pytest.raises(DedupeError):
        parse_field_path("a..[")


def test_decisions_equal_a_plain_reference_on_the_shared_corpus():
    lines = shared_file("short_texts_50k.txt").read_text().splitlines()[:2500]
    index, kept_tokens = RougeIndex(), []
    for line in lines:
        tokens = rouge_tokenize(line)
        reference = [rouge_l_f(tokens, k) for k in kept_tokens]
        best = max(reference, default=0.0)
        score, nearest = index.nearest_above(line, 0.7)
        assert index.is_novel(line, 0.7) == (best <= 0.7)
        if best > 0.7:
            assert score == best and nearest == reference.index(best)
        else:
            assert nearest is None
            index.add(line)
            kept_tokens.append(tokens)


def test_a_bad_option_is_named_by_its_flag(tmp_path, child_env):
    src = tmp_path / "in.txt"
    src.write_text("one line\n")
    with pytest.raises(DedupeError) as err:
        dedupe(src, tmp_path / "out.txt", threshold=1.5)
    assert (err.value.param, str(err.value)) == ("threshold", "threshold: must be in [0, 1]")
    proc = run([str(src), "--out", str(tmp_path / "out.txt"), "--threshold", "1.5"], child_env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --threshold: must be in [0, 1]"
    proc = run([str(src), "--out", str(tmp_path / "out.txt"), "--field", "a..["], child_env)
    assert proc.stderr.strip() == "error: --field: cannot read 'a..[' at position 4"


def test_workers_write_the_same_files_as_one_process_on_real_lines(tmp_path, child_env):
    lines = shared_file("package_summaries_954k.txt").open(encoding="utf-8")
    head = [line for _, line in zip(range(3500), lines, strict=False)]
    old, src = tmp_path / "old.txt", tmp_path / "in.txt"
    old.write_text("".join(head[:500]))
    src.write_text("".join(head[500:]))
    outputs = {}
    for workers in ("1", "2"):
        kept, rej = tmp_path / f"kept{workers}.txt", tmp_path / f"rej{workers}.jsonl"
        args = [str(src), "--out", str(kept), "--against", str(old), "--workers", workers]
        proc = run([*args, "--rejected", str(rej), "-q"], child_env)
        assert proc.returncode == 0, proc.stderr
        assert f"({workers} process" in proc.stdout
        first = tmp_path / f"first{workers}.txt"  # without --rejected: the first hit decides
        proc = run([str(src), "--out", str(first), "--workers", workers, "-q"], child_env)
        assert proc.returncode == 0, proc.stderr
        outputs[workers] = (kept.read_bytes(), rej.read_bytes(), first.read_bytes())
    assert outputs["2"] == outputs["1"]
    kept_rows, rejected_rows, _ = outputs["1"]
    assert rejected_rows.count(b'"near_duplicate"') > 10  # the corpus does have near-duplicates
    assert len(kept_rows.splitlines()) + rejected_rows.count(b"\n") == 3000


def test_the_default_takes_the_usable_cores_from_parallel_min_rows_on(
    tmp_path, child_env, monkeypatch
):
    # Without --workers the command passes None: one process below PARALLEL_MIN_ROWS rows, the
    # usable cores from there (the threshold lowered here, so that the files stay small).
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("".join(f"row {i} of part {i % 97}\n" for i in range(300)))
    proc = run([str(src), "--out", str(out), "-q"], child_env)
    assert proc.returncode == 0, proc.stderr
    assert "read 300 rows in " in proc.stdout and "(1 process)" in proc.stdout
    monkeypatch.setattr(dedupe_module, "PARALLEL_MIN_ROWS", 300)
    assert dedupe(src, out, workers=None).workers == default_workers()
    lines = src.read_text().splitlines(keepends=True)
    src.write_text("".join(lines[:299]))
    assert dedupe(src, out, workers=None).workers == 1


def test_workers_keep_row_order_with_malformed_rows_across_batches(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = []
    for i in range(60):
        if i % 7 == 3:
            rows.append("not json\n")
        else:
            rows.append(
                json.dumps({"instruction": f"Write a poem about item {i % 9} please"}) + "\n"
            )
    src.write_text("".join(rows))
    results = []
    for workers in (1, 2, 3):
        kept, rej = tmp_path / f"kept{workers}.jsonl", tmp_path / f"rej{workers}.jsonl"
        summary = dedupe(src, kept, rejected=rej, workers=workers, batch_size=4)
        assert summary.workers == workers
        results.append((kept.read_text(), rej.read_text(), summary.kept, summary.malformed))
    assert results[1] == results[0] and results[2] == results[0]
    rejected = [json.loads(line) for line in results[0][1].splitlines()]
    assert [r["line"] for r in rejected] == sorted(r["line"] for r in rejected)
    assert {r["reason"] for r in rejected} == {"malformed", "near_duplicate"}


@pytest.mark.parametrize("value", ["-1", "257"])
def test_a_bad_number_of_workers_is_one_clear_error(tmp_path, child_env, value):
    src = tmp_path / "in.txt"
    src.write_text("one line\n")
    out = tmp_path / "out.txt"
    proc = run([str(src), "--out", str(out), "--workers", value], child_env)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: --workers: {value} is not a number of processes from 1 to 256"
        " (0: the usable cores)"
    )
    assert not out.exists()
