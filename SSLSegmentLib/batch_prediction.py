"""Predict a list of cases into a folder: every case is tried, every failure is reported.

A bad case (unreadable, empty, NaN voxels...) does not stop the others; the report names each
failed case and its problem, and the command exits non-zero. Each case is checked against the
model's training domain (``domain``): a case far outside it is reported next to its confidence,
and its confidence is set to 0, so that "least confident first" (Slicer's suggestion of the
next case to correct) shows it first. Files are written through ``prediction_outputs``: never
over a file this tool did not write for the same model, unless ``overwrite``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data.cases import Case
from .data.labels import write_labelmap, write_segmentation
from .domain import domain_problems
from .errors import InputError, OutputError
from .fileio import atomic_write_json, read_json_object
from .model_file import Model
from .prediction_outputs import MARKER_FIELD, model_fingerprint, output_files, require_outputs_writable

OUT_OF_DOMAIN_CONFIDENCE = 0.0
"""The confidence of a case outside the training domain: the network's probabilities there say
nothing about whether it is right (its own value is kept in ``out_of_domain.json``)."""


@dataclass
class PredictionReport:
    """What one prediction run did: per case, the confidence (0 when out of domain), the
    domain problems, and the failures (case -> message)."""

    folder: Path
    scores: dict[str, float] = field(default_factory=dict)
    out_of_domain: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    bad_input_only: bool = True

    def failure_message(self) -> str:
        lines = [f"{len(self.failures)} of {len(self.failures) + len(self.scores)} case(s) could not be predicted "
                 f"(the others were written to {self.folder}):"]
        lines += [f"  {name}: {problem}" for name, problem in self.failures.items()]
        return "\n".join(lines)

    def domain_message(self) -> str:
        lines = [f"{len(self.out_of_domain)} case(s) lie far outside the images the model was trained on; "
                 "their confidence is set to 0 (check them first; see out_of_domain.json):"]
        lines += [f"  {name}: {'; '.join(entry['problems'])}" for name, entry in self.out_of_domain.items()]
        return "\n".join(lines)


def predict_to_folder(model: Model, cases: list[Case], out_dir: str | os.PathLike, device: torch.device,
                      on_case: Callable[[int, int, str, float | None, list[str]], None] | None = None,
                      largest_component: bool = False, overwrite: bool = False,
                      keep_done: bool = False) -> PredictionReport:
    """Write ``<case>.seg.nrrd``, ``labelmaps/<case>.nrrd``, ``confidence.json`` and
    ``out_of_domain.json``; OutputError before anything is written when the folder is not
    writable or holds files this tool did not write for this model (unless ``overwrite``).

    The two JSON files are rewritten after each case, so a run stopped half-way keeps the
    scores of the cases it wrote. ``keep_done`` (a resumed run, the same model): a case whose
    files this model wrote, unchanged since, and whose score is recorded, is not predicted again."""
    from .inference import predict_image_with_statistics  # noqa: PLC0415 (inference imports this module)

    fingerprint = model_fingerprint(model.network, model.classes)
    manifest = require_outputs_writable(Path(out_dir), [c.name for c in cases], fingerprint, overwrite)
    report = PredictionReport(manifest.folder)
    done = _done_cases(manifest, fingerprint) if keep_done else {}
    marker = {MARKER_FIELD: fingerprint}
    for index, case in enumerate(cases):
        if case.name in done:
            report.scores[case.name], problems = done[case.name]
            if problems:
                report.out_of_domain[case.name] = problems
            if on_case:
                on_case(index + 1, len(cases), case.name, report.scores[case.name], (problems or {}).get("problems", []))
            continue
        try:
            label, raw, geometry, statistics = predict_image_with_statistics(model, case.image, device,
                                                                             largest_component)
            if not np.isfinite(raw):
                raise RuntimeError("the network's probabilities are not finite (a diverged model?); nothing written")
        except OutputError:
            raise
        except Exception as error:  # a bad case must not stop the others; each is reported at the end
            report.failures[case.name] = str(error) if isinstance(error, InputError) else \
                f"{error.__class__.__name__}: {error}"
            report.bad_input_only &= isinstance(error, InputError)
            if on_case:
                on_case(index + 1, len(cases), case.name, None, [report.failures[case.name]])
            continue
        seg_file, labelmap_file = output_files(case.name)
        write_segmentation(manifest.folder / seg_file, label, geometry, model.classes, header_fields=marker)
        manifest.record(seg_file, fingerprint)
        write_labelmap(manifest.folder / labelmap_file, label, geometry, header_fields=marker)
        manifest.record(labelmap_file, fingerprint)
        problems = domain_problems(statistics, model.info.get("domain"))
        report.scores[case.name] = OUT_OF_DOMAIN_CONFIDENCE if problems else raw
        if problems:
            report.out_of_domain[case.name] = {"confidence_before": raw, "problems": problems}
        _write_scores(report)
        if on_case:
            on_case(index + 1, len(cases), case.name, report.scores[case.name], problems)
    _write_scores(report)
    return report


def _write_scores(report: PredictionReport) -> None:
    atomic_write_json(report.folder / "confidence.json", report.scores)
    atomic_write_json(report.folder / "out_of_domain.json", report.out_of_domain)


def _done_cases(manifest, fingerprint: str) -> dict[str, tuple[float, dict | None]]:
    """``{case: (score, out-of-domain entry or None)}`` of the cases a run of this model
    finished in the folder: both files its own and unchanged, and the score recorded."""
    # none yet, or damaged: nothing counts as done (the safe side)
    scores, out_of_domain = (read_json_object(manifest.folder / name) or {}
                             for name in ("confidence.json", "out_of_domain.json"))
    return {name: (float(score), out_of_domain.get(name)) for name, score in scores.items()
            if isinstance(score, (int, float))
            and all(manifest.written_by_us(relative, fingerprint) for relative in output_files(name))}


def describe_case(done: int, total: int, name: str, score: float | None, problems: list[str]) -> str:
    """One progress line: the case, its confidence, and what is wrong with it."""
    if score is None:
        return f"[{done}/{total}] {name}: FAILED: {problems[0]}"
    line = f"[{done}/{total}] {name}: confidence {score:.3f}"
    return line + (f" (outside the training domain: {'; '.join(problems)})" if problems else "")
