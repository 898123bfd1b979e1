"""Does DAN's discriminator judge the segmentation, or recognise the labelled images?

DAN's discriminator (Zhang et al., MICCAI 2017; SSL4MIS's ``FCDiscriminator``) sees a softmax
map AND its image, and learns to tell predictions on labelled images from predictions on
unlabelled ones. With few labelled images it could learn the images themselves. This bench
trains the discriminator as ``methods/adversarial.py`` does (Adam 1e-4, betas (0.9, 0.99),
dropout 0.5, batches of 4 labelled + 4 unlabelled patches drawn uniformly, flipped and
rotated as in training) but gives it a constant map, so only the image can tell the streams
apart. Every ``--every`` steps it reports, in eval mode, the share of patches it calls
"labelled" among: patches of the labelled images it trains on, patches of labelled images
held out of its training (``--held-out``, the first cases: one ACDC patient's two frames), and
unlabelled patches. Memorising shows as a high share on the first and a low one on the second.

Usage (the ACDC dataset the label-efficiency bench prepares at 3 mm):
``python bench/dan_memorisation.py --dataset bench/runs/label_efficiency/acdc_3mm/few.json``.
Prints a markdown table and writes ``bench/results/dan_memorisation.{json,md}``.
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
from SSLSegmentLib.networks.discriminator import Discriminator  # noqa: E402
from SSLSegmentLib.sampling import PatchSampler  # noqa: E402
from SSLSegmentLib.training.data_setup import prepare_training_data  # noqa: E402

DATASET = ROOT / "bench" / "runs" / "label_efficiency" / "acdc_3mm" / "few.json"
RESULTS = ROOT / "bench" / "results"
PROBE = 48
"""Patches per group in each report (drawn once, the same at every report)."""


def samplers(dataset: Dataset, held_out: int, args) -> tuple[dict, int, tuple[int, ...]]:
    """Uniform, augmented patch samplers of the training-labelled, held-out labelled and
    unlabelled cases, through the engine's own planning and cache (as ``sslsegment train``)."""
    config = TrainConfig(method="adversarial", network="unet", size="small", dim=args.dim, val_cases=0,
                         patch_size=tuple(args.patch), spacing="data", device="cpu", seed=args.seed)
    config = config.resolved("cpu")
    data, _ = prepare_training_data(dataset, config, logging.getLogger("dan_memorisation"),
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
    discriminator = Discriminator(len(probe["trained_on"].shape) - 2, num_classes, 1, args.width, 0.5, layers)
    optimiser = torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.9, 0.99))
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
    lines = ["# DAN's discriminator on images alone: does it recognise the labelled images?", "",
             f"Generated by `bench/dan_memorisation.py` ({result['dataset']}: {result['cases']}). The discriminator "
             "trains as in DAN, with a constant map in place of the softmax, so only the image tells the streams "
             "apart. Share of patches it calls \"labelled\" (eval mode, the same "
             f"{PROBE} patches per group at every step):", ""]
    for layers, reports in result["runs"].items():
        lines += [f"## {layers} strided convolutions", "",
                  "| step | training accuracy | labelled, trained on | labelled, held out | unlabelled |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['training_accuracy']:.2f} | {r['trained_on']:.2f} | "
                  f"{r['held_out_labelled']:.2f} | {r['unlabelled']:.2f} |" for r in reports]
        lines.append("")
    lines.append(f"Command: `{result['command']}`. Machine: {result['machine']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=Path, default=DATASET, help="dataset JSON (labelled and unlabelled cases)")
    p.add_argument("--held-out", type=int, default=2, help="labelled cases (the first) kept out of training")
    p.add_argument("--layers", default="3,4", help="discriminator depths to try")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=100)
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
    if not args.dataset.exists():
        raise SystemExit(f"{args.dataset}: no such dataset JSON (run bench/label_efficiency.py first, or pass --dataset)")
    dataset = load_dataset_json(args.dataset)
    groups, num_classes, patch = samplers(dataset, args.held_out, args)
    result = {"dataset": str(args.dataset), "patch": list(patch), "seed": args.seed, "steps": args.steps,
              "cases": f"{len(dataset.labelled) - args.held_out} labelled trained on, {args.held_out} held out, "
                       f"{len(dataset.unlabelled)} unlabelled; patch {list(patch)}",
              "command": "python bench/dan_memorisation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": args.machine,
              "runs": {int(layers): train_discriminator(groups, num_classes, int(layers), args)
                       for layers in args.layers.split(",")}}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / "dan_memorisation.json", json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    atomic_write_text(args.results / "dan_memorisation.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
