"""How often the training-domain check (``SSLSegmentLib.domain``) fires, on real data.

The domain is measured on ACDC's training images, as ``train`` stores it in ``model.pt``; then
every image of ACDC's validation set (same domain: should not fire), of LA (another MRI
sequence, 0.625 mm isotropic: should fire) and of ACDC validation with its spacing written in
metres (should fire) is checked. Prints JSON: per set, cases checked, cases flagged, and
the reasons. No network is involved (the check reads the image alone).

    .venv/bin/python bench/domain_check.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SSLSegmentLib.data.cases import list_image_files  # noqa: E402
from SSLSegmentLib.data.io import read_image  # noqa: E402
from SSLSegmentLib.domain import describe_training_domain, domain_problems, image_statistics  # noqa: E402


def check(paths, domain, spacing_scale: float = 1.0) -> dict:
    flagged, reasons = 0, collections.Counter()
    for path in paths:
        statistics = image_statistics(*read_image(path))
        statistics["spacing"] = [s * spacing_scale for s in statistics["spacing"]]
        problems = domain_problems(statistics, domain)
        flagged += bool(problems)
        reasons.update(p.split(" is ")[0].split(" mm")[0].rsplit(" ", 1)[0] for p in problems)
    return {"cases": len(paths), "flagged": flagged, "reasons": dict(reasons)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    train = list_image_files(args.data / "ACDC" / "train" / "images")
    domain = describe_training_domain(train)
    val = list_image_files(args.data / "ACDC" / "val" / "images")
    la = list_image_files(args.data / "LA" / "train" / "images")
    report = {"domain (ACDC train)": domain,
              "ACDC val": check(val, domain),
              "ACDC val, spacing in metres": check(val, domain, spacing_scale=1e-3),
              "LA train": check(la, domain),
              "ACDC train (its own domain; 24 of them set the intensity range)": check(train, domain)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
