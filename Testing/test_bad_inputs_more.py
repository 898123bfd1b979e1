"""More bad inputs found by bench/bad_inputs.py: each is refused with exit 2 and a message
naming the setting or path and the fix, before any run folder or output exists."""

from __future__ import annotations

import json

import pytest

from SSLSegmentLib.cli import main

from helpers import train_in_process, write_two_labelled_cases


@pytest.fixture
def good(tmp_path):
    """Two labelled cases of plain labelmaps; tests spoil one setting each."""
    return write_two_labelled_cases(tmp_path)


_train = train_in_process  # (exit code, stderr, run folder)


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_out_of_range_is_refused_without_traceback(good, capsys, seed):
    code, err, out = _train(good, capsys, "--seed", seed)
    assert code == 2 and "--seed" in err and "Traceback" not in err, err
    assert not (out / "model.pt").exists()


def test_more_validation_cases_than_labelled_is_refused(good, capsys):
    code, err, out = _train(good, capsys, "--val-cases", "5")
    assert code == 2 and "--val-cases 5" in err and "2 labelled" in err, err
    assert not (out / "model.pt").exists()


def test_all_labelled_cases_for_validation_is_refused(good, capsys):
    code, err, _ = _train(good, capsys, "--val-cases", "2")
    assert code == 2 and "--val-cases 2" in err, err


@pytest.mark.parametrize("threads", ["0", "-3"])
def test_threads_below_one_is_refused(good, capsys, threads):
    code, err, out = _train(good, capsys, "--threads", threads)
    assert code == 2 and "--threads" in err, err
    assert not out.exists()


def test_predict_images_given_as_a_file_says_so(good, capsys, tmp_path):
    code, err, run = _train(good, capsys, "--val-cases", "0")
    assert code == 0, err
    image = good / "images" / "alpha.nrrd"
    code = main(["predict", "--model", str(run), "--images", str(image), "--out", str(tmp_path / "pred")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and str(image.parent) in err, err


def test_predict_unlabelled_without_unlabelled_cases_still_ends_done(good, capsys):
    """Every case labelled (as in a Slicer job of labelled volumes only): the run trained, so it
    is done with its model; there is just nothing to predict (was: failed, 'no case to predict')."""
    code, err, out = _train(good, capsys, "--val-cases", "0", "--predict-unlabelled")
    assert code == 0, err
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    assert (out / "model.pt").exists()


def test_resume_with_other_settings_is_refused_naming_them(good, capsys):
    """--resume goes on with the run's own settings: a changed one given with it must not be
    dropped silently (was: exit 0, --lr 0.5 and --iterations 3 ignored without a word)."""
    from SSLSegmentLib.training.cli_train import COMMAND_FILE, arguments_to_resume, saved_arguments
    from SSLSegmentLib.cli import build_parser
    from SSLSegmentLib.errors import InputError

    run = good / "run"
    run.mkdir()
    original = build_parser().parse_args(["train", "--images", str(good / "images"), "--out", str(run),
                                          "--iterations", "60", "--size", "tiny"])
    (run / COMMAND_FILE).write_text(json.dumps({"arguments": saved_arguments(original)}))
    same = build_parser().parse_args(["train", "--resume", str(run), "--iterations", "60", "--threads", "1"])
    assert arguments_to_resume(same).iterations == 60  # repeating the run's own settings is fine
    changed = build_parser().parse_args(["train", "--resume", str(run), "--iterations", "3", "--lr", "0.5"])
    with pytest.raises(InputError) as refused:
        arguments_to_resume(changed)
    assert "--iterations 3" in str(refused.value) and "--lr 0.5" in str(refused.value)
    same_patch = build_parser().parse_args(["train", "--resume", str(run), "--size", "tiny", "--patch-size", "16,16,16"])
    with pytest.raises(InputError, match="--patch-size 16 16 16"):  # the run had no patch size given
        arguments_to_resume(same_patch)


@pytest.mark.parametrize("content", [b'{"method": "mean_teacher"}\n', b"not a model"])
def test_a_text_file_given_as_model_is_called_what_it_is(tmp_path, content):
    """A JSON or text file is not 'Python objects that could run code': it is no PyTorch file."""
    from SSLSegmentLib.errors import InputError
    from SSLSegmentLib.model_file import read_model_payload

    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a PyTorch file") as refused:
        read_model_payload(path)
    assert "Python objects" not in str(refused.value)
