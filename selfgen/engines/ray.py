"""Spread a run's generation over a Ray cluster (`selfgen run --engine ray`).

:class:`RayBackend` is a backend like any other: the loop submits requests and gets one future
per request. Behind it, Ray actors each hold their own inner backend, built by name with
:func:`get_backend` (llama.cpp on CPU nodes, vLLM with one GPU each, an OpenAI-compatible
client), and answer the requests handed to them. The rule filters, the ROUGE-L index and the
run store stay in this process, the one writer, so a Ray run stores exactly what a local run
stores: every request carries its own seed, and a backend's answer depends only on the request,
never on the worker that ran it.

Scheduling. A worker holds one piece of work at a time, so a worker that finishes early takes
the next requests instead of leaving them queued behind a slow one. A backend that answers one
request at a time (llama.cpp) is handed single requests; a backend that batches (vLLM, a server
client) is handed an even share of everything waiting, since a larger batch costs it little
more than a small one.

Failures. When a worker dies (its process or its node), the requests it held go back to the
front of the queue for the other workers, and a new worker starts in its place. Each request's
answer is taken once, so nothing is doubled. Ray's own actor restarts with task retries would
instead hold the dead worker's requests until the restarted worker has loaded its model again.

Why not `ray.data.llm`: its processors push one Ray Dataset through engine replicas that are
started when the dataset executes and stopped when it is done. The loop's work is a chain of
small batches, each depending on the answers to the one before (a round's prompts on the pool
after de-duplication, instances on classification, each tool-call turn on the tool's output),
so every batch would start the engines and load the model again. Workers that keep their model
for the whole run avoid that, and also run the llama.cpp and server backends.

Log-probabilities. `continuation_loss` splits its requests into one contiguous share per
ready worker and hands each share to a worker's backend as it is (a worker answers it between
its generation work, as Ray runs one method of an actor at a time); a worker that dies passes
its share to another. The inner backend's CapabilityError reaches the caller as itself.

Only this module imports Ray, inside functions: `import selfgen` never does.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from selfgen.backends.base import (
    Backend,
    BackendError,
    CapabilityError,
    Completion,
    ContinuationLoss,
    GenerationRequest,
    LossRequest,
    check_options,
    get_backend,
)

# Answers are a few kilobytes; Ray's default object store (30% of memory) is sized for data
# pipelines. Applies only to a Ray instance this process starts.
OBJECT_STORE_BYTES = 128 * 1024**2
# How long a worker may take to load its backend (vLLM loading a large model takes minutes)
# before the run stops instead of waiting for a worker the cluster cannot place.
START_TIMEOUT_S = 900.0


def worker_resources(backend: str, options: Mapping[str, Any]) -> dict[str, float]:
    """What one worker reserves on the cluster: its GPUs for vLLM, its threads for llama.cpp."""
    if backend == "vllm":
        # Ray makes exactly these GPUs visible to the worker; vLLM shards the model over them.
        return {"CPU": 1, "GPU": options.get("tensor_parallel_size") or 1}
    if backend == "llamacpp":
        return {"CPU": options.get("n_threads") or 1}
    return {"CPU": 1}


@dataclass(frozen=True)
class WorkerFailure:
    """A worker's backend raised BackendError; the message is meant for the user."""

    message: str
    capability: bool = False  # it was a CapabilityError

    def error(self) -> BackendError:
        return (CapabilityError if self.capability else BackendError)(self.message)


class GenerationWorker:
    """The body of one Ray actor: an inner backend, built once, answering lists of requests."""

    def __init__(self, backend: str, options: dict[str, Any]) -> None:
        self.backend: Backend | None = None
        self.error: tuple[str, str | None] | None = None
        try:
            self.backend = get_backend(backend, options)
        except BackendError as exc:
            # Reported by ready(): raised here, it would reach the driver as "the actor died".
            self.error = (exc.problem, exc.option)

    def ready(self) -> tuple[tuple[str, str | None] | None, dict[str, Any], bool, bool]:
        """(the error that stopped the backend, as its problem and option; its description;
        whether it batches; whether it supports continuation_loss)."""
        backend = self.backend
        if backend is None:
            return self.error, {}, False, False
        batches = backend.batches_natively or type(backend).submit is not Backend.submit
        return None, backend.describe(), batches, backend.supports_continuation_loss

    def generate(self, requests: list[GenerationRequest]) -> list[Completion] | WorkerFailure:
        assert self.backend is not None, "the driver sends work only after ready()"
        try:
            return self.backend.generate(requests)
        except BackendError as exc:
            return WorkerFailure(str(exc))

    def continuation_loss(
        self, requests: list[LossRequest]
    ) -> list[ContinuationLoss] | WorkerFailure:
        assert self.backend is not None, "the driver sends work only after ready()"
        try:
            return self.backend.continuation_loss(requests)
        except BackendError as exc:
            return WorkerFailure(str(exc), capability=isinstance(exc, CapabilityError))


Item = tuple[GenerationRequest, Future[Completion]]
LossShare = tuple[list[LossRequest], Future[list[ContinuationLoss]]]


@dataclass(eq=False)
class _Worker:
    actor: Any
    ready: bool = False
    work: list[Item] = field(default_factory=list)  # the requests it is answering now
    shares: list[LossShare] = field(default_factory=list)  # continuation_loss shares sent to it


class RayBackend(Backend):
    """Runs `backend` (a backend name, with its `options`) on `workers` Ray actors.

    The options are checked here, as :func:`get_backend` checks them, before Ray starts. An
    error about a setting of the engine itself names it in `option` (`workers`,
    `ray_address`, `engine`). `address` is a Ray cluster ("auto", "HOST:6379",
    "ray://HOST:10001"); None starts a local Ray instance, stopped again by :meth:`close`.
    `workers=None` starts as many as the cluster has room for. After `max_replacements` dead
    workers the run stops with an error.
    """

    name = "ray"

    def __init__(
        self,
        backend: str,
        options: Mapping[str, Any],
        *,
        workers: int | None = None,
        address: str | None = None,
        max_replacements: int | None = None,
        notify: Callable[[str], None] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        check_options(backend, options)
        self.inner = backend
        self.options = dict(options)
        if backend == "llamacpp":
            # One thread per worker unless told otherwise: Ray places workers by CPU.
            self.options["n_threads"] = self.options.get("n_threads") or 1
        self.resources = worker_resources(backend, self.options)
        self.notify = notify or _print_notice
        self.start_timeout_s = start_timeout_s
        self.replacements = 0
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._todo: deque[Item] = deque()
        self._loss_todo: deque[LossShare] = deque()
        self._workers: list[_Worker] = []
        self._failed: str | None = None
        self._thread: threading.Thread | None = None
        self._ray = _import_ray()
        self._owns_ray = _connect(self._ray, address)
        try:
            count = self._plan(workers)
            self.max_replacements = 2 * count + 2 if max_replacements is None else max_replacements
            self._actor_class = self._ray.remote(
                num_cpus=self.resources.get("CPU", 0), num_gpus=self.resources.get("GPU", 0)
            )(GenerationWorker)
            self._start(count)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._dispatch, name="selfgen-ray", daemon=True)
        self._thread.start()

    def _plan(self, workers: int | None) -> int:
        """How many workers to start; refuses more than the cluster can place."""
        total = self._ray.cluster_resources()
        fits = min(int(total.get(k, 0) // v) for k, v in self.resources.items())
        count = fits if workers is None else workers
        if count < 1 or count > fits:
            need = " and ".join(f"{v:g} {k}" for k, v in self.resources.items())
            have = " and ".join(f"{total.get(k, 0):g} {k}" for k in self.resources)
            raise BackendError(
                f"{max(count, 1)} {self.inner} worker(s) need {need} each,"
                f" and the Ray cluster has {have}",
                option="workers",
            )
        return count

    def _start(self, count: int) -> None:
        """Start the workers and wait until each has loaded its backend."""
        self._workers = [_Worker(self._spawn()) for _ in range(count)]
        try:
            answers = self._ray.get(
                [w.actor.ready.remote() for w in self._workers], timeout=self.start_timeout_s
            )
        except self._ray.exceptions.RayActorError as exc:
            raise BackendError(
                f"a Ray worker died while starting the {self.inner} backend ({_first_line(exc)})"
            ) from None
        except self._ray.exceptions.GetTimeoutError:
            raise BackendError(
                f"{count} {self.inner} worker(s) did not start within"
                f" {self.start_timeout_s:g} s; the cluster may have no free"
                f" {' and '.join(self.resources)} for them (see `ray status`)",
                option="workers",
            ) from None
        for worker, (error, _, _, _) in zip(self._workers, answers, strict=True):
            if error:
                raise _on_a_worker(error)
            worker.ready = True
        _, self.info, self.batches, self.supports_continuation_loss = answers[0]

    def _spawn(self) -> Any:
        return self._actor_class.remote(self.inner, self.options)

    def describe(self) -> dict[str, Any]:
        return {**self.info, "engine": "ray", "workers": len(self._workers)}

    def submit(self, requests: Sequence[GenerationRequest]) -> list[Future[Completion]]:
        futures: list[Future[Completion]] = [Future() for _ in requests]
        if futures:
            self._events.put(("work", list(zip(requests, futures, strict=True))))
        return futures

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [future.result() for future in self.submit(requests)]

    def continuation_loss(self, requests: Sequence[LossRequest]) -> list[ContinuationLoss]:
        """The workers' backends' answer, in order: one contiguous share per worker."""
        requests = list(requests)
        if not requests:
            return []
        if self._thread is None:
            raise BackendError("the Ray engine was closed")
        count = min(len(self._workers) or 1, len(requests))
        size = math.ceil(len(requests) / count)
        shares: list[LossShare] = [
            (requests[i : i + size], Future()) for i in range(0, len(requests), size)
        ]
        for share in shares:
            self._events.put(("loss", share))
        return [loss for _, future in shares for loss in future.result()]

    # Everything below runs on the dispatch thread, the only one that touches the queue, the
    # workers and the futures; Ray's callbacks and `submit` only post events to it.

    def _dispatch(self) -> None:
        while True:
            event = self._events.get()
            if event[0] == "stop":
                return
            try:
                if event[0] == "work":
                    self._todo.extend(event[1])
                elif event[0] == "done":
                    self._finished(event[1], event[2])
                elif event[0] == "ready":
                    self._started(event[1], event[2])
                elif event[0] == "late":
                    self._late(event[1])
                elif event[0] == "loss":
                    self._loss_todo.append(event[1])
                elif event[0] == "loss-done":
                    self._loss_finished(event[1], event[2], event[3])
                self._assign()
            except BackendError as exc:
                self._fail(str(exc))
            except Exception as exc:  # a bug here must not leave the loop waiting forever
                self._fail(f"the Ray engine failed ({type(exc).__name__}: {exc})")

    def _assign(self) -> None:
        """Hand queued requests to the idle workers, and loss shares to the least busy."""
        if self._failed is not None:
            self._fail(self._failed)
            return
        ready = [w for w in self._workers if w.ready]
        while self._loss_todo and ready:
            share = self._loss_todo.popleft()
            worker = min(ready, key=lambda w: len(w.shares) + bool(w.work))
            worker.shares.append(share)
            ref = worker.actor.continuation_loss.remote(share[0])
            ref.future().add_done_callback(
                lambda _, w=worker, r=ref, s=share: self._events.put(("loss-done", w, r, s))
            )
        idle = [w for w in self._workers if w.ready and not w.work]
        for i, worker in enumerate(idle):
            take = math.ceil(len(self._todo) / (len(idle) - i)) if self.batches else 1
            while self._todo and len(worker.work) < take:
                request, future = self._todo.popleft()
                # A request put back after its worker died is already running.
                if future.running() or future.set_running_or_notify_cancel():
                    worker.work.append((request, future))
            if not worker.work:
                return
            ref = worker.actor.generate.remote([request for request, _ in worker.work])
            self._when_done(ref, "done", worker)

    def _when_done(self, ref: Any, kind: str, worker: _Worker) -> None:
        ref.future().add_done_callback(lambda _: self._events.put((kind, worker, ref)))

    def _finished(self, worker: _Worker, ref: Any) -> None:
        if worker not in self._workers or not worker.work:
            return  # replaced or failed: what it held was requeued or answered with the error
        items, worker.work = worker.work, []
        try:
            out = self._ray.get(ref)
        except self._ray.exceptions.RayActorError as exc:
            self._replace(worker, exc, items)
            return
        except Exception as exc:  # the backend's own error, raised where a local run raises it
            for _, future in items:
                future.set_exception(exc)
            return
        if isinstance(out, WorkerFailure):
            for _, future in items:
                future.set_exception(out.error())
            return
        for (_, future), completion in zip(items, out, strict=True):
            future.set_result(completion)

    def _loss_finished(self, worker: _Worker, ref: Any, share: LossShare) -> None:
        if share not in worker.shares:
            return  # already failed with the engine
        worker.shares.remove(share)
        _, future = share
        try:
            out = self._ray.get(ref)
        except self._ray.exceptions.RayActorError as exc:
            self._loss_todo.appendleft(share)  # another worker answers it
            if worker in self._workers:
                self._replace(worker, exc, [])
            return
        except Exception as exc:
            future.set_exception(exc)
            return
        if isinstance(out, WorkerFailure):
            future.set_exception(out.error())
        else:
            future.set_result(out)

    def _started(self, worker: _Worker, ref: Any) -> None:
        if worker not in self._workers:
            return
        try:
            error, _, _, _ = self._ray.get(ref)
        except self._ray.exceptions.RayActorError as exc:
            self._replace(worker, exc, [])
            return
        if error:
            raise _on_a_worker(error)
        worker.ready = True

    def _replace(self, worker: _Worker, exc: Exception, items: list[Item]) -> None:
        """Put a dead worker's requests back at the front of the queue; start a new worker."""
        self._todo.extendleft(reversed(items))
        self._ray.kill(worker.actor)
        self.replacements += 1
        if self.replacements > self.max_replacements:
            raise BackendError(
                f"Ray workers keep dying ({self.replacements} so far; the last: {_first_line(exc)})"
            )
        self.notify(
            f"a Ray worker died ({_first_line(exc)}); its {len(items)} request(s) go to the "
            "other workers and a new worker starts"
        )
        new = _Worker(self._spawn())
        self._workers[self._workers.index(worker)] = new
        self._when_done(new.actor.ready.remote(), "ready", new)
        timer = threading.Timer(self.start_timeout_s, self._events.put, [("late", new)])
        timer.daemon = True
        timer.start()

    def _late(self, worker: _Worker) -> None:
        """A replacement has not started in time: stop the run if no worker is left."""
        if worker in self._workers and not worker.ready and not any(w.ready for w in self._workers):
            raise BackendError(
                f"no Ray worker is running: a replacement did not start within"
                f" {self.start_timeout_s:g} s (see `ray status`)"
            )

    def _fail(self, message: str) -> None:
        """Fail every request waiting or running, and every later one, with `message`."""
        self._failed = message
        for _, future in self._unanswered():
            if not future.done():
                future.set_exception(BackendError(message))
        self._drop_shares(message)

    def _drop_shares(self, message: str) -> None:
        """Fail every continuation_loss share waiting or sent with `message`."""
        shares = list(self._loss_todo) + [s for w in self._workers for s in w.shares]
        self._loss_todo.clear()
        for worker in self._workers:
            worker.shares = []
        for _, future in shares:
            if not future.done():
                future.set_exception(BackendError(message))

    def _unanswered(self) -> list[Item]:
        items = list(self._todo) + [item for w in self._workers for item in w.work]
        self._todo.clear()
        for worker in self._workers:
            worker.work = []
        return items

    def close(self) -> None:
        """Stop dispatching, fail what is unanswered, stop the workers, leave Ray."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._events.put(("stop",))
            thread.join()
        for _, future in self._unanswered():
            if not future.done():
                future.set_exception(BackendError("the Ray engine was closed"))
        self._drop_shares("the Ray engine was closed")
        for worker in self._workers:
            self._ray.kill(worker.actor)
        self._workers = []
        if self._owns_ray:
            self._owns_ray = False
            self._ray.shutdown()
        super().close()


def _on_a_worker(error: tuple[str, str | None]) -> BackendError:
    problem, option = error
    return BackendError(f"{problem} (on a Ray worker)", option=option)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendError(
            "the ray engine needs Ray: pip install 'selfgen[ray]'", option="engine"
        ) from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at `address`, or start a local Ray; True when this process did either."""
    if ray.is_initialized():
        return False  # code that embeds selfgen, or a test, has connected already
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        options.update(address="local", include_dashboard=False)
        options["object_store_memory"] = OBJECT_STORE_BYTES
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if address is None:
            raise BackendError(
                f"cannot start a local Ray ({_first_line(exc)})", option="engine"
            ) from None
        raise BackendError(
            f"cannot join Ray at {address} ({_first_line(exc)})", option="ray_address"
        ) from None
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _print_notice(message: str) -> None:
    print(f"selfgen: {message}", file=sys.stderr, flush=True)
