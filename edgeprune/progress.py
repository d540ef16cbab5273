"""Rich progress bars for long library calls, hidden under --quiet / --json."""

from __future__ import annotations

from typing import Callable

LABELS = {"cells": "measuring table cells", "variants": "building held-out variants",
          "models": "timing whole models (interleaved)"}


class RichReporter:
    """Implements the library's Reporter protocol (`stage`, `done`) with one bar per stage."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.progress = None
        self.tasks = {}

    def __enter__(self) -> "RichReporter":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), transient=False)
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def stage(self, name: str, total: int | None = None) -> Callable[[dict], None]:
        if self.progress is None:
            return lambda event: None
        task = self.progress.add_task(LABELS.get(name, name), total=total)
        self.tasks[name] = task

        def update(event: dict) -> None:
            if event.get("total"):
                self.progress.update(task, total=event["total"])
            if "progress" in event:
                self.progress.update(task, completed=event["progress"])

        return update

    def done(self, name: str) -> None:
        if self.progress is not None and name in self.tasks:
            task = self.tasks[name]
            total = self.progress.tasks[task].total
            if total is not None:
                self.progress.update(task, completed=total)
