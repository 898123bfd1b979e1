"""``sslsegment demo``: the whole engine on synthetic phantoms, no data needed.

Generates a few labelled and many unlabelled 3D phantoms, trains ``supervised`` and
the default method (``config.DEFAULT_METHOD``) on the same labels, predicts held-out phantoms, prints Dice and HD95 for
both and writes the predictions (``.seg.nrrd``) and a PNG figure. Sized to finish within
a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .config import DEFAULT_METHOD, TrainConfig
from .data.cases import discover_dataset
from .evaluation import evaluate_folders
from .fileio import atomic_path, atomic_write_json
from .inference import predict_cases
from .model_file import load_model
from .phantoms import write_phantom_dataset
from .training.run_folder import RunFolder
from .training.trainer import Trainer

METHODS = ("supervised", DEFAULT_METHOD)
SHAPE = (32, 48, 48)
DEFAULT_ITERATIONS = 150
PATCH = (32, 32, 32)


def run_demo(out: str | Path = "demo_output", iterations: int | None = None, seed: int = 7) -> dict:
    out = Path(out)
    iterations = iterations or DEFAULT_ITERATIONS
    log = logging.getLogger("sslsegment.demo")
    folders = write_phantom_dataset(out / "data", n_labelled=2, n_unlabelled=12, n_test=4, shape=SHAPE, seed=seed)
    dataset = discover_dataset(folders["images"], folders["labels"])
    test_cases = discover_dataset(folders["test_images"], folders["test_labels"]).labelled
    results = {}
    for method in METHODS:
        started = time.monotonic()
        log.info("training %s for %d iterations on %d labelled + %d unlabelled phantoms", method, iterations,
                 len(dataset.labelled), len(dataset.unlabelled))
        run = RunFolder(out / "runs" / method)
        run.prepare()
        config = TrainConfig(method=method, network="unet", size="small", dim="3", iterations=iterations,
                             patch_size=PATCH, device="auto", seed=seed, val_cases=0)
        trainer = Trainer(config, dataset, run, log)
        trainer.setup()
        trainer.train()
        predictions = out / "predictions" / method
        predict_cases(load_model(run.model, trainer.device), test_cases, predictions, trainer.device)
        results[method] = evaluate_folders(predictions, folders["test_labels"])
        results[method]["seconds"] = round(time.monotonic() - started, 1)
    table = results_table(results)
    print(table)
    atomic_write_json(out / "results.json", results)
    figure = write_figure(out / "demo.png", test_cases[0], {m: out / "predictions" / m for m in METHODS})
    print(f"\npredictions: {out / 'predictions'}\nfigure: {figure}")
    return results


def results_table(results: dict) -> str:
    classes = [c for c in next(iter(results.values()))["mean"] if c != "all"]
    lines = ["| method | " + " | ".join(f"{c} Dice | {c} HD95 (mm)" for c in classes) + " | mean Dice | time (s) |",
             "|" + "---|" * (3 + 2 * len(classes))]
    for method, result in results.items():
        mean = result["mean"]
        cells = " | ".join(f"{mean[c]['dice']:.3f} | {mean[c]['hd95']:.2f}" for c in classes)
        lines.append(f"| {method} | {cells} | {mean['all']['dice']:.3f} | {result['seconds']} |")
    return "\n".join(lines)


def write_figure(path: Path, case, prediction_dirs: dict[str, Path]) -> Path:
    """Middle axial slice of one test phantom: image, truth, and each method's prediction."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from .data.io import read_image  # noqa: PLC0415
    from .data.labels import read_label  # noqa: PLC0415

    image, _ = read_image(case.image)
    z = image.shape[0] // 2
    panels = [("image", image[z], None), ("truth", image[z], read_label(case.label).array[z])]
    panels += [(method, image[z], read_label(folder / f"{case.name}.seg.nrrd").array[z])
               for method, folder in prediction_dirs.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (title, background, label) in zip(axes, panels):
        ax.imshow(background, cmap="gray")
        if label is not None:
            ax.imshow(np.ma.masked_equal(label, 0), cmap="autumn", alpha=0.5, vmin=0, vmax=max(1, label.max()))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
