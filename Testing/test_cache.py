"""The disk cache of preprocessed cases, and patch sampling from its memory maps."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from SSLSegmentLib.cache import PreprocessCache, case_key, default_cache_dir
from SSLSegmentLib.config import TrainConfig
from SSLSegmentLib.data.cases import discover_dataset, load_labelled_case
from SSLSegmentLib.preprocessing import preprocess
from SSLSegmentLib.sampling import BatchStream, PatchSampler, pad_to, read_window
from SSLSegmentLib.training.data_setup import prepare_training_data

LOG = logging.getLogger("test_cache")


@pytest.fixture
def data(phantom_data, tmp_path):
    """A private copy of the phantoms (one test edits a file)."""
    shutil.copytree(phantom_data["images"], tmp_path / "images")
    shutil.copytree(phantom_data["labels"], tmp_path / "labels")
    return tmp_path


def _prepare(root, cache_dir, **config):
    dataset = discover_dataset(root / "images", root / "labels")
    config = TrainConfig(size="tiny", dim="3", patch_size=(16, 32, 32), val_cases=1, **config).resolved("cpu")
    return prepare_training_data(dataset, config, LOG, cache_dir=cache_dir)[0]


def test_cache_is_reused_then_rebuilt_when_a_source_changes(data, tmp_path):
    cache = tmp_path / "cache"
    first = _prepare(data, cache)
    assert first.cache == {"dir": str(cache), "reused": 0, "built": 5}
    assert _prepare(data, cache).cache["reused"] == 5
    # a new image: only that case is preprocessed again
    path = data / "images" / "case_003.nrrd"
    image = sitk.ReadImage(str(path))
    changed = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) * 2.0 + 1.0)
    changed.CopyInformation(image)
    sitk.WriteImage(changed, str(path))
    again = _prepare(data, cache)
    assert again.cache["reused"] == 4 and again.cache["built"] == 1
    # another preprocessing setting: every case is preprocessed again
    assert _prepare(data, cache, normalisation="ct").cache["built"] == 5


def test_cached_arrays_are_memory_maps_of_the_preprocessed_case(data, tmp_path):
    prepared = _prepare(data, tmp_path / "cache")
    case = prepared.train[0]
    assert isinstance(case.image, np.memmap) and isinstance(case.label, np.memmap)
    source = next(c for c in discover_dataset(data / "images", data / "labels").labelled if c.name == case.name)
    image, label, geometry = load_labelled_case(source, prepared.classes)
    expected_image, expected_label, _ = preprocess(image, geometry, prepared.plan, label)
    assert np.array_equal(case.image, expected_image) and np.array_equal(case.label, expected_label)
    points = case.foreground()
    assert set(points) == set(np.unique(expected_label)) - {0}
    assert all((expected_label[tuple(p.T)] == value).all() for value, p in points.items())
    assert all(not c.labelled for c in prepared.unlabelled)


def test_keys_follow_files_settings_and_label_names(phantom_data):
    from SSLSegmentLib.preprocessing import Plan

    plan = Plan(3, (1.0, 1.0, 1.5))
    from SSLSegmentLib.phantoms import PHANTOM_CLASSES

    base = case_key("a" * 64, "b" * 64, plan, PHANTOM_CLASSES)
    assert base == case_key("a" * 64, "b" * 64, plan, PHANTOM_CLASSES)
    assert base != case_key("c" * 64, "b" * 64, plan, PHANTOM_CLASSES)
    assert base != case_key("a" * 64, "b" * 64, Plan(3, (1.0, 1.0, 2.0)), PHANTOM_CLASSES)
    assert base != case_key("a" * 64, "b" * 64, plan, PHANTOM_CLASSES, {1: "lesion", 2: "organ"})
    assert base != case_key("a" * 64, None, plan, PHANTOM_CLASSES)


def test_default_cache_dir_is_beside_the_run_or_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SSLSEGMENT_CACHE", raising=False)
    assert default_cache_dir(tmp_path / "rounds" / "001") == (tmp_path / "rounds" / ".sslsegment-cache").resolve()
    monkeypatch.setenv("SSLSEGMENT_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir(tmp_path / "run") == tmp_path / "elsewhere"


def test_a_half_written_entry_is_never_read(data, tmp_path):
    prepared = _prepare(data, tmp_path / "cache")
    folder = prepared.train[0].folder
    (folder / "meta.json").unlink()  # as if the process died before the last file
    assert PreprocessCache(tmp_path / "cache").get(None, folder.name) is None
    assert _prepare(data, tmp_path / "cache").cache["built"] == 1


def test_windows_read_from_a_map_equal_crops_of_the_padded_volume():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(5, 9, 12)).astype(np.float32)
    patch = (8, 8, 16)
    padded = pad_to(volume, patch)
    offsets = [max(0, p - s) // 2 for p, s in zip(patch, volume.shape)]
    for _ in range(20):
        starts = [int(rng.integers(max(s, p) - p + 1)) for s, p in zip(volume.shape, patch)]
        window = [(a - o, a - o + p) for a, o, p in zip(starts, offsets, patch)]
        expected = padded[tuple(slice(a, a + p) for a, p in zip(starts, patch))]
        assert np.array_equal(read_window(volume, (), window, np.float32), expected)


def test_sampling_from_the_cache_equals_sampling_from_memory(data, tmp_path):
    prepared = _prepare(data, tmp_path / "cache")
    cases = prepared.train
    mapped = PatchSampler.from_cache(cases, (16, 32, 32), 3, foreground_fraction=0.5)
    in_memory = PatchSampler([np.array(c.image) for c in cases], [np.array(c.label) for c in cases], (16, 32, 32), 3,
                             foreground_fraction=0.5)
    a, b = mapped.sample(4, np.random.default_rng(5)), in_memory.sample(4, np.random.default_rng(5))
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    assert a["label"].dtype == np.int64


def test_worker_processes_stream_batches_from_the_cache(data, tmp_path):
    prepared = _prepare(data, tmp_path / "cache")
    labelled = PatchSampler.from_cache(prepared.train, (16, 32, 32), 3)
    unlabelled = PatchSampler.from_cache(prepared.unlabelled, (16, 32, 32), 3, labelled=False)
    stream = BatchStream(labelled, unlabelled, (2, 1), seed=0, num_workers=2)
    batches = iter(stream)
    first, second = next(batches), next(batches)
    stream.close()
    assert tuple(first[0]["image"].shape) == (2, 1, 16, 32, 32) and tuple(first[1]["image"].shape) == (1, 1, 16, 32, 32)
    assert "label" not in first[1] and first[0]["label"].dtype.is_floating_point is False
    assert not np.array_equal(first[0]["image"].numpy(), second[0]["image"].numpy())  # workers differ
