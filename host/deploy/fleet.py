"""Many targets at once: a bounded thread pool, one outcome per target.

A failing target does not stop the others. Ctrl-C sets a shared cancel event:
every worker stops its remote agent (process group) and returns, then the
interrupt is raised again in the caller.
"""
import concurrent.futures
import threading
from typing import Callable, List, Optional, Sequence

from edgekit.contract.errors import EdgekitError
from .pipeline import DeployOutcome
from .targets import Target

DEFAULT_JOBS = 8
# How long Ctrl-C waits for workers to stop their remote processes.
CANCEL_GRACE_S = 30.0


def check_unique_names(targets: Sequence[Target]) -> None:
    seen = set()
    for t in targets:
        if t.name in seen:
            raise EdgekitError("target %r is listed twice" % t.name, "list each board once (their results would share a folder)")
        seen.add(t.name)


def run_fleet(
    targets: Sequence[Target],
    work: Callable[[Target, threading.Event], DeployOutcome],
    jobs: int = DEFAULT_JOBS,
    cancel: Optional[threading.Event] = None,
) -> List[DeployOutcome]:
    """Run ``work(target, cancel)`` for every target, at most ``jobs`` at a time; outcomes in target order."""
    check_unique_names(targets)
    if jobs < 1:
        raise EdgekitError("--jobs must be at least 1", "pass --jobs 1 or more")
    cancel = cancel or threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(jobs, max(1, len(targets))), thread_name_prefix="deploy")
    futures = [pool.submit(work, t, cancel) for t in targets]
    try:
        pending = set(futures)
        while pending:
            # Short waits keep the main thread responsive to Ctrl-C.
            _done, pending = concurrent.futures.wait(pending, timeout=0.2)
    except KeyboardInterrupt:
        cancel.set()
        for f in futures:
            f.cancel()  # those not started yet never start
        concurrent.futures.wait(futures, timeout=CANCEL_GRACE_S)
        pool.shutdown(wait=False)
        raise
    pool.shutdown(wait=True)
    outcomes = []
    for target, future in zip(targets, futures):
        exc = future.exception()
        if exc is not None:
            # A bug in one worker must not hide the others' results.
            outcomes.append(DeployOutcome(target=target, ok=False, error="internal error (%s: %s)" % (type(exc).__name__, exc), stage="failed"))
        else:
            outcomes.append(future.result())
    return outcomes
