"""`edgeprune distill` as a library call: pruned student + teacher + data -> a distilled pruned-model dir.

The teacher's outputs come from the teacher cache directory (built once, reused when current); `online=True`
runs the teacher every step instead (the baseline the cache is compared with). The student keeps its
architecture: the output is the same pruned-model format, with the distillation settings in provenance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import BadInputError

from .train import DistillOptions, DistillResult, train_student


@dataclass
class Distilled:
    result: DistillResult
    cache_dir: Path | None
    cache_reused: bool
    accuracy: dict  # {"student_before", "student_after", "teacher"} on the held-out split, when labelled
    provenance: dict


def split(samples, holdout: float, seed: int):
    """(train, held-out) split of labelled samples; unlabeled data is all for training."""
    import torch

    if samples.labels is None or holdout <= 0:
        return samples, None
    from edgeprune.data import Samples

    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
    cut = int(len(samples) * (1 - holdout))
    pick = lambda idx: Samples(samples.inputs[idx], samples.labels[idx], samples.source,  # noqa: E731
                               samples.preprocessing)
    return pick(order[:cut]), pick(order[cut:])


def distill_model(student_loaded, teacher_loaded, data: str, out: str | Path, *, options: DistillOptions,
                  cache_dir: str | Path | None = None, online: bool = False, holdout: float = 0.2,
                  force: bool = False, reporter=None) -> Distilled:
    """Distil `teacher_loaded` into `student_loaded` (a pruned-model LoadedModel) on `data`; save to `out`.

    `reporter` (default: the enclosing CLI block's) shows the teacher pass and the training steps.
    """
    from edgeprune.atomic import check_writable
    from edgeprune.data import load_samples
    from edgeprune.examples import accuracy
    from edgeprune.progress import active_reporter
    from edgeprune.pruning.checkpoint import load_pruned, save_pruned

    reporter = reporter or active_reporter()
    check_writable(out, force)
    if student_loaded.pruned_source is None:
        raise BadInputError(f"the student {student_loaded.spec} is not an edgeprune pruned-model directory",
                            "give the directory edgeprune prune wrote")
    if teacher_loaded.family != student_loaded.family:
        raise BadInputError(f"teacher ({teacher_loaded.family}) and student ({student_loaded.family}) differ in kind",
                            "distil from the model the student was pruned from")
    samples = load_samples(data, student_loaded.input_shape, student_loaded.family,
                           tokenizer_dir=teacher_loaded.spec if teacher_loaded.huggingface else None,
                           seq_len=student_loaded.seq_len)
    train, held = split(samples, holdout, options.seed)
    teacher, student = teacher_loaded.module.eval(), student_loaded.module
    acc = {}
    if held is not None:
        acc = {"teacher": accuracy(teacher, held), "student_before": accuracy(student, held)}
    cache = None
    if not online:
        from .cache import load_or_build

        cache_dir = Path(cache_dir) if cache_dir else Path(out).with_name(Path(out).name + ".teacher-cache")
        reporter.stage("teacher", None)
        cache = load_or_build(cache_dir, teacher, teacher_loaded.source_sha256, train, top_k=options.top_k,
                              temperature=options.temperature, batch_size=options.batch_size * 2)
        reporter.done("teacher")
    result = train_student(student, train, options, cache=cache, teacher=None if cache else teacher,
                           reporter=reporter)
    if held is not None:
        acc["student_after"] = accuracy(result.student, held)
    provenance = dict(student_loaded.provenance or {})
    provenance["distillation"] = {
        "teacher": {"spec": teacher_loaded.spec, "sha256": teacher_loaded.source_sha256},
        "data": {"source": samples.source, "n_train": len(train), "n_heldout": len(held) if held else 0,
                 "labelled": samples.labels is not None},
        "options": dataclasses.asdict(options), "mode": result.mode, "train_s": result.train_s,
        "teacher_s": result.teacher_s, "cache": str(cache_dir) if cache is not None else None,
        "cache_reused": bool(cache is not None and cache.reused), "losses": result.losses, "accuracy": acc}
    if "teacher" in acc:
        provenance["baseline_accuracy"] = acc["teacher"]
    _, section, _ = load_pruned(student_loaded.spec)
    save_pruned(out, result.student, student_loaded, section["widths"], provenance, force=force)
    return Distilled(result, cache_dir if cache is not None else None, bool(cache is not None and cache.reused), acc,
                     provenance)
