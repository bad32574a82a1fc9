"""Where the SQL lives: in selfgen/store and nowhere else, and the store depends on no stage."""

import json
import re
import subprocess
import sys

from conftest import ROOT

from selfgen.records import BEFORE_NOVELTY
from selfgen.store import sql

SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE |DELETE FROM|PRAGMA|CREATE TABLE|ALTER TABLE)")


def test_no_module_outside_the_store_contains_sql():
    package = ROOT / "selfgen"
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if package / "store" not in path.parents
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if SQL.search(line)
    ]
    assert found == []


def test_the_store_imports_no_stage_backend_or_interface():
    code = "import json, sys, selfgen.store; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    modules = json.loads(proc.stdout)
    forbidden = ("selfgen.stages", "selfgen.backends", "selfgen.loop", "selfgen.tui", "selfgen.cli")
    assert [m for m in modules if m.startswith(forbidden)] == []
    assert not {"typer", "textual", "rich"} & set(modules)


def test_the_shared_conditions_follow_the_records():
    for stage in BEFORE_NOVELTY:
        assert f"'{stage}'" in sql.PASSED_NOVELTY
    assert sql.PASSED_NOVELTY == "stage NOT IN ('parse', 'rules', 'rouge')"
    assert sql.SURPLUS == "(fate = 'rejected' AND reason = 'target_reached')"
