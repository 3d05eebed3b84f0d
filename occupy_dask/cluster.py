"""Where the graph runs, and progress while it does.

``Runner`` computes dask objects on the local threaded scheduler (the default) or on a
distributed ``Client`` when one is given; progress uses rich for local schedulers and futures
with ``as_completed`` under distributed (dask's ProgressBar shows nothing there).
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import dask
from dask.callbacks import Callback


class _RichCallback(Callback):
    """Task-count progress bar for the local schedulers."""

    def __init__(self, progress, label: str):
        super().__init__()
        self._progress = progress
        self._label = label
        self._task = None

    def _start_state(self, dsk, state):
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._task = self._progress.add_task(self._label, total=max(total, 1))

    def _posttask(self, key, result, dsk, state, worker_id):
        self._progress.advance(self._task)

    def _finish(self, dsk, state, errored):
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[self._task].total)


@dataclass
class Runner:
    """Computes dask objects, with progress on a terminal unless ``quiet``; records stage times."""

    client: object = None
    quiet: bool = False
    timings: list[tuple[str, float]] = field(default_factory=list)

    def _progress(self):
        if self.quiet or not sys.stderr.isatty():
            return None
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        return Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            transient=False,
        )

    def __call__(self, *objs, label: str = "compute"):
        start = time.perf_counter()
        try:
            if self.client is not None:
                return self._distributed(objs, label)
            progress = self._progress()
            if progress is None:
                return dask.compute(*objs, scheduler="threads")
            with progress, _RichCallback(progress, label):
                return dask.compute(*objs, scheduler="threads")
        finally:
            self.timings.append((label, time.perf_counter() - start))

    def _distributed(self, objs, label):
        from distributed import as_completed

        futures = self.client.compute(list(objs))
        progress = self._progress()
        with progress if progress is not None else nullcontext():
            task = progress.add_task(label, total=len(futures)) if progress is not None else None
            for _ in as_completed(futures):
                if progress is not None:
                    progress.advance(task)
        return tuple(f.result() for f in futures)
