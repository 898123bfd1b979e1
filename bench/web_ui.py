"""Figures of the browser UI (`sslsegment serve`) in Debian's Chromium, on ACDC volumes.

Prints JSON then a markdown table, and writes both to ``bench/results/web_ui.{json,md}``:

- **start to first image**: from starting `sslsegment serve` with one ACDC volume (and its
  labels) to the first axial frame in the browser that is not blank (server start-up, page
  load, first render and its streaming);
- **resident memory with 20 volumes**: the server's RSS once the page shows 20 ACDC
  volumes in the Data list (one shown in the views), against the same with one volume;
- **paint stroke to render**: from the mouse-up of a short paint drag on the axial view to
  the first screenshot of that view that shows the new paint, median of ``--strokes``.

    .venv/bin/python bench/web_ui.py [--data ../shared/data/ACDC/train] [--strokes 5] [--shots DIR]

Software rendering (Mesa through EGL); the screenshots are taken by polling every 50 ms, so
latencies include up to one poll interval.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

from web_browser import Server, chromium_path, image_stats, missing_browser_reason  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ACDC" / "train"
CLASSES = "RV,Myo,LV"


def linked_folder(data: Path, count: int, into: Path) -> tuple[Path, Path]:
    """``count`` ACDC cases (images and labels) linked into fresh folders (nothing copied)."""
    images, labels = into / "images", into / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for path in sorted((data / "images").glob("*.nrrd"))[:count]:
        (images / path.name).symlink_to(path)
        (labels / path.name).symlink_to(data / "labels" / path.name)
    return images, labels


def axial(page):
    return page.locator("#views .remote-controlled-area").first


def wait_for_view(page, ready, timeout_s: float = 120.0, interval_ms: int = 50) -> tuple[float, dict]:
    """When the axial view first satisfies ``ready`` (chroma over 20: the translucent paint
    on a dark scan is faintly coloured)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        stats = image_stats(axial(page).screenshot(), chroma_threshold=20)
        if ready(stats):
            return time.perf_counter(), stats
        page.wait_for_timeout(interval_ms)
    raise TimeoutError("the view never showed what was waited for")


def server_rss_mb(server: Server) -> float:
    process = psutil.Process(server.process.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def start_to_first_image(browser, data: Path, work: Path, shots: Path | None) -> dict:
    images, labels = linked_folder(data, 1, work / "one")
    started = time.perf_counter()
    server = Server("--images", str(images), "--labels", str(labels), "--classes", CLASSES, cwd=work)
    announced = time.perf_counter()
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(server.url)
        page.wait_for_selector("#views .remote-controlled-area")
        shown, stats = wait_for_view(page, lambda s: s["std"] > 10)
        page.wait_for_timeout(1500)
        if shots:
            page.screenshot(path=str(shots / "web-acdc-data.png"))
        rss = server_rss_mb(server)
        page.close()
    finally:
        server.stop()
    return {"start_to_first_image_s": round(shown - started, 2), "start_to_listening_s": round(announced - started, 2),
            "rss_1_volume_mb": round(rss), "first_image_stats": stats}


def rss_with_volumes(browser, data: Path, work: Path, count: int) -> dict:
    images, labels = linked_folder(data, count, work / f"many{count}")
    server = Server("--images", str(images), "--labels", str(labels), "--classes", CLASSES, cwd=work, timeout_s=300)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(server.url)
        page.wait_for_selector(f"#volume-table tbody tr:nth-child({count})", timeout=120_000)
        wait_for_view(page, lambda s: s["std"] > 10)
        time.sleep(2)
        rss = server_rss_mb(server)
        page.close()
    finally:
        server.stop()
    return {f"rss_{count}_volumes_mb": round(rss), "volumes_listed": count}


def paint_latency(browser, data: Path, work: Path, strokes: int, shots: Path | None) -> dict:
    images, _ = linked_folder(data, 1, work / "paint")
    server = Server("--images", str(images), cwd=work)
    latencies = []
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(server.url)
        page.wait_for_selector("#views .remote-controlled-area")
        wait_for_view(page, lambda s: s["std"] > 10)
        page.click("#tab-label")
        page.locator("button:has(i.mdi-brush)").first.click()
        page.wait_for_selector("button.v-btn--active:has(i.mdi-brush)")
        page.wait_for_timeout(1000)
        box = axial(page).bounding_box()
        for index in range(strokes):
            before = image_stats(axial(page).screenshot(), chroma_threshold=20)["coloured"]
            y = box["y"] + box["height"] * (0.3 + 0.1 * index)
            page.mouse.move(box["x"] + 0.35 * box["width"], y)
            page.mouse.down()
            page.mouse.move(box["x"] + 0.45 * box["width"], y, steps=5)
            page.mouse.up()
            released = time.perf_counter()
            shown, _ = wait_for_view(page, lambda s, b=before: s["coloured"] > b + 0.0005, timeout_s=30)
            latencies.append(shown - released)
            page.wait_for_timeout(300)
        if shots:
            page.screenshot(path=str(shots / "web-acdc-painted.png"))
        page.close()
    finally:
        server.stop()
    return {"paint_to_render_median_s": round(statistics.median(latencies), 3),
            "paint_to_render_s": [round(x, 3) for x in latencies]}


def markdown(figures: dict) -> str:
    rows = [("Server start to first image (1 ACDC volume with labels)", f"{figures['start_to_first_image_s']} s"),
            ("  of which: start to listening", f"{figures['start_to_listening_s']} s"),
            ("Server resident memory, 1 volume", f"{figures['rss_1_volume_mb']} MiB"),
            ("Server resident memory, 20 volumes listed", f"{figures['rss_20_volumes_mb']} MiB"),
            ("Paint stroke to render (median of strokes)", f"{figures['paint_to_render_median_s']} s")]
    lines = ["| figure | value |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]
    lines.append(f"\n{figures['machine']}; Chromium {figures['chromium']}; software rendering (Mesa EGL); "
                 f"1-minute load average {figures['load_average_1min_at_start']} at the start and "
                 f"{figures['load_average_1min_at_end']} at the end (the machine is shared: a load above "
                 "2 means other work competed for the 2 cores).")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--strokes", type=int, default=5)
    parser.add_argument("--shots", type=Path, help="also save screenshots here")
    args = parser.parse_args()
    reason = missing_browser_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sslsegment-web-bench-"))
    figures = {"machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {platform.python_version()}",
               "load_average_1min_at_start": round(os.getloadavg()[0], 1)}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
            figures["chromium"] = browser.version
            figures.update(start_to_first_image(browser, args.data, work, args.shots))
            figures.update(rss_with_volumes(browser, args.data, work, 20))
            figures.update(paint_latency(browser, args.data, work, args.strokes, args.shots))
            browser.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures.pop("first_image_stats", None)
    figures["load_average_1min_at_end"] = round(os.getloadavg()[0], 1)
    results = ROOT / "bench" / "results"
    (results / "web_ui.json").write_text(json.dumps(figures, indent=2) + "\n")
    (results / "web_ui.md").write_text(markdown(figures) + "\n")
    print(json.dumps(figures, indent=2))
    print(markdown(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
