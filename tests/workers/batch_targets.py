"""Worker targets for the batcher tests (module-level, so workers can import them).

The targets report what their handles saw in files under ``out_dir``; a file the
test waits for is written whole and then renamed into place, so it is never read
half-written. Acknowledgements of the PostgreSQL tests are appended as they come
(line-buffered), so what a SIGKILLed worker was told survives it.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from concurrent.futures import Future
from typing import Any

import lessor
from lessor.errors import LessorError

POLL = 0.005  # seconds between looks at a file the test creates
RESULT_WAIT = 60.0  # seconds a worker waits for one Future (the test's own bounds are shorter)


def _write(out_dir: str, name: str, data: Any) -> None:
    """``<out_dir>/<name>`` as JSON, in place at once (written aside, then renamed)."""
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "w") as out:
        json.dump(data, out)
    os.replace(path + ".tmp", path)


def _wait_for(path: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def _outcome(i: Any, future: Future[Any]) -> list[Any]:
    """``[i, "ok", result]`` or ``[i, "err", class, error_type, text]``."""
    try:
        return [i, "ok", future.result(timeout=RESULT_WAIT)]
    except Exception as exc:
        return [i, "err", type(exc).__name__, getattr(exc, "error_type", ""), str(exc)]


# -- the original targets (kept: others may use them) ------------------------------------


def submit_range(batcher: str, start: int, stop: int, out_dir: str) -> None:
    """Submit ``start..stop``; write each acknowledged item (its result came back) to a file."""
    handle = lessor.connect().batcher(batcher)
    futures = [(i, handle.submit(i)) for i in range(start, stop)]
    acked, failed = [], []
    for i, future in futures:
        try:
            acked.append(f"{i} {future.result(timeout=60)!r}")
        except Exception as exc:
            failed.append(f"{i} {type(exc).__name__}: {exc}")
    with open(os.path.join(out_dir, f"{start}.acked"), "w") as out:
        out.write("\n".join(acked))
    with open(os.path.join(out_dir, f"{start}.failed"), "w") as out:
        out.write("\n".join(failed))


def time_submits(batcher: str, n: int, out_dir: str) -> None:
    handle = lessor.connect().batcher(batcher)
    began = time.perf_counter()
    futures = handle.submit_many(range(n)) if n < 0 else [handle.submit(i) for i in range(n)]
    submitted = time.perf_counter() - began
    for future in futures:
        future.result(timeout=60)
    with open(os.path.join(out_dir, f"{os.getpid()}.time"), "w") as out:
        out.write(f"{submitted} {time.perf_counter() - began}")


def echo(items: list[Any]) -> list[Any]:
    return [("done", item) for item in items]


# -- tests/e2e/test_batch_workers.py -----------------------------------------------------


def submit_tagged(batcher: str, out_dir: str, n: int) -> None:
    """Submit ``[tag, i]`` for i in 0..n-1, one ``submit()`` each; the tag is this
    worker's pid. Write ``<tag>.json``: the frames this process sent meanwhile and
    every item's outcome (see :func:`_outcome`)."""
    client = lessor.connect()
    handle = client.batcher(batcher)
    tag = os.getpid()
    frames = client.frames_sent
    futures = [(i, handle.submit([tag, i])) for i in range(n)]
    outcomes = [_outcome(i, f) for i, f in futures]
    _write(out_dir, f"{tag}.json", {
        "tag": tag, "n": n, "frames": client.frames_sent - frames, "outcomes": outcomes,
    })  # fmt: skip


def misuse(batcher: str, out_dir: str) -> None:
    """What a worker may get wrong, and what it looks up: writes ``misuse.json``.

    Items are ``[kind, n]``. Between two good submits: an item msgpack cannot encode,
    an item over the frame limit, and a submit_many with one bad item among good ones
    (``"many"``, which must never reach the processor). Then five puts the processor
    fails (``"put-fail"``), a flush (the batcher would hold the items far longer:
    what flush returned, how long it took, which Futures were done by then), and
    lookups of batchers that do not exist here.
    """
    client = lessor.connect()
    handle = client.batcher(batcher)
    out: dict[str, Any] = {}

    def refused(fn: Any) -> list[Any]:
        before = handle.outstanding
        try:
            fn()
        except Exception as exc:
            return [type(exc).__name__, str(exc), before, handle.outstanding]
        return ["nothing raised", "", before, handle.outstanding]

    first = handle.submit(["good", 1])
    out["object"] = refused(lambda: handle.submit(object()))
    out["huge"] = refused(lambda: handle.submit(["huge", b"x" * (600 * 1024)]))
    out["many"] = refused(lambda: handle.submit_many([["many", 0], range(2), ["many", 2]]))
    second = handle.submit(["good", 2])
    for k in range(5):
        handle.put(["put-fail", k])
    began = time.monotonic()
    out["flush"] = handle.flush(timeout=30)
    out["flush_s"] = time.monotonic() - began
    out["done_at_flush"] = [first.done(), second.done()]
    out["good"] = [_outcome(1, first), _outcome(2, second)]
    out["put_errors"] = handle.put_errors
    out["outstanding"] = handle.outstanding
    for name in ("nope", "late"):
        try:
            client.batcher(name)
            out[name] = "found"
        except LessorError as exc:
            out[name] = [type(exc).__name__, str(exc)]
    _write(out_dir, "misuse.json", out)


def submit_and_hang(batcher: str, out_dir: str, n: int) -> None:
    """Submit ``["doomed", i]`` for i in 0..n-1, write ``<pid>.submitted``, and wait for
    the SIGKILL the test sends (never for the results)."""
    handle = lessor.connect().batcher(batcher)
    futures = [handle.submit(["doomed", i]) for i in range(n)]
    _write(out_dir, f"{os.getpid()}.submitted", len(futures))
    threading.Event().wait(120)  # until SIGKILL (a bound, so a broken test ends anyway)


def flood(batcher: str, out_dir: str, n: int, payload: int) -> None:
    """Submit n items ``[i, <payload bytes>]`` as fast as the handle lets us, keeping no
    Future: each counts its outcome in a callback. Write ``<pid>.flood`` with the
    counts, the most items this handle had without an outcome, and the time taken."""
    handle = lessor.connect().batcher(batcher)
    lock = threading.Lock()
    counts = {"ok": 0, "err": 0}
    errors: list[str] = []
    all_done = threading.Event()

    def count(future: Future[Any]) -> None:
        with lock:
            if future.exception() is None:
                counts["ok"] += 1
            else:
                counts["err"] += 1
                if len(errors) < 5:
                    errors.append(repr(future.exception()))
            if counts["ok"] + counts["err"] == n:
                all_done.set()

    blob = b"x" * payload
    most = 0
    began = time.monotonic()
    for i in range(n):
        handle.submit([i, blob]).add_done_callback(count)
        if i % 256 == 0:
            most = max(most, handle.outstanding)
    submitted = time.monotonic() - began
    finished = all_done.wait(RESULT_WAIT * 2)
    _write(out_dir, f"{os.getpid()}.flood", {
        "ok": counts["ok"], "err": counts["err"], "errors": errors, "finished": finished,
        "most_outstanding": most, "submitted_s": submitted, "took_s": time.monotonic() - began,
    })  # fmt: skip


def crowd(batcher: str, out_dir: str, n: int, timeout: float, extra_timeout: float) -> None:
    """Submit n items (``timeout`` each), then one more with ``extra_timeout``, which
    finds this handle's window full: write ``<pid>.refused`` with what that raised,
    then, once every Future has its outcome, ``<pid>.json`` with the outcomes."""
    handle = lessor.connect().batcher(batcher)
    tag = os.getpid()
    futures = [handle.submit([tag, i], timeout=timeout) for i in range(n)]
    began = time.monotonic()
    try:
        handle.submit([tag, n], timeout=extra_timeout)
        refused: list[Any] = ["nothing raised", ""]
    except Exception as exc:
        refused = [type(exc).__name__, str(exc)]
    _write(out_dir, f"{tag}.refused", [*refused, time.monotonic() - began])
    _write(out_dir, f"{tag}.json", [_outcome(i, f) for i, f in enumerate(futures)])


def big_results(batcher: str, out_dir: str, n: int) -> None:
    """Submit n items at once (one frame, if they fit); write ``big.json`` with their
    outcomes (the processor answers each with a few KiB)."""
    handle = lessor.connect().batcher(batcher)
    futures = handle.submit_many([["big", i] for i in range(n)])
    outcomes = [_outcome(i, f) for i, f in enumerate(futures)]
    for o in outcomes:
        if o[1] == "ok":
            o[2] = len(o[2])  # the length will do
    _write(out_dir, "big.json", outcomes)


# -- tests/e2e/test_batch_postgres.py ----------------------------------------------------


def submit_rows(
    batcher: str, out_dir: str, worker: int, ids: list[int], poison: list[int], marker_at: int,
    wait: float = 40.0,
) -> None:  # fmt: skip
    """Submit one row ``[id, worker, payload]`` per id (payload "poison" for the ids in
    ``poison``, which the table's CHECK refuses), one ``submit()`` each.

    ``w<worker>.pid`` holds this process's pid. Each outcome is appended to
    ``w<worker>.log`` as it arrives: ``a <id>`` (acknowledged) or ``e <id> <class>
    <error_type>``. Once ``marker_at`` ids are acknowledged ``w<worker>.marker``
    appears (the test may kill the worker then: it is mid-run, answered and still
    submitting). Once every Future has its outcome (or ``wait`` seconds after the last
    submit), ``w<worker>.done`` holds the counts, and what the handle still waits for.
    """
    _write(out_dir, f"w{worker}.pid", os.getpid())
    handle = lessor.connect().batcher(batcher)
    lock = threading.Lock()
    log = open(os.path.join(out_dir, f"w{worker}.log"), "a", buffering=1)  # noqa: SIM115
    counts = {"a": 0, "e": 0}
    answered: set[int] = set()
    all_done = threading.Event()
    bad = set(poison)

    def record(row_id: int, future: Future[Any]) -> None:
        exc = future.exception()
        if exc is None:
            line = f"a {row_id}\n"
        else:
            kind = getattr(exc, "error_type", "") or "-"
            line = f"e {row_id} {type(exc).__name__} {kind}\n"
        with lock:
            log.write(line)
            answered.add(row_id)
            counts[line[0]] += 1
            if line[0] == "a" and counts["a"] == marker_at:
                _write(out_dir, f"w{worker}.marker", marker_at)
            if counts["a"] + counts["e"] == len(ids):
                all_done.set()

    for row_id in ids:
        row = [row_id, worker, "poison" if row_id in bad else f"row {row_id}"]
        try:
            future = handle.submit(row)
        except LessorError as exc:  # refused at the door (Backpressure): an error too
            future = Future()
            future.set_exception(exc)
        future.add_done_callback(functools.partial(record, row_id))
    finished = all_done.wait(wait)
    with lock:
        log.close()
        done: dict[str, Any] = {"finished": finished, **counts}
        if not finished:  # what the handle still waits for, to say why
            done["unanswered"] = sorted(set(ids) - answered)[:20]
            done["outstanding"] = handle.outstanding
            done["open"] = sorted(handle._open.items())[:20]
            done["retrying"] = len(handle._retry)
        _write(out_dir, f"w{worker}.done", done)
