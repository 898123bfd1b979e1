"""Can DAN's discriminator tell labelled from unlabelled images by the image alone?

DAN's discriminator (Zhang et al., MICCAI 2017; SSL4MIS's ``FCDiscriminator``) sees a softmax
map AND its image, and learns to tell predictions on labelled images from predictions on
unlabelled ones. If the images alone give the two apart (the labelled images memorised, or a
labelled set of one kind of patient), its verdict, and the gradient that asks the unlabelled
predictions to look labelled, are not about the segmentation. This bench
trains the discriminator as ``methods/adversarial.py`` does (Adam 1e-4, betas (0.9, 0.99),
dropout 0.5, batches of 4 labelled + 4 unlabelled patches drawn uniformly, flipped and
rotated as in training) but gives it a constant map, so only the image can tell the streams
apart. Every ``--every`` steps it reports, in eval mode, the share of patches it calls
"labelled" among: patches of the labelled images it trains on, patches of labelled images
held out of its training (``--held-out``, the first cases: one ACDC patient's two frames), and
unlabelled patches. Memorising shows as a high share on the first and a low one on the second;
a labelled set that differs from the unlabelled pool as a whole, as high shares on both.

Usage (ACDC's two splits as the label-efficiency bench prepares them at 3 mm):
``python bench/dan_image_shortcut.py --datasets first=.../acdc_3mm/few.json,ssl4mis=.../acdc_3mm/few_ssl4mis.json``.
Prints a markdown table and writes ``bench/results/dan_image_shortcut.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SSLSegmentLib.config import TrainConfig  # noqa: E402
from SSLSegmentLib.data.cases import Dataset, load_dataset_json  # noqa: E402
from SSLSegmentLib.fileio import atomic_write_text  # noqa: E402
from SSLSegmentLib.methods.adversarial import Adversarial  # noqa: E402
from SSLSegmentLib.networks.discriminator import Discriminator  # noqa: E402
from SSLSegmentLib.sampling import PatchSampler  # noqa: E402
from SSLSegmentLib.training.data_setup import prepare_training_data  # noqa: E402

PREPARED = ROOT / "bench" / "runs" / "label_efficiency" / "acdc_3mm"
DATASETS = f"first={PREPARED / 'few.json'},ssl4mis={PREPARED / 'few_ssl4mis.json'}"
RESULTS = ROOT / "bench" / "results"
PROBE = 48
"""Patches per group in each report (drawn once, the same at every report)."""


def samplers(dataset: Dataset, held_out: int, args) -> tuple[dict, int, tuple[int, ...]]:
    """Uniform, augmented patch samplers of the training-labelled, held-out labelled and
    unlabelled cases, through the engine's own planning and cache (as ``sslsegment train``)."""
    config = TrainConfig(method="adversarial", network="unet", size="small", dim=args.dim, val_cases=0,
                         patch_size=tuple(args.patch), spacing="data", device="cpu", seed=args.seed)
    config = config.resolved("cpu")
    data, _ = prepare_training_data(dataset, config, logging.getLogger("dan_image_shortcut"),
                                    cache_dir=args.cache_dir)
    names = {case.name for case in dataset.labelled[:held_out]}
    groups = {"trained_on": [c for c in data.train if c.name not in names],
              "held_out_labelled": [c for c in data.train if c.name in names], "unlabelled": data.unlabelled}
    dim = data.plan.dim
    made = {g: PatchSampler.from_cache(cases, data.patch, dim, foreground_fraction=0.0, labelled=g != "unlabelled")
            for g, cases in groups.items()}
    return made, data.num_classes, data.patch


def patches(sampler: PatchSampler, count: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(sampler.sample(count, rng)["image"])


def called_labelled(discriminator: Discriminator, images: torch.Tensor, num_classes: int) -> float:
    """Share of ``images`` the discriminator calls "labelled" (eval mode, a constant map)."""
    discriminator.eval()
    with torch.no_grad():
        logits = discriminator(constant_map(images, num_classes), images)
    discriminator.train()
    return round(float((logits > 0).float().mean()), 3)


def constant_map(images: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.full((images.shape[0], num_classes, *images.shape[2:]), 1.0 / num_classes)


def train_discriminator(groups: dict, num_classes: int, layers: int, args) -> list[dict]:
    """The discriminator's training as DAN's, on images alone; the reports along the way."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    probe = {g: patches(s, PROBE, np.random.default_rng(args.seed + 1)) for g, s in groups.items()}
    discriminator = Discriminator(len(probe["trained_on"].shape) - 2, num_classes, 1, args.width, layers=layers)
    settings = Adversarial.optimiser_overrides["discriminator"]  # DAN's own: Adam 1e-4, betas (0.9, 0.99)
    optimiser = torch.optim.Adam(discriminator.parameters(), lr=settings["lr"], betas=settings["betas"])
    target = torch.tensor([1.0] * args.batch + [0.0] * args.batch)
    reports, correct = [], []
    for step in range(1, args.steps + 1):
        images = torch.cat([patches(groups["trained_on"], args.batch, rng), patches(groups["unlabelled"], args.batch, rng)])
        logits = discriminator(constant_map(images, num_classes), images)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        correct.append(float(((logits.detach() > 0).float() == target).float().mean()))
        if step % args.every == 0:
            reports.append({"step": step, "training_accuracy": round(float(np.mean(correct[-args.every:])), 3),
                            **{g: called_labelled(discriminator, p, num_classes) for g, p in probe.items()}})
            print(f"layers {layers}, step {step}: {reports[-1]}", flush=True)
    return reports


def markdown(result: dict) -> str:
    lines = ["# DAN's discriminator on images alone: can it tell labelled from unlabelled?", "",
             "Generated by `bench/dan_image_shortcut.py`. The discriminator trains as in DAN, with a constant map in "
             "place of the softmax, so only the image tells the streams apart. Share of patches it calls "
             f"\"labelled\" (eval mode, the same {PROBE} patches per group at every step):", ""]
    for name, run in result["runs"].items():
        lines += [f"## {name} (strided convolutions)", "", f"{run['dataset']}: {run['cases']}.", "",
                  "| step | training accuracy | labelled, trained on | labelled, held out | unlabelled |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['training_accuracy']:.2f} | {r['trained_on']:.2f} | "
                  f"{r['held_out_labelled']:.2f} | {r['unlabelled']:.2f} |" for r in run["reports"]]
        lines.append("")
    lines.append(f"Command: `{result['command']}`. Machine: {result['machine']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default=DATASETS, help="name=dataset JSON, comma-separated (labelled and "
                   "unlabelled cases; default: ACDC's two splits as bench/label_efficiency.py prepares them)")
    p.add_argument("--held-out", type=int, default=2, help="labelled cases (the first) kept out of training")
    p.add_argument("--layers", default="4", help="discriminator depths to try, comma-separated")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--batch", type=int, default=4, help="labelled and unlabelled patches per step")
    p.add_argument("--patch", type=lambda t: [int(v) for v in t.split(",")], default=[128, 128])
    p.add_argument("--dim", default="2")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--cache-dir", default=str(ROOT / "bench" / "runs" / ".sslsegment-cache"))
    p.add_argument("--machine", default="2-core CPU, one thread, other benches running")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    command = "python bench/dan_image_shortcut.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"seed": args.seed, "steps": args.steps, "command": command, "machine": args.machine, "runs": {}}
    for item in args.datasets.split(","):
        name, _, path = item.partition("=")
        path = Path(path)
        if not path.exists():
            raise SystemExit(f"{path}: no such dataset JSON (run bench/label_efficiency.py first, or pass --datasets)")
        dataset = load_dataset_json(path)
        groups, num_classes, patch = samplers(dataset, args.held_out, args)
        cases = (f"{len(dataset.labelled) - args.held_out} labelled trained on, {args.held_out} held out "
                 f"({', '.join(c.name for c in dataset.labelled[:args.held_out])}), {len(dataset.unlabelled)} "
                 f"unlabelled; patch {list(patch)}")
        for layers in (int(v) for v in args.layers.split(",")):
            result["runs"][f"{name}, {layers} layers"] = {
                "dataset": str(path), "cases": cases, "layers": layers,
                "reports": train_discriminator(groups, num_classes, layers, args)}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / "dan_image_shortcut.json", json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    atomic_write_text(args.results / "dan_image_shortcut.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
