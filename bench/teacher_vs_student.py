"""Does the EMA teacher segment better than the student it follows? From finished runs, no training.

Every teacher-student method (Mean Teacher, UA-MT, ICT, FixMatch, BCP) predicts with its
student, as the references evaluate. The EMA teacher (Tarvainen & Valpola, NeurIPS 2017) is an
average of the student's last weights and the paper reports it as the better model; an average
might also make the result of a short run depend less on where the last step happened to land.
This bench measures it on runs of ``label_efficiency.py``: for each run folder with a
``train/checkpoint_last.pt`` whose state holds ``teacher.*`` weights, it writes
``teacher/model.pt`` (the run's ``model.pt`` with the teacher's weights), runs ``sslsegment
predict`` and ``evaluate`` on the run's evaluation set, and sets the teacher's Dice beside the
student's (the run's ``bench_result.json``), same run, same weights history.

    nice .venv/bin/python bench/teacher_vs_student.py --runs /root/sslbench/runs \\
        --results bench/results [--data ../shared/data]

Prints a markdown table and writes ``teacher_vs_student.{md,json}``; a run already measured
keeps its figure (delete ``teacher/eval.json`` to measure again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import DATA, ROOT, cli  # noqa: E402

sys.path.insert(0, str(ROOT))
from SSLSegmentLib.fileio import atomic_write_json, atomic_write_text  # noqa: E402

TEACHER = "teacher."


def teacher_model(train: Path, out: Path) -> bool:
    """``out/model.pt``: the run's model file with the EMA teacher's weights from its last
    checkpoint. False when the run's method has no teacher."""
    checkpoint = torch.load(train / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    teacher = {k[len(TEACHER):]: v for k, v in checkpoint["state"].items() if k.startswith(TEACHER)}
    if not teacher:
        return False
    model = torch.load(train / "model.pt", map_location="cpu", weights_only=True)
    if set(teacher) != set(model["state_dict"]):
        raise ValueError(f"{train}: the teacher's weights do not match the model's network")
    model["state_dict"] = teacher
    model["extra"] = {**model.get("extra", {}), "weights": "ema_teacher"}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model, out / "model.tmp")
    (out / "model.tmp").replace(out / "model.pt")
    return True


def evaluation_set(run: Path, data: Path) -> tuple[Path, Path]:
    """The images and labels the run was evaluated on (ACDC/val, or LA's last 16 cases)."""
    if "acdc" in run.parts[-3]:
        return data / "ACDC" / "val" / "images", data / "ACDC" / "val" / "labels"
    scratch = run.parents[3]
    return scratch / "la_eval16" / "images", scratch / "la_eval16" / "labels"


def measure(run: Path, data: Path) -> dict | None:
    student = json.loads((run / "bench_result.json").read_text())
    teacher_dir = run / "teacher"
    if not (teacher_dir / "eval.json").exists():
        if not teacher_model(run / "train", teacher_dir):
            return None
        images, labels = evaluation_set(run, data)
        log_file = teacher_dir / "bench.log"
        cli("predict", "--model", str(teacher_dir), "--images", str(images), "--out", str(teacher_dir / "pred"),
            "--device", "cpu", log_file=log_file)
        cli("evaluate", "--pred", str(teacher_dir / "pred"), "--labels", str(labels),
            "--json", str(teacher_dir / "eval.json"), log_file=log_file)
    teacher = json.loads((teacher_dir / "eval.json").read_text())["mean"]["all"]
    return {"table": run.parts[-3], "method": run.parts[-2], "seed": int(run.name.removeprefix("seed")),
            "student_dice": student["dice"], "teacher_dice": teacher["dice"],
            "student_hd95": student["hd95"], "teacher_hd95": teacher["hd95"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| budget folder | method | seed | student Dice | teacher Dice | teacher - student | student HD95 | teacher HD95 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['table']} | {r['method']} | {r['seed']} | {r['student_dice']:.3f} | {r['teacher_dice']:.3f} "
                     f"| {r['teacher_dice'] - r['student_dice']:+.3f} | {r['student_hd95']:.1f} | {r['teacher_hd95']:.1f} |")
    if rows:
        differences = [r["teacher_dice"] - r["student_dice"] for r in rows]
        better = sum(d > 0 for d in differences)
        lines += ["", f"Teacher better in {better} of {len(rows)} runs; mean difference {statistics.fmean(differences):+.3f} Dice "
                      f"(min {min(differences):+.3f}, max {max(differences):+.3f})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="label_efficiency.py's <scratch>/runs")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--results", type=Path, default=None, help="where teacher_vs_student.{md,json} go")
    args = p.parse_args(argv)
    rows = []
    for result in sorted(args.runs.glob("*/*/seed*/bench_result.json")):
        row = measure(result.parent, args.data.resolve())
        if row is not None:
            rows.append(row)
            print(f"{row['table']} {row['method']} seed {row['seed']}: student {row['student_dice']:.3f} "
                  f"teacher {row['teacher_dice']:.3f}", flush=True)
    text = markdown(rows)
    print(text)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.results / "teacher_vs_student.md", "# EMA teacher against student, same runs\n\n"
                          "Generated by `bench/teacher_vs_student.py` from finished label-efficiency runs (last "
                          "checkpoint; the student's Dice is the run's table entry).\n\n" + text)
        atomic_write_json(args.results / "teacher_vs_student.json", {"runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
