"""How big the error browser gets and how fast it renders in headless Chromium (a figure, not a test).

``python -m benchmarks.error_browser --model <checkpoint | exported folder | run id> --manifest <manifest.jsonl>
[--sizes 100 1000 10000] [--out error_browser_bench.json]``

Predicts the manifest once (``broadclass.predict``, references included), then builds the page from those records
repeated, under new ids, up to each size: the first size with audio (the configured limits), the larger ones
without (``max_audio_utterances=0``: the table's cost alone). Each page is opened from a file in Debian's Chromium
(Playwright, offline) and timed: load until the table is drawn, a click on the largest category-confusion cell
until the table is filtered, a click on the TER header until it is sorted, a row's detail. Prints a Markdown table
and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from broadclass.predict import collect, predict
from broadclass.tracking.error_browser import BrowserLimits, prediction_page, write_page
from broadclass.tracking.run_model import load_model


def timed_click(page, selector: str, until: str) -> float:
    """Milliseconds from a click on ``selector`` until the JavaScript condition ``until`` holds."""
    start = time.perf_counter()
    page.click(selector)
    page.wait_for_function(until)
    return 1000 * (time.perf_counter() - start)


def measure(browser, path: Path, data: dict) -> dict:
    context = browser.new_context(offline=True, viewport={"width": 1600, "height": 1100})
    page = context.new_page()
    start = time.perf_counter()
    page.goto(path.as_uri())
    page.wait_for_selector("#utterances tbody tr")
    load_ms = 1000 * (time.perf_counter() - start)
    confusion = np.asarray(data["category_confusion"][0])
    row, col = max(np.ndindex(confusion.shape), key=lambda rc: confusion[rc])
    count = int(confusion[row, col])
    cell = f'td[data-matrix="category"][data-row="{row}"][data-col="{col}"]'
    filter_ms = timed_click(page, cell, f"document.getElementById('shown').dataset.count == '{count}'")
    page.click("#clear-cell")
    sort_ms = timed_click(
        page, 'th[data-column="TER"]', "document.querySelector('th[data-column=\"TER\"]').textContent.includes('▼')"
    )
    detail_ms = timed_click(page, "#utterances tbody tr", "document.querySelector('#detail canvas') !== null")
    context.close()
    return {"load_ms": load_ms, "filter_ms": filter_ms, "sort_ms": sort_ms, "detail_ms": detail_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--out", type=Path, default=Path("error_browser_bench.json"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    trained = load_model(args.model)
    records = predict(trained, collect(args.manifest)).records
    module = trained.module
    limits = BrowserLimits.from_config()
    results = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        for n, size in enumerate(args.sizes):
            repeated = [
                {**records[k % len(records)], "id": f"{records[k % len(records)]['id']}#{k // len(records)}"}
                for k in range(size)
            ]
            chosen = limits if n == 0 else replace(limits, max_audio_utterances=0)
            started = time.perf_counter()
            data = prediction_page(repeated, trained.labels, module.rules, module.hparams.primary_rule, chosen, "bench")
            path = write_page(Path(tmp) / f"page_{size}.html", data)
            build_s = time.perf_counter() - started
            embedded = sum(1 for u in data["utterances"] if u["audio"])
            results.append(
                {
                    "utterances": size,
                    "with_audio": embedded,
                    "megabytes": path.stat().st_size / 1e6,
                    "build_s": build_s,
                    **measure(browser, path, data),
                }
            )
        browser.close()
    print("| utterances | with audio | page MB | build s | load ms | cell filter ms | sort ms | detail ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['utterances']:,} | {r['with_audio']} | {r['megabytes']:.2f} | {r['build_s']:.1f} | "
            f"{r['load_ms']:.0f} | {r['filter_ms']:.0f} | {r['sort_ms']:.0f} | {r['detail_ms']:.0f} |"
        )
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
