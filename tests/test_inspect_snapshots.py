"""What a person sees in `selfgen inspect`, pinned as SVG snapshots of the real app on the
fixture run (scripted model, real loop and tools, fixed times).

After a deliberate change of the screens: `python -m pytest tests/test_inspect_snapshots.py
--snapshot-update`, then look at the new files in tests/__snapshots__/.
"""

import shutil

import pytest
from conftest import ScriptedBackend
from inspect_fixtures import add_scores, fixture_run

from selfgen.backends.base import register_backend
from selfgen.store import RunStore
from selfgen.tui.app import InspectApp

SIZE = (130, 36)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    def scripted(reply):
        register_backend("scripted", lambda **_: ScriptedBackend(reply))

    return fixture_run(tmp_path_factory.mktemp("snapshots") / "run", scripted)


@pytest.fixture
def app(fixture_dir, tmp_path):
    store = RunStore.open(shutil.copytree(fixture_dir, tmp_path / "run"))
    yield InspectApp(store, "run")
    store.close()


@pytest.fixture
def scored_app(fixture_dir, tmp_path):
    """The fixture run with the quality scores of inspect_fixtures.FIXTURE_SCORES."""
    store = RunStore.open(shutil.copytree(fixture_dir, tmp_path / "run"))
    add_scores(store)
    yield InspectApp(store, "run")
    store.close()


def test_item_table(app, snap_compare):
    assert snap_compare(app, terminal_size=SIZE)


def test_task_detail(app, snap_compare):
    assert snap_compare(app, press=["enter"], terminal_size=SIZE)


def test_trace_detail(app, snap_compare):
    assert snap_compare(app, press=["down"] * 8 + ["enter"], terminal_size=SIZE)


def test_statistics(app, snap_compare):
    assert snap_compare(app, press=["s"], terminal_size=SIZE)


def test_keys(app, snap_compare):
    assert snap_compare(app, press=["question_mark"], terminal_size=SIZE)


def test_scored_item_table(scored_app, snap_compare):
    assert snap_compare(scored_app, terminal_size=SIZE)
