"""The default method: defined once (the catalogue's first method, ``config.DEFAULT_METHOD``), the same in the CLI, the training
settings, the jobs, the logic, the panel and the demo, and it trains in 2D and 3D with the
default network."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys

import pytest
import torch

from SSLSegmentLib import jobs
from SSLSegmentLib.cli import build_parser
from SSLSegmentLib.config import DEFAULT_METHOD, TrainConfig
from SSLSegmentLib.data.cases import discover_dataset
from SSLSegmentLib.methods import available_methods
from SSLSegmentLib.training.run_folder import RunFolder
from SSLSegmentLib.training.trainer import Trainer

from helpers import ROOT


def test_default_method_is_bcp_and_a_registered_method():
    assert DEFAULT_METHOD == "bcp"  # best measured over 3 seeds on ACDC and LA (bench/results)
    assert DEFAULT_METHOD in available_methods()


def test_config_module_imports_without_torch():
    code = "import sys, SSLSegmentLib.config as c; print(c.DEFAULT_METHOD, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == [DEFAULT_METHOD, "False"]


def test_every_entry_point_defaults_to_it():
    args = build_parser().parse_args(["train", "--images", "x", "--out", "y"])
    assert args.method == DEFAULT_METHOD
    assert TrainConfig().method == DEFAULT_METHOD
    assert jobs.TrainSettings().method == DEFAULT_METHOD
    from SSLSegmentLib import demo  # noqa: PLC0415

    assert demo.METHODS == ("supervised", DEFAULT_METHOD)


def test_logic_defaults_to_it():
    """startTraining takes its settings from the one definition: a round started without a method
    trains the default one, and the panels list it first."""
    pytest.importorskip("slicer")
    from SSLSegmentLib.logic import _roundSettings  # noqa: PLC0415
    from SSLSegmentLib.round_settings import METHOD_CHOICES  # noqa: PLC0415

    assert _roundSettings({}, {}).method == DEFAULT_METHOD
    assert METHOD_CHOICES[0] == DEFAULT_METHOD


def test_panel_defaults_to_it_and_lists_it_first():
    """SSLSegment.py imports qt (Slicer only): read as source. The parameter node's default is
    ``TrainConfig.method`` (imported from SSLSegmentLib.config), not a literal, and its choices
    (which fill the combo box) list the default first."""
    from SSLSegmentLib.round_settings import METHOD_CHOICES  # noqa: PLC0415

    tree = ast.parse((ROOT / "SSLSegment" / "SSLSegment.py").read_text(encoding="utf-8"))
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "SSLSegmentLib.config"]
    assert any(a.name == "TrainConfig" for n in imports for a in n.names)
    [node] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SSLSegmentParameterNode"]
    [method] = [s for s in node.body if isinstance(s, ast.AnnAssign) and s.target.id == "method"]
    assert ast.unparse(method.value) == "TrainConfig.method"
    assert "METHOD_CHOICES" in ast.unparse(method.annotation) and METHOD_CHOICES[0] == DEFAULT_METHOD


@pytest.mark.parametrize("dim, patch", [("2", (32, 32)), ("3", (16, 32, 32))])
def test_default_method_trains_with_the_default_network(phantom_data, tmp_path, dim, patch):
    """Both of BCP's stages (copy-paste pre-training, then self-training) on the tiny U-Net."""
    run = RunFolder(tmp_path / "run")
    run.prepare()
    dataset = discover_dataset(phantom_data["images"], phantom_data["labels"])
    config = TrainConfig(size="tiny", dim=dim, patch_size=patch, iterations=4, val_cases=0, device="cpu",
                         labelled_batch=2, unlabelled_batch=2, cache_dir=str(tmp_path / "cache"),
                         method_options={"bcp_pretrain_fraction": 0.5})
    assert config.network == "unet" and config.method == "bcp"
    trainer = Trainer(config, dataset, run, logging.getLogger("test_default_method"))
    trainer.setup()
    result = trainer.train()
    records = [r for r in run.read_progress() if "iteration" in r]
    assert result.iterations == 4 and records[-1]["iteration"] == 4
    assert {"inward", "outward", "supervised"} <= set().union(*(r["losses"] for r in records))
    model = torch.load(run.model, weights_only=True)
    assert model["method"] == "bcp" and model["plan"]["dim"] == int(dim)


@pytest.mark.parametrize("optimiser, steps", [("keep", 6), ("new", 3)])
def test_bcp_optimiser_state_across_its_stages(phantom_data, tmp_path, optimiser, steps):
    """``bcp_optimiser=new`` clears the optimiser's state when self-training starts (iteration 3
    of 6), as the official code's newly built optimiser; by default it is kept."""
    run = RunFolder(tmp_path / "run")
    run.prepare()
    dataset = discover_dataset(phantom_data["images"], phantom_data["labels"])
    config = TrainConfig(size="tiny", dim="2", patch_size=(32, 32), iterations=6, val_cases=0, device="cpu",
                         optimiser="adamw", labelled_batch=2, unlabelled_batch=2, cache_dir=str(tmp_path / "cache"),
                         method_options={"bcp_pretrain_fraction": 0.5, "bcp_optimiser": optimiser})
    trainer = Trainer(config, dataset, run, logging.getLogger("test_default_method"))
    trainer.setup()
    trainer.train()
    states = trainer.optimisers["main"].state.values()
    assert states and {int(state["step"]) for state in states} == {steps}
