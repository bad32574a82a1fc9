"""selfgen.io: the one JSONL reader (every defect named by file:line) and the one atomic writer."""

import json
import os

import pytest

from selfgen.io import (
    DataFileError,
    atomic_write,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)


def read(path, **kwargs):
    return list(read_jsonl(path, what="test file", **kwargs))


def test_rows_come_with_file_and_line_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \n{"b": "\xc3\xa9"}\r\n{"c": 3}')
    assert read(path) == [
        (f"{path}:1", {"a": 1}),
        (f"{path}:4", {"b": "é"}),
        (f"{path}:5", {"c": 3}),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": \n', ":2: not valid JSON (Expecting value at column 7)"),
        (b'{"a": 1}\n\n[1, 2]\n', ":3: expected a JSON object, got list"),
        (b'"text"\n', ":1: expected a JSON object, got string"),
        (b'{"a": 1}\n{"a": "\xff"}\n', ":2: not UTF-8 (invalid start byte at byte 8)"),
        (b"", ":1: the test file holds no things"),
        (b"\n  \n", ":1: the test file holds no things"),
    ],
)
def test_each_defect_is_one_error_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataFileError) as err:
        read(path, holds="things")
    assert str(err.value) == f"{path}{message}"


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataFileError, match=r"nope\.jsonl: no such test file$"):
        read(tmp_path / "nope.jsonl")
    with pytest.raises(DataFileError, match=r": cannot read test file \(Is a directory\)$"):
        read(tmp_path)


def test_the_callers_error_type_is_raised(tmp_path):
    class SeedError(DataFileError):
        pass

    with pytest.raises(SeedError):
        read(tmp_path / "nope.jsonl", error=SeedError)


def test_stopping_early_reads_no_further(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\nnot json\n')
    rows = read_jsonl(path, what="test file")
    assert next(rows)[1] == {"a": 1} and next(rows)[1] == {"a": 2}
    rows.close()  # the bad third line is never read


def test_atomic_writers_write_whole_files(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl_atomic(path, [{"a": "é"}, {"b": 2}]) == 2
    assert path.read_bytes() == '{"a": "é"}\n{"b": 2}\n'.encode()
    write_json_atomic(path, {"x": [1]})
    assert json.loads(path.read_text(encoding="utf-8")) == {"x": [1]}
    assert os.listdir(path.parent) == ["out.jsonl"]


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old contents\n")

    def rows():
        yield {"a": 1}
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        write_jsonl_atomic(path, rows())
    assert path.read_text() == "old contents\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]

    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:
        f.write("half of it")
        raise KeyboardInterrupt
    assert path.read_text() == "old contents\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        write_json_atomic(target, {"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["taken"]
