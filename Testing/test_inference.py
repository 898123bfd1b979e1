"""Sliding-window inference reassembles a volume exactly where the network is local."""

import numpy as np
import torch

from SSLSegmentLib.inference import confidence, predict_probabilities


def _pointwise(dim: int) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 1) if dim == 3 else torch.nn.Conv2d(1, 3, 1)
    return conv.eval()


def test_3d_sliding_window_equals_one_pass():
    image = np.random.default_rng(0).normal(size=(20, 37, 45)).astype(np.float32)
    net = _pointwise(3)
    tiled = predict_probabilities(net, image, 3, (16, 16, 16), torch.device("cpu"), overlap=0.5)
    with torch.no_grad():
        whole = torch.softmax(net(torch.from_numpy(image)[None, None]), 1)[0].numpy()
    assert tiled.shape == (3, 20, 37, 45)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_2d_sliding_window_goes_slice_by_slice():
    image = np.random.default_rng(1).normal(size=(40, 33, 50)).astype(np.float32)
    net = _pointwise(2)
    tiled = predict_probabilities(net, image, 2, (16, 32), torch.device("cpu"))
    with torch.no_grad():
        whole = torch.softmax(net(torch.from_numpy(image)[:, None]), 1).permute(1, 0, 2, 3).numpy()
    assert tiled.shape == (3, 40, 33, 50)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_confidence_ignores_background():
    probabilities = np.zeros((2, 1, 2, 2), np.float32)
    probabilities[0] = 1.0  # confident background everywhere...
    probabilities[:, 0, 0, 0] = (0.4, 0.6)  # ...but a hesitant foreground voxel
    label = probabilities.argmax(0)
    assert confidence(probabilities, label) == np.float32(0.6)
