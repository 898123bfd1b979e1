"""The settings contract: each training setting defined once (``TrainConfig`` with its option),
and the command line, a round's child command and its ``round.json`` all derived from it.

The last tests scan the product's sources for a default value written a second time; the scan
is shown to find a reintroduced one.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from SSLSegmentLib import jobs
from SSLSegmentLib.cli import build_parser, config_from_args
from SSLSegmentLib.config import BUDGET_ITERATION_CAP, TrainConfig
from SSLSegmentLib.options import cli_fields, to_argv, values_from_args
from SSLSegmentLib.round_settings import PANEL_FIELDS, TrainSettings, settings_changes, settings_from_round

from helpers import ROOT

PARSER = build_parser()


def parse(*argv: str) -> argparse.Namespace:
    return PARSER.parse_args(["train", *argv])


def test_every_option_of_the_definition_is_a_train_flag_with_its_default():
    train = next(a for a in PARSER._subparsers._group_actions[0].choices.values() if a.prog.endswith("train"))
    flags = {s for action in train._actions for s in action.option_strings}
    for f, opt in cli_fields(TrainConfig):
        assert opt.flag in flags, opt.flag
    assert config_from_args(parse()) == TrainConfig()  # no argument: every default of the definition
    assert "(default: unet)" in train.format_help() and f"(default {TrainConfig.iterations})" in train.format_help()


def test_a_config_goes_to_argv_and_back_unchanged():
    """``to_argv`` and the generated parser are inverse: every exposed field, off its default."""
    config = TrainConfig(method="cps", network="vnet", preset="balanced", size="tiny", dim="3", iterations=17,
                         time_budget=4.5,
                         spacing=(1.23456789, 1.5, 3.0), patch_size=(16, 32, 32), labelled_batch=3, unlabelled_batch=5,
                         optimiser="adamw", lr=0.002, consistency=0.3, dropout=0.2,
                         method_options={"a": 1, "b": "text", "c": [1, 2]}, normalisation="ct",
                         ct_window=(-100.0, 250.5), val_cases=2, validation="holdout", val_interval=7, seed=99,
                         device="cpu", amp=False, precision="fp32", channels_last=False, num_workers=2,
                         cache_dir="/tmp/cache", checkpoint_interval=9, init_model="/tmp/m.pt",
                         predict_unlabelled=True, largest_component=True)
    exposed = {f.name for f, _ in cli_fields(TrainConfig)}
    untouched = [name for name in exposed if getattr(config, name) == getattr(TrainConfig(), name)]
    assert not untouched, f"the round trip must cover every option: {untouched}"
    argv = to_argv(config)
    assert argv.count("--method-option") == 3 and "--no-amp" in argv
    assert config_from_args(parse(*argv)) == config
    assert to_argv(TrainConfig()) == []  # only what differs from the definition


def test_time_budget_without_iterations_caps_at_the_budget_cap():
    assert config_from_args(parse("--time-budget", "5")).iterations == BUDGET_ITERATION_CAP
    assert config_from_args(parse("--time-budget", "5", "--iterations", "30")).iterations == 30
    assert config_from_args(parse()).iterations == TrainConfig.iterations


def test_arguments_saved_by_an_older_version_take_the_defaults():
    """A resumed run's command.json may predate a setting: it counts as not given."""
    old = argparse.Namespace(method="cps", network="unet", iterations=40, seed=5, method_option=["x=1"],
                             no_amp=True, channels_last="on")
    values = values_from_args(TrainConfig, old)
    assert values["method"] == "cps" and values["method_options"] == {"x": 1} and values["amp"] is False
    assert values["channels_last"] is True and values["spacing"] is None and values["validation"] == "auto"


def test_round_settings_are_a_view_on_the_definition():
    config_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    view = {f.name: f for f in dataclasses.fields(TrainSettings)}
    assert set(view) == {*PANEL_FIELDS, "extra_args"}
    for name in PANEL_FIELDS:
        assert view[name].default == config_fields[name].default, name
    with pytest.raises(Exception, match="learningRate"):
        settings_changes({"learningRate": 3})
    assert settings_changes({"timeBudget": 2, "extraArgs": ["--lr", "0.1"], "size": None}) == {
        "time_budget": 2, "extra_args": ["--lr", "0.1"]}


def test_the_round_command_parses_back_to_the_settings(tmp_path):
    """What the child of a Slicer or web round trains with is what the panel chose."""
    folder = jobs.JobFolder(tmp_path / "job")
    settings = TrainSettings(method="uamt", network="dynunet", dim="2", iterations=33, device="cpu", seed=4,
                             size="tiny", preset="fast-cpu", spacing="1.5,1.5,3", extra_args=["--lr", "0.02"])
    command = jobs.train_command(["py"], folder, 1, settings)
    config = config_from_args(PARSER.parse_args(command[3:]))
    assert (config.method, config.network, config.dim, config.iterations, config.device, config.seed) == (
        "uamt", "dynunet", "2", 33, "cpu", 4)
    assert (config.size, config.preset, config.spacing, config.lr) == ("tiny", "fast-cpu", (1.5, 1.5, 3.0), 0.02)
    assert config.predict_unlabelled
    default = jobs.train_command(["py"], folder, 1, TrainSettings())
    for flag in ("--method", "--network", "--dim", "--device", "--seed", "--iterations"):
        assert flag in default, f"{flag}: round.json's command says what the round trained with"
    assert config_from_args(PARSER.parse_args(default[3:])).seed == TrainConfig.seed


@pytest.mark.parametrize("recorded", [
    # round.json as written before the contract (jobs.TrainSettings.to_dict), with a key this
    # version does not know, and an older one without time_budget and spacing.
    {"method": "cps", "network": "unet", "dim": "3", "iterations": 20, "device": "cpu", "seed": 3, "size": "tiny",
     "preset": None, "time_budget": None, "spacing": None, "extra_args": ["--patch-size", "16,32,32"],
     "retired_setting": 1},
    {"method": "cps", "network": "unet", "dim": "3", "iterations": 20, "device": "cpu", "seed": 3, "size": "tiny",
     "preset": None, "extra_args": ["--patch-size", "16,32,32"]},
])
def test_round_json_of_older_versions_loads(tmp_path, recorded):
    folder = jobs.JobFolder(tmp_path / "job")
    folder.write_round(1, {"round": 1, "settings": recorded, "command": []})
    settings = TrainSettings(**settings_from_round(folder.read_round(1)))
    assert (settings.method, settings.seed, settings.extra_args) == ("cps", 3, ["--patch-size", "16,32,32"])
    assert settings.time_budget is None and settings.spacing is None
    assert json.loads(json.dumps(settings.to_dict())) == settings.to_dict()


def test_the_contract_imports_without_torch():
    code = ("import sys; from SSLSegmentLib import catalogue, config, options, round_settings, cli; "
            "cli.config_from_args(cli.build_parser().parse_args(['train', '--time-budget', '3'])); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------
# Each default written once
# ------------------------------------------------------------------------------------------

PRODUCT_SOURCES = [*sorted((ROOT / "SSLSegmentLib").rglob("*.py")), *sorted((ROOT / "SSLSegment").rglob("*.py"))]
DEFINED_IN = {"consistency": ROOT / "SSLSegmentLib" / "methods" / "base.py"}
"""Defaults defined outside ``TrainConfig``: the methods' lambda max (``MethodSettings``)."""


def watched_defaults() -> dict[str, object]:
    """``{setting: default}`` for every ``TrainConfig`` field with a distinctive default (not None
    or a switch), and the methods' consistency default."""
    watched = {f.name: f.default for f in dataclasses.fields(TrainConfig)
               if f.default not in (dataclasses.MISSING, None) and not isinstance(f.default, bool)}
    watched["consistency"] = 0.1
    return watched


def _bound_literals(tree: ast.AST):
    """``(name, value node)``: a literal bound to a name as a parameter default, a class
    attribute (or its ``field``/``option`` default), a keyword argument, or an argparse default."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = node.args.posonlyargs + node.args.args
            yield from zip((a.arg for a in positional[len(positional) - len(node.args.defaults):]), node.args.defaults)
            yield from ((a.arg, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None)
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                targets = ([statement.target] if isinstance(statement, ast.AnnAssign) else
                           statement.targets if isinstance(statement, ast.Assign) else [])
                value = getattr(statement, "value", None)
                if isinstance(value, ast.Call) and (value.args or value.keywords):  # field(default=...), option(...)
                    value = value.args[0] if value.args else next(
                        (k.value for k in value.keywords if k.arg == "default"), value)
                for target in targets:
                    if isinstance(target, ast.Name) and value is not None:
                        yield target.id, value
        elif isinstance(node, ast.Call):
            yield from ((k.arg, k.value) for k in node.keywords if k.arg)
            argparse_call = getattr(node.func, "attr", None) == "add_argument"
            if argparse_call and node.args and isinstance(node.args[0], ast.Constant):
                flag = str(node.args[0].value).lstrip("-").replace("-", "_")
                yield from ((flag, k.value) for k in node.keywords if k.arg == "default")


def default_copies(path: Path, source: str, watched: dict) -> list[str]:
    """Where ``source`` binds a watched setting (or ``default_<setting>``) to its default literal."""
    found = []
    for name, node in _bound_literals(ast.parse(source)):
        setting = name.removeprefix("default_")
        if setting not in watched or not isinstance(node, ast.Constant) or isinstance(node.value, bool):
            continue
        default = watched[setting]
        if type(node.value) in (int, float, str) and node.value == default and (
                isinstance(node.value, str) == isinstance(default, str)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name} = {node.value!r}")
    return found


def test_each_default_is_written_once():
    watched = watched_defaults()
    copies = []
    for path in PRODUCT_SOURCES:
        for line in default_copies(path, path.read_text(encoding="utf-8"), watched):
            setting = line.split(": ")[1].split(" =")[0].removeprefix("default_")
            if path != DEFINED_IN.get(setting, ROOT / "SSLSegmentLib" / "config.py"):
                copies.append(line)
    assert not copies, "defaults written again (refer to TrainConfig.<name> instead):\n" + "\n".join(copies)
    base = (ROOT / "SSLSegmentLib" / "methods" / "base.py").read_text(encoding="utf-8")
    assert len(default_copies(ROOT / "SSLSegmentLib" / "methods" / "base.py", base, watched)) == 1


@pytest.mark.parametrize("copy", [
    "def startTraining(self, labeled, iterations: int = 2000): ...",
    "class ParameterNode:\n    seed: int = 1337\n",
    "TrainConfig(method=method, network='unet')",
    "p.add_argument('--seed', type=int, default=1337)",
    "class FixMatch:\n    default_consistency = 0.1\n",
    "from dataclasses import field\nclass S:\n    ema_decay: float = field(default=0.99)\n",
])
def test_the_scan_finds_a_default_written_again(copy):
    """The scan can fail: each way a default used to be repeated is found (the logic's keyword,
    the parameter node, a TrainConfig call, argparse, a method's class attribute, a dataclass)."""
    found = default_copies(ROOT / "SSLSegmentLib" / "logic.py", copy, watched_defaults())
    assert len(found) == 1, found
    assert default_copies(ROOT / "SSLSegmentLib" / "logic.py", copy.replace("1337", "7").replace("2000", "20")
                          .replace("'unet'", "'vnet'").replace("0.1", "0.5").replace("0.99", "0.9"),
                          watched_defaults()) == []
