"""A full disk or a read-only folder never publishes an empty or truncated file (issue 13, item 9).

SimpleITK's NIfTI writer does not raise when the disk fills (it prints "NWAD: wrote only 0 of
N bytes" and returns), and the atomic rename would publish the truncated file under its
final name. The real cases use a tiny tmpfs in a private mount namespace (``unshare -rm``,
no root needed where user namespaces are allowed); the others replace the writer with one
that writes nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from SSLSegmentLib.data import ClassInfo, Geometry
from SSLSegmentLib.data.io import write_image
from SSLSegmentLib.data.labels import write_labelmap, write_segmentation
from SSLSegmentLib.errors import OutputError
from SSLSegmentLib.fileio import atomic_write_json

GEOMETRY = Geometry.from_array_shape((32, 64, 64), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
NOISE = np.random.default_rng(0).normal(size=GEOMETRY.shape_zyx).astype(np.float32)  # 512 KiB, incompressible


def _writes_nothing(image, path, *args, **kwargs):
    open(path, "wb").close()  # what a writer that ignores ENOSPC leaves behind


def _writes_half(image, path, *args, **kwargs):
    _real_write(image, path, *args, **kwargs)
    with open(path, "r+b") as f:
        f.truncate(max(1, f.seek(0, 2) // 2))


_real_write = sitk.WriteImage


@pytest.mark.parametrize("writer", [_writes_nothing, _writes_half])
@pytest.mark.parametrize("name", ["image.nrrd", "image.nii.gz", "image.nhdr"])
def test_a_silently_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, writer, name):
    target = tmp_path / name
    write_image(target, np.zeros(GEOMETRY.shape_zyx, np.float32), GEOMETRY)
    before = target.read_bytes()
    monkeypatch.setattr(sitk, "WriteImage", writer)
    with pytest.raises(OutputError, match=name.replace(".", r"\.")):
        write_image(target, NOISE, GEOMETRY)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_empty_segmentation_or_labelmap_is_never_published(tmp_path, monkeypatch):
    import slicerio

    label = (NOISE > 1).astype(np.uint8)
    monkeypatch.setattr(slicerio, "write_segmentation", lambda path, *a, **k: open(path, "wb").close())
    with pytest.raises(OutputError, match=r"case\.seg\.nrrd.*disk full"):
        write_segmentation(tmp_path / "case.seg.nrrd", label, GEOMETRY, [ClassInfo("organ")])
    monkeypatch.setattr(sitk, "WriteImage", _writes_nothing)
    with pytest.raises(OutputError, match=r"case\.nrrd"):
        write_labelmap(tmp_path / "case.nrrd", label, GEOMETRY)
    assert list(tmp_path.iterdir()) == []


def _in_tiny_filesystem(script: str, tmp_path, options: str = "size=64k",
                        more: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` (Python) with a fresh tmpfs mounted at ``tmp_path / 'disk'`` (and one at
    ``tmp_path / name`` for each ``name: options`` of ``more``), in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    mounts = {"disk": options, **(more or {})}
    for name in mounts:
        (tmp_path / name).mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path / 'disk'}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    mount = " && ".join(f"mount -t tmpfs -o {opts} tmpfs '{tmp_path / name}'" for name, opts in mounts.items())
    code = f"import sys; sys.path.insert(0, {str(__import__('helpers').ROOT)!r})\n" + textwrap.dedent(script)
    return subprocess.run(["unshare", "-rm", "sh", "-c", f'{mount} && exec "$0" -c "$1"', sys.executable, code],
                          capture_output=True, text=True, timeout=300)


def test_a_really_full_disk_names_the_file_and_publishes_nothing(tmp_path):
    result = _in_tiny_filesystem("""
        import numpy as np, os
        from SSLSegmentLib.data import Geometry
        from SSLSegmentLib.data.io import write_image
        from SSLSegmentLib.errors import OutputError
        from SSLSegmentLib.fileio import atomic_write_json
        g = Geometry.from_array_shape((32, 64, 64), (1, 1, 1.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        noise = np.random.default_rng(0).normal(size=g.shape_zyx).astype(np.float32)
        for name in ("image.nii.gz", "image.nii", "image.nrrd", "image.mha"):
            try:
                write_image(f"{DISK}/{name}", noise, g)
                print(name, "NO ERROR")
            except OutputError as error:
                print(name, "refused:", error)
        try:
            atomic_write_json(f"{DISK}/big.json", ["x" * 1000] * 200)
            print("big.json NO ERROR")
        except OutputError as error:
            print("big.json refused:", error)
        print("left:", sorted(os.listdir("{DISK}")))
    """.replace("{DISK}", str(tmp_path / "disk")), tmp_path)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    for name in ("image.nii.gz", "image.nii", "image.nrrd", "image.mha", "big.json"):
        assert f"{name} refused: {tmp_path / 'disk' / name}" in out, out
    assert "NO ERROR" not in out and "left: []" in out, out
    assert "disk" in out and "full" in out


def test_a_read_only_folder_is_named(tmp_path):
    result = _in_tiny_filesystem(f"""
        from SSLSegmentLib.errors import OutputError
        from SSLSegmentLib.fileio import atomic_write_json
        try:
            atomic_write_json({str(tmp_path / 'disk' / 'a.json')!r}, {{"a": 1}})
        except OutputError as error:
            print("refused:", error)
    """, tmp_path, options="ro,size=64k")
    assert f"refused: {tmp_path / 'disk' / 'a.json'}" in result.stdout and "read-only" in result.stdout, result


def test_json_text_written_in_full(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"a": 1})
    assert (tmp_path / "a.json").read_text().strip().endswith("}")
