"""The same seed gives the same model; another seed does not."""

import torch
from helpers import TINY_TRAIN

from SSLSegmentLib.cli import main


def _train(phantom_data, out, seed):
    code = main(["train", "--images", str(phantom_data["images"]), "--labels", str(phantom_data["labels"]),
                 "--method", "mean_teacher", "--iterations", "3", "--val-cases", "0", "--out", str(out),
                 "--seed", str(seed), *TINY_TRAIN])
    assert code == 0
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def test_same_seed_same_model(phantom_data, tmp_path):
    first = _train(phantom_data, tmp_path / "a", seed=11)
    second = _train(phantom_data, tmp_path / "b", seed=11)
    other = _train(phantom_data, tmp_path / "c", seed=12)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
