"""The run store: one SQLite database per run, and the only code that speaks SQL.

- `schema`: the tables, as numbered migrations (never changed once released);
- `run_store`: :class:`RunStore`, what the loop writes and the commands read;
- `figures`: the aggregates of `selfgen stats`;
- `browse`: the paged queries of `selfgen inspect` (an :class:`Inspector` from
  :meth:`RunStore.inspector`);
- `sql`: the conditions several queries share (kept, passed novelty, surplus);
- `lock`: the lock that keeps a second run from writing a store (:class:`StoreLockedError`);
- `disk`: a full disk told apart from a broken store (:class:`DiskFullError`).

The store imports records and tooling, never a stage, a backend or a user interface.
"""

from selfgen.store.disk import DiskFullError
from selfgen.store.lock import LOCK_NAME, LockHolder, RunLock, StoreLockedError
from selfgen.store.run_store import (
    DB_NAME,
    GenerationRecord,
    RecordedCall,
    RoundRecord,
    RunStore,
    RunTotals,
    StoredTrace,
)
from selfgen.store.schema import (
    MIGRATIONS,
    StoreError,
    m001_initial,
    m002_tool_traces,
    m003_curation,
    m004_generation_errors,
    migrate,
)

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "DiskFullError",
    "LockHolder",
    "RunLock",
    "StoreLockedError",
    "MIGRATIONS",
    "GenerationRecord",
    "RecordedCall",
    "RoundRecord",
    "RunStore",
    "RunTotals",
    "StoreError",
    "StoredTrace",
    "m001_initial",
    "m002_tool_traces",
    "m003_curation",
    "m004_generation_errors",
    "migrate",
]
