"""The browser UI clicked through in a real browser (Debian Chromium + playwright) against a
real `sslsegment serve` on tiny phantoms: paint with a mouse drag, train, watch the
progress, see the prediction overlaid, correct it, retrain, export; and the secret.

Screenshots go to ``$SSLSEGMENT_SCREENSHOTS`` when set (the README's come from here).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import psutil
import pytest

from web_browser import Server, chromium_path, image_stats, missing_browser_reason

from SSLSegmentLib import measured_gain
from SSLSegmentLib.catalogue import DEFAULT_METHOD, measured_figures

pytestmark = pytest.mark.skipif(missing_browser_reason() is not None,
                                reason=f"browser UI tests: {missing_browser_reason()}")

TINY_SERVE = ("--iterations", "12", "--size", "tiny", "--dim", "3", "--device", "cpu", "--patch-size", "16,32,32")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from SSLSegmentLib.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("web_phantoms")
    return write_phantom_dataset(root, n_labelled=1, n_unlabelled=3, n_test=0, shape=(16, 32, 32), seed=3)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _shot(page, tmp_path: Path, name: str, element=None) -> bytes:
    folder = Path(os.environ.get("SSLSEGMENT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return (element or page).screenshot(path=str(folder / f"{name}.png"))


def _axial(page):
    return page.locator("#views .remote-controlled-area").first


def _view_when(page, tmp_path, name, ready, timeout_s=30.0, element=0) -> dict:
    """Screenshots of a view (the axial one by default) until ``ready(stats)`` (frames stream
    in); the last stats."""
    stats = {}
    for _ in range(int(timeout_s / 0.5)):
        view = page.locator("#views .remote-controlled-area").nth(element)
        stats = image_stats(_shot(page, tmp_path, name, view))
        if ready(stats):
            return stats
        page.wait_for_timeout(500)
    return stats


def _drag(page, box, dx0, dy0, dx1, dy1, steps=12):
    """A real mouse drag inside ``box``, from and to fractions of its size."""
    page.mouse.move(box["x"] + dx0 * box["width"], box["y"] + dy0 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + dx1 * box["width"], box["y"] + dy1 * box["height"], steps=steps)
    page.mouse.up()


def _voxels(page, name: str) -> int:
    return int(page.locator(f"#row-{name} .voxels").inner_text())


def _voxels_when(page, name: str, ready, timeout_s: float = 15.0) -> int:
    """The Data table's voxel count of ``name`` once ``ready(count)`` (the server polls)."""
    count = _voxels(page, name)
    for _ in range(int(timeout_s / 0.25)):
        if ready(count):
            break
        page.wait_for_timeout(250)
        count = _voxels(page, name)
    return count


def _choose_paint(page):
    page.click("#tab-label")
    page.locator("button:has(i.mdi-brush)").first.click()
    page.wait_for_selector("button.v-btn--active:has(i.mdi-brush)", timeout=10_000)
    page.wait_for_timeout(500)


def _wait_for_file(path: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.25)


def _wait_for_progress(run_dir: Path, seen, timeout_s: float = 120.0) -> None:
    """Until a record of the run's progress satisfies ``seen``, and a training step follows it."""
    from SSLSegmentLib.run_protocol import read_progress  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    while True:
        records = read_progress(run_dir)
        marks = [i for i, r in enumerate(records) if seen(r)]
        if marks and any("iteration" in r and "elapsed_s" in r for r in records[marks[-1] + 1:]):
            return
        assert time.monotonic() < deadline, f"not seen in {run_dir}: {records[-3:]}"
        time.sleep(0.25)


def _wait_round_done(page, round_number: int, timeout_ms: int = 240_000) -> list[str]:
    """Watch the progress while a round runs; the texts seen (ends on the Results tab)."""
    seen = []
    deadline_polls = timeout_ms // 250
    for _ in range(deadline_polls):
        text = page.locator("#train-text").inner_text()
        if not seen or seen[-1] != text:
            seen.append(text)
        if page.locator("#error-text").count():
            raise AssertionError(f"error on the page: {page.locator('#error-text').inner_text()}; seen {seen}")
        if f"Round {round_number}: done" in text:
            return seen
        page.wait_for_timeout(250)
    raise AssertionError(f"round {round_number} did not finish; seen {seen}")


def _phantom_server(phantoms, tmp_path: Path) -> Server:
    """A server on the phantoms, its jobs in ``tmp_path/jobs`` (one per start: a restart)."""
    return Server("--images", str(phantoms["images"]), "--labels", str(phantoms["labels"]),
                  "--jobs-dir", str(tmp_path / "jobs"), *TINY_SERVE, cwd=tmp_path)


def _train_tab(browser, server: Server):
    """A new page on ``server``, on its Train tab."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url)
    page.click("#tab-train")
    return page


@pytest.mark.slow
def test_whole_loop_in_a_real_browser(phantoms, browser, tmp_path):
    server = _phantom_server(phantoms, tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        page.goto(server.url)
        page.wait_for_selector("#row-case_000")
        assert page.locator("#row-case_000").inner_text().split()[:2] == ["case_000", "labelled"]
        first = _view_when(page, tmp_path, "01-axial-labels", lambda s: s["std"] > 10 and s["coloured"] > 0.01)
        _shot(page, tmp_path, "01-data-and-labels")

        # The optional 3D view: the labels as coloured surfaces.
        page.click("#toggle-3d")
        expect(page.locator("#views .remote-controlled-area")).to_have_count(4, timeout=15_000)
        threed = _view_when(page, tmp_path, "01-3d", lambda s: s["coloured"] > 0.005, element=1)
        assert threed["coloured"] > 0.005, f"no surfaces in the 3D view: {threed}"
        page.click("#toggle-3d")
        expect(page.locator("#views .remote-controlled-area")).to_have_count(3, timeout=15_000)
        assert first["std"] > 10, f"axial view blank: {first}"
        assert first["coloured"] > 0.01, f"labels of case_000 not overlaid: {first}"

        # Label: paint on unlabelled case_001 with a real mouse drag.
        page.click("#open-case_001")
        page.wait_for_timeout(800)
        assert _voxels(page, "case_001") == 0
        _choose_paint(page)
        _drag(page, _axial(page).bounding_box(), 0.35, 0.45, 0.65, 0.55)
        painted = _voxels_when(page, "case_001", lambda n: n > 20)
        page.click("#tab-data")
        assert painted > 20, f"the drag painted {painted} voxels"
        expect(page.locator("#row-case_001")).to_contain_text("labelled", timeout=10_000)
        _shot(page, tmp_path, "02-painted")

        # The method list says what the bench measured: the default's figures under the select,
        # and a method worse than supervised-only says so in the list.
        page.click("#tab-train")
        expect(page.get_by_text(f"gap closed: {measured_figures(DEFAULT_METHOD)}")).to_be_visible(timeout=10_000)
        page.locator("#method").click(force=True)
        expect(page.locator(".v-overlay .v-list-item").first).to_be_visible(timeout=10_000)
        below = next(iter(measured_gain.BELOW_SUPERVISED))
        expect(page.locator(".v-overlay .v-list-item", has_text=below)).to_contain_text(
            "worse than supervised-only", timeout=10_000)
        _shot(page, tmp_path, "02-method-list")
        page.keyboard.press("Escape")

        # Cancel stops the training process tree, past its first checkpoint (every 200
        # iterations); Resume round goes on from it, and is cancelled again. Then train for real.
        page.fill("#iterations", "100000")
        page.click("#train-btn")
        expect(page.locator("#train-text")).to_contain_text("iteration", timeout=120_000)
        expect(page.locator("#resume-btn")).to_be_hidden()
        first_job = next((tmp_path / "jobs").iterdir())
        _wait_for_file(first_job / "rounds" / "001" / "checkpoint_resume.pt")
        page.click("#cancel-btn")
        expect(page.locator("#train-text")).to_contain_text("Round 1: cancelled", timeout=30_000)
        assert psutil.Process(server.process.pid).children(recursive=True) == []
        expect(page.locator("#resume-btn")).to_be_visible(timeout=10_000)
        _shot(page, tmp_path, "02-resumable")
        page.click("#resume-btn")
        expect(page.locator("#resume-btn")).to_be_hidden(timeout=10_000)
        _wait_for_progress(first_job / "rounds" / "001", lambda r: r.get("event") == "resumed")
        page.click("#cancel-btn")
        expect(page.locator("#train-text")).to_contain_text("Round 1: cancelled", timeout=30_000)
        page.fill("#iterations", TINY_SERVE[1])

        # Train: watch the progress bar and the text move.
        page.click("#train-btn")
        seen = _wait_round_done(page, 1)
        assert any("iteration" in text for text in seen), f"no live progress seen: {seen}"
        page.wait_for_selector("#result-case_003", timeout=30_000)
        prediction = _view_when(page, tmp_path, "03-prediction-axial",
                                lambda s: s["std"] > 10 and s["coloured"] > 0.005)
        results = _shot(page, tmp_path, "03-results")
        assert prediction["std"] > 10 and prediction["coloured"] > 0.005, f"no prediction overlay: {prediction}"
        assert image_stats(results)["std"] > 10
        ranked = [row.get_attribute("id").removeprefix("result-")
                  for row in page.locator("#results-table tbody tr").all()]
        confidences = [float(row.inner_text().split()[1]) for row in page.locator("#results-table tbody tr").all()]
        assert sorted(ranked) == ["case_002", "case_003"] and confidences == sorted(confidences), (ranked, confidences)
        least, other = ranked

        # Correct the least confident prediction, mark it corrected, retrain from the last model.
        page.click(f"#show-{least}")
        page.wait_for_timeout(800)
        _choose_paint(page)
        _drag(page, _axial(page).bounding_box(), 0.2, 0.2, 0.3, 0.25)
        page.wait_for_timeout(800)
        page.click("#tab-results")
        page.click(f"#correct-{least}")
        expect(page.locator(f"#result-{least}")).to_contain_text("yes", timeout=15_000)
        page.click("#retrain-btn")
        _wait_round_done(page, 2)
        expect(page.locator("#results-table")).to_contain_text(other, timeout=30_000)

        # Export: a zip download, and the same files on the server.
        page.click("#tab-export")
        with page.expect_download(timeout=60_000) as download_info:
            page.click("#export-btn")
        archive = tmp_path / "export.zip"
        download_info.value.save_as(archive)
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            manifest = json.loads(z.read(next(n for n in names if n.endswith("manifest.json"))))
        assert {n.split("/")[-1] for n in names} >= {f"{least}.seg.nrrd", f"{other}.seg.nrrd", "manifest.json",
                                                     "manifest.csv"}, names
        rows = {row["case"]: row for row in manifest["cases"]}
        assert [c["name"] for c in manifest["classes"]] == ["organ", "lesion"]
        # The person's correction is exported as they left it (round 1's node, corrected);
        # the other volume has round 2's prediction.
        assert rows[least]["corrected"] is True and rows[least]["modelRound"] == 1
        assert rows[other]["corrected"] is False and rows[other]["modelRound"] == 2
        exported = Path(page.locator("#export-folder").inner_text().split(" to ", 1)[1])
        assert (exported / "manifest.json").exists() and (exported / f"{other}.seg.nrrd").exists()
        _shot(page, tmp_path, "04-export")
    finally:
        server.stop()
    # Round 2 trained on the person's labels, their painting and the corrected prediction.
    from SSLSegmentLib.jobs import JobFolder

    cancelled, trained = sorted((tmp_path / "jobs").iterdir())
    assert JobFolder(cancelled).history()[-1]["state"] == "cancelled"
    assert len(JobFolder(cancelled).read_round(1)["resumed"]) == 1  # the same round went on
    round2 = JobFolder(trained).read_round(2)
    assert round2["cases"][least]["corrected"] and round2["cases"]["case_001"]["label"]
    assert round2["unlabelled"] == [other]

    # The server restarts on the same scans and jobs folder: the past rounds are listed, and
    # opening the trained job brings its last round's results back onto the scans loaded again.
    server = _phantom_server(phantoms, tmp_path)
    try:
        page = _train_tab(browser, server)
        expect(page.locator(f"#past-{cancelled.name}")).to_contain_text("cancelled (can resume)", timeout=30_000)
        expect(page.locator(f"#past-{trained.name}")).to_contain_text("done", timeout=10_000)
        _shot(page, tmp_path, "05-past-rounds")
        page.click(f"#open-round-{trained.name}")
        expect(page.locator("#message-text")).to_contain_text(f"Opened {trained.name}, round 2", timeout=30_000)
        expect(page.locator(f"#result-{other}")).to_be_visible(timeout=30_000)
        _shot(page, tmp_path, "05-reopened")
        # A round trains when the server crashes: its process lives on.
        page.click("#tab-train")
        page.fill("#iterations", "100000")
        page.click("#train-btn")
        expect(page.locator("#train-text")).to_contain_text("Round 1: iteration", timeout=120_000)
        server.crash()
    finally:
        server.stop()
    from SSLSegmentLib.run_protocol import read_status

    (orphaned,) = set((tmp_path / "jobs").iterdir()) - {cancelled, trained}
    training = psutil.Process(read_status(orphaned / "rounds" / "001")["pid"])
    assert training.is_running()
    # Started again, the server lists that round as running; opened, it is followed, and Cancel stops it.
    server = _phantom_server(phantoms, tmp_path)
    try:
        page = _train_tab(browser, server)
        expect(page.locator(f"#past-{orphaned.name}")).to_contain_text("running", timeout=30_000)
        page.click(f"#open-round-{orphaned.name}")
        expect(page.locator("#message-text")).to_contain_text("round 1: running", timeout=30_000)
        expect(page.locator("#train-text")).to_contain_text("Round 1: iteration", timeout=30_000)
        _shot(page, tmp_path, "06-followed")
        page.click("#cancel-btn")
        expect(page.locator("#train-text")).to_contain_text("Round 1: cancelled", timeout=60_000)
        expect(page.locator("#resume-btn")).to_be_visible(timeout=10_000)
    finally:
        server.stop()
    training.wait(30)


def test_listening_beyond_loopback_needs_the_secret(phantoms, browser, tmp_path):
    server = Server("--host", "0.0.0.0", "--allow-remote", "--secret", "a-test-secret-of-24-chars",
                    "--images", str(phantoms["images"]), "--max-upload-mb", "1", cwd=tmp_path)
    try:
        bare = f"http://127.0.0.1:{server.port}/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bare + "index.html", timeout=10)
        assert refused.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as refused_ws:
            urllib.request.urlopen(urllib.request.Request(bare + "ws", headers={
                "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}), timeout=10)
        assert refused_ws.value.code == 403
        page = browser.new_page()
        response = page.goto(bare)
        assert response.status == 403 and "secret" in page.content()
        page.goto(server.url)  # the printed address carries the secret: the page and its websocket work
        page.wait_for_selector("#row-case_000", timeout=30_000)
        # Uploads: a scan is added to the list; past the size bound, a clear message.
        upload = tmp_path / "uploaded_scan.nrrd"
        upload.write_bytes((phantoms["images"] / "case_001.nrrd").read_bytes())
        page.set_input_files("#upload", str(upload))
        page.wait_for_selector("#row-uploaded_scan", timeout=30_000)
        too_big = tmp_path / "too_big.nrrd"
        too_big.write_bytes(b"\0" * (2 * 1024 * 1024))
        page.set_input_files("#upload", str(too_big))
        expect(page.locator("#error-text")).to_contain_text("more than 1 MiB", timeout=10_000)
    finally:
        server.stop()


SNAP_SCRIPT = """
import os, sys
os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
from pathlib import Path
from trame.app import get_server
from SSLSegmentLib.web.app import WebApp
from SSLSegmentLib.web.server import ServeOptions
app = WebApp(ServeOptions(images=Path(sys.argv[1])), get_server("snap"))
app.load_initial_data()
axial = next(v for v in app.views.slice_views if v.get_orientation() == "Axial")
axial.set_slice_value(float(sys.argv[2]))
print("offset", axial.get_slice_value())
"""


def test_slice_positions_snap_to_voxel_centres(phantoms, tmp_path):
    """A position between two voxel centres (where a stroke could land on either slice) is
    moved to the nearest centre; in a child process: rendering set-up needs its own."""
    import subprocess
    import sys

    from SSLSegmentLib.phantoms import PHANTOM_ORIGIN, PHANTOM_SPACING

    origin_s, spacing_s = PHANTOM_ORIGIN[2], PHANTOM_SPACING[2]
    between = origin_s + spacing_s * 5 + 0.4 * spacing_s
    result = subprocess.run([sys.executable, "-c", SNAP_SCRIPT, str(phantoms["images"]), str(between)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    lines = [line for line in result.stdout.splitlines() if line.startswith("offset")]
    assert lines, result.stderr[-3000:]
    offset = float(lines[-1].split()[1])
    assert offset == pytest.approx(origin_s + spacing_s * 5, abs=1e-3), (offset, between)
