"""The built-in tools and the sandbox they run in."""

import hashlib
import json
import subprocess
import textwrap
import time

import pytest
from conftest import ROOT, selfgen_cmd

from selfgen.sandbox import ToolSandbox
from selfgen.seeds import load_tool_seeds
from selfgen.tooling import ToolError, load_tool_objects, tool_specs, validate_arguments

TOOLS = ROOT / "tools"


@pytest.fixture(scope="module")
def sandbox():
    with ToolSandbox(TOOLS, timeout_s=5) as box:
        yield box


@pytest.fixture(scope="module")
def specs():
    return tool_specs(TOOLS)


def test_builtin_tools_and_schemas(specs):
    assert set(specs) == {
        "calculator",
        "date_diff",
        "add_days",
        "weekday",
        "convert_units",
        "kb_search",
        "sql_query",
    }
    for spec in specs.values():
        assert spec.description and spec.parameters["type"] == "object"
        # Every string argument is bounded, so a constrained model cannot write forever.
        for prop in spec.parameters["properties"].values():
            if prop.get("type") == "string" and "enum" not in prop:
                assert "maxLength" in prop and "pattern" in prop


@pytest.mark.parametrize(
    "name,args,output",
    [
        ("calculator", {"expression": "17 * 23 + 4"}, "395"),
        ("calculator", {"expression": "7 / 2"}, "3.5"),
        ("date_diff", {"start": "2024-01-01", "end": "2024-03-01"}, "60 days"),
        ("add_days", {"start": "2024-02-27", "days": 3}, "2024-03-01 (Friday)"),
        ("weekday", {"day": "1969-07-20"}, "Sunday"),
        ("convert_units", {"value": 100, "from_unit": "C", "to_unit": "F"}, "212 F"),
        ("convert_units", {"value": 5, "from_unit": "km", "to_unit": "mi"}, "3.10686 mi"),
    ],
)
def test_tools_compute_real_results(sandbox, name, args, output):
    result = sandbox.call(name, args)
    assert result.ok and result.output == output


def test_kb_search_ranks_the_relevant_document_first(sandbox):
    out = sandbox.call("kb_search", {"query": "Mount Everest height", "k": 1}).output
    assert "Everest" in out and "8,849" in out
    kb = [json.loads(line) for line in (TOOLS / "data" / "kb.jsonl").read_text().splitlines()]
    assert len(kb) >= 30


def test_sql_query_reads(sandbox):
    out = sandbox.call("sql_query", {"query": "SELECT COUNT(*) AS n FROM products"}).output
    assert out.splitlines() == ["n", "20"]
    many = sandbox.call("sql_query", {"query": "SELECT * FROM orders"}).output
    assert len(many.splitlines()) == 1 + 20  # header + the row limit


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('echo hacked')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd').read()",
        "9**9**9",
        "2**100000",
        "(" * 60 + "1" + ")" * 60,
        "-" * 70 + "1",
        "1 if 1 else 2",
        "[1, 2, 3]",
    ],
)
def test_calculator_refuses_what_is_not_arithmetic(expression):
    # The tool's own evaluator refuses these whatever the schema says, and quickly.
    import sys
    from importlib import import_module

    sys.path.insert(0, str(TOOLS))
    try:
        calc = import_module("calculator")
    finally:
        sys.path.remove(str(TOOLS))
    started = time.perf_counter()
    with pytest.raises(calc.CalculatorError):
        calc.evaluate(expression)
    assert time.perf_counter() - started < 5  # a guard against hanging, not a timing claim


def test_calculator_schema_refuses_code_before_execution(specs):
    problem = validate_arguments(specs["calculator"], {"expression": "__import__('os')"})
    assert problem and "does not match" in problem


@pytest.mark.parametrize(
    "query",
    [
        "DROP TABLE products",
        "UPDATE products SET price = 0",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA writable_schema = 1",
        "SELECT 1; DROP TABLE products",
        "SELECT * FROM products; SELECT 1",
        "WITH x AS (SELECT 1) DELETE FROM products",
        "SELECT load_extension('x')",
    ],
)
def test_sql_query_refuses_writes_and_leaves_the_database_untouched(sandbox, query):
    db = TOOLS / "data" / "shop.sqlite"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    # Straight to the tool, past the schema: the tool itself must refuse.
    result = sandbox.call("sql_query", {"query": query})
    assert not result.ok
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


@pytest.fixture
def bad_tools(tmp_path):
    (tmp_path / "bad.py").write_text(
        textwrap.dedent('''
        from langchain_core.tools import tool

        @tool
        def spin(seconds: int) -> str:
            """Loop forever."""
            while True:
                pass

        @tool
        def hog(megabytes: int) -> str:
            """Allocate without bound."""
            chunks = []
            while True:
                chunks.append(bytearray(megabytes * 2**20))

        @tool
        def crash(code: int) -> str:
            """Die."""
            import os
            os._exit(code)

        @tool
        def echo(text: str) -> str:
            """Echo."""
            return text
    ''')
    )
    return tmp_path


def test_a_tool_that_loops_forever_is_killed_at_the_timeout(bad_tools):
    with ToolSandbox(bad_tools, timeout_s=1.0) as box:
        result = box.call("spin", {"seconds": 1})
        assert not result.ok and result.error == "timed out after 1 s"
        assert box.call("echo", {"text": "still here"}).output == "still here"


def test_a_tool_that_allocates_without_bound_hits_the_memory_limit(bad_tools):
    with ToolSandbox(bad_tools, timeout_s=30, memory_mb=128) as box:
        result = box.call("hog", {"megabytes": 16})
        assert not result.ok and result.error == "memory limit (128 MiB) exceeded"
        assert box.call("echo", {"text": "fresh worker"}).output == "fresh worker"


def test_a_crashing_tool_is_a_failed_call(bad_tools):
    with ToolSandbox(bad_tools, timeout_s=5) as box:
        result = box.call("crash", {"code": 3})
        assert not result.ok and result.error == "the tool process crashed (exit code 3)"
        assert box.call("echo", {"text": "again"}).ok


def test_tools_folder_errors(tmp_path):
    with pytest.raises(ToolError, match="no such folder"):
        load_tool_objects(tmp_path / "none")
    (tmp_path / "broken.py").write_text("import nonexistent_module_xyz\n")
    with pytest.raises(ToolError, match="broken.py: cannot import"):
        load_tool_objects(tmp_path)


def test_tool_seeds_validate_and_reproduce(sandbox, specs):
    seeds = load_tool_seeds(ROOT / "seeds" / "tool_seed_tasks.jsonl")
    per_tool = {}
    for seed in seeds:
        for call in seed.calls:
            per_tool[call.name] = per_tool.get(call.name, 0) + 1
            assert validate_arguments(specs[call.name], call.arguments) is None
            assert sandbox.call(call.name, call.arguments).ok
    assert sum(len(s.calls) == 2 for s in seeds) >= 5
    assert sum(not s.calls for s in seeds) >= 3
    assert all(
        per_tool.get(t, 0) >= 5 for t in ("calculator", "convert_units", "kb_search", "sql_query")
    )
    assert sum(per_tool.get(t, 0) for t in ("date_diff", "add_days", "weekday")) >= 5


def test_tools_commands(child_env):
    def run(*args):
        return subprocess.run(
            [*selfgen_cmd(), "tools", *args],
            capture_output=True,
            text=True,
            env=child_env,
            cwd=ROOT,
            timeout=120,
        )

    listed = json.loads(run("list", "--json").stdout)
    assert {t["function"]["name"] for t in listed} >= {"calculator", "sql_query"}
    assert run("call", "calculator", '{"expression": "2 + 2"}').stdout.strip() == "4"
    bad = run("call", "calculator", '{"expression": "os.system(1)"}')
    assert bad.returncode == 2 and "does not match" in bad.stderr and "Traceback" not in bad.stderr
    unknown = run("call", "nope", "{}")
    assert unknown.returncode == 2 and "unknown tool 'nope'" in unknown.stderr
