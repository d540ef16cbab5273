"""The CLI's progress lines: counted stages show count and ETA, indeterminate ones a spinner, all stop when done."""

from __future__ import annotations

import io

from rich.console import Console

from edgeprune.progress import RichReporter, active_reporter


def reporter() -> tuple[RichReporter, io.StringIO]:
    out = io.StringIO()
    return RichReporter(console=Console(file=out, width=120, force_terminal=False)), out


def task(rep: RichReporter, description: str):
    return next(t for t in rep.progress.tasks if t.description.startswith(description))


def test_indeterminate_stage_stops_when_done_and_never_shows_a_count():
    rep, out = reporter()
    with rep:
        rep.stage("structure", None)
        rep.done("structure")
        probe = task(rep, "probing")
        assert probe.finished and probe.stop_time is not None  # the clock stopped with the stage
        rep.stage("scores", None)
        scores = task(rep, "scoring")
        assert not scores.finished
    assert scores.finished  # leaving the block ends what is still open
    assert "/?" not in out.getvalue() and "0/1" not in out.getvalue()


def test_counted_stage_shows_count_detail_and_finishes_at_its_total():
    rep, out = reporter()
    with rep:
        update = rep.stage("train", 10)
        for step in range(1, 5):
            update({"progress": step, "detail": "epoch 1/3"})
        assert not task(rep, "training").finished
        rep.done("train")
        train = task(rep, "training")
        assert train.finished and train.completed == 10
    assert "10/10" in out.getvalue() and "(epoch 1/3)" in out.getvalue()


def test_every_line_of_a_repeated_stage_ends_with_done():
    rep, _ = reporter()
    with rep:
        rep.stage("cells", 4)
        rep.stage("cells")  # a second round whose size is not known yet
        rep.done("cells")
        assert all(t.finished for t in rep.progress.tasks)


def test_active_reporter_is_the_enclosing_block_else_silent():
    assert active_reporter().progress is None
    rep, _ = reporter()
    with rep:
        assert active_reporter() is rep
    assert active_reporter() is not rep
    assert active_reporter().stage("train", 3)({"progress": 1}) is None  # silent: draws nothing, raises nothing


def test_every_stage_the_library_reports_has_a_label():
    """A bar's text is its label; a stage without one shows its bare internal name (e.g. `grow`)."""
    import re
    from pathlib import Path

    import edgeprune
    from edgeprune.progress import LABELS

    root = Path(edgeprune.__file__).parent
    used = {m for path in root.rglob("*.py") for m in re.findall(r'\.stage\("([^"]+)"', path.read_text())}
    assert used and used <= set(LABELS), sorted(used - set(LABELS))
