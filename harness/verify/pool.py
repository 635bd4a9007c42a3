"""Run check tasks on a few threads (torch releases the GIL: reading one layer overlaps computing
another) with at most ``2 * workers`` tasks in flight; findings are merged in task order."""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

WORKERS = max(1, min(2, os.cpu_count() or 1))


class LocalFindings:
    """Findings of one task, merged into the report in task order (workers never share state)."""

    def __init__(self):
        self.items = []

    def error(self, *a):
        self.items.append(("error", *a))

    def warning(self, *a):
        self.items.append(("warning", *a))

    def info(self, *a):
        self.items.append(("info", *a))


def bounded_map(ex, fn, items, window):
    q = deque()
    it = iter(items)
    for x in it:
        q.append(ex.submit(fn, x))
        if len(q) >= window:
            break
    while q:
        yield q.popleft().result()
        for x in it:
            q.append(ex.submit(fn, x))
            break


def run_tasks(tasks, fn, workers: int | None = None):
    """Yield ``fn(task)`` for every task, in order, computed on ``workers`` threads."""
    n_workers = workers or WORKERS
    if n_workers > 1 and len(tasks) > 1:
        with ThreadPoolExecutor(n_workers) as ex:
            yield from bounded_map(ex, fn, tasks, 2 * n_workers)
    else:
        for t in tasks:
            yield fn(t)
