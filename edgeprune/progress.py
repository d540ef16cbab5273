"""Rich progress bars for long library calls, hidden under --quiet / --json.

A stage with a known total draws a bar, a count and an ETA; a stage without one (`total=None`, e.g. the
pruner's structure probe) draws a spinner and the elapsed time. Both stop the moment the stage is done, so a
finished line never keeps counting while the next stage runs.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Callable

LABELS = {"cells": "measuring table cells",
          "cold_probe": "timing the dense model's cells with weights from memory (cold)",
          "cold": "measuring cold table cells (weights from memory)", "variants": "building held-out variants",
          "models": "timing whole models (interleaved)", "structure": "probing the model's structure",
          "scores": "scoring channel groups", "measure": "measuring candidates on the device",
          "train": "training the example model", "teacher": "caching the teacher's outputs",
          "distill": "distilling into the pruned model", "validate": "running the bundles on the device",
          "sensitivity": "measuring what each cut costs (calibration loss)",
          "search": "searching whole candidates", "proxies": "scoring cuts by their proxies (TT-MPD)",
          "grow": "training while growing (FRAGrow)",
          "cells_again": "re-measuring table cells (the machine's state changed)",
          "adapt_teacher": "adapting the teacher's BatchNorm to the new domain (TT-MPD)",
          "fit_runs": "fitting g on real prune-and-fine-tune runs (TT-MPD)"}

_ACTIVE: ContextVar = ContextVar("edgeprune_reporter", default=None)


def active_reporter() -> "RichReporter":
    """The reporter of the innermost `with RichReporter(...)` block, else a silent one.

    Lets a library call draw its bar when a caller between it and the CLI does not pass a reporter down
    (the recipe's distill and validate stages).
    """
    return _ACTIVE.get() or RichReporter(enabled=False)


def _columns() -> list:
    """Status, label, bar, count, elapsed, ETA: the last three blank where they would be a guess."""
    from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, TextColumn
    from rich.text import Text

    class Status(SpinnerColumn):
        def render(self, task):
            return Text("✓", style="green") if task.finished else super().render(task)

    class Count(ProgressColumn):
        def render(self, task):
            if not task.fields.get("counted"):
                return Text("")
            total = "?" if task.total is None else f"{task.total:.0f}"
            return Text(f"{task.completed:.0f}/{total}", style="progress.download")

    class Elapsed(ProgressColumn):
        def render(self, task):
            seconds = task.finished_time if task.finished else task.elapsed
            return Text(_clock(seconds), style="progress.elapsed")

    class Eta(ProgressColumn):
        max_refresh = 0.5

        def render(self, task):
            if task.finished or not task.fields.get("counted") or task.time_remaining is None:
                return Text("")
            return Text(f"eta {_clock(task.time_remaining)}", style="progress.remaining")

    return [Status(), TextColumn("{task.description}"), BarColumn(), Count(), Elapsed(), Eta()]


def _clock(seconds: float | None) -> str:
    seconds = int(seconds or 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RichReporter:
    """The library's Reporter protocol (`stage`, `done`) as one rich progress line per stage."""

    def __init__(self, enabled: bool = True, console=None):
        self.enabled = enabled
        self.console = console
        self.progress = None
        self.tasks: dict[str, list] = {}
        self._token = None

    def __enter__(self) -> "RichReporter":
        if self.enabled:
            from rich.progress import Progress

            self.progress = Progress(*_columns(), console=self.console, transient=False)
            self.progress.start()
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)
        if self.progress is not None:
            for name in list(self.tasks):
                self.done(name)
            self.progress.stop()

    def stage(self, name: str, total: int | None = None) -> Callable[[dict], None]:
        """A new line for `name`; the returned callback takes {progress, total, detail} events."""
        if self.progress is None:
            return lambda event: None
        label = LABELS.get(name, name)
        task = self.progress.add_task(label, total=total, counted=total is not None)
        self.tasks.setdefault(name, []).append(task)

        def update(event: dict) -> None:
            changes = {}
            if event.get("total"):
                changes.update(total=event["total"], counted=True)
            if "progress" in event:
                changes["completed"] = event["progress"]
            if event.get("detail"):
                changes["description"] = f"{label} ({event['detail']})"
            self.progress.update(task, **changes)

        return update

    def done(self, name: str) -> None:
        """Every line of `name` ends now: bars fill, spinners become a tick, clocks stop."""
        if self.progress is None:
            return
        for task in self.tasks.pop(name, []):
            state = next(t for t in self.progress.tasks if t.id == task)
            if state.finished:
                continue
            if state.total is None:  # indeterminate: finish it as one unit of work
                self.progress.update(task, total=1, completed=1)
            else:
                self.progress.update(task, completed=state.total)
            self.progress.stop_task(task)
