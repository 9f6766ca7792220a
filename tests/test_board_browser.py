"""The board in a real browser: headless Chromium (Debian's package, driven by Playwright) opens the page, fills
the Train tab, starts a tiny run, watches it finish and saves a screenshot with the loss curve under
``test-artifacts/``; then switches the page to Chinese and Russian."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (CI installs Debian's chromium package)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the 'test' extra)")
pytest.importorskip("gradio", reason="the board needs the optional 'board' extra (gradio)")

from test_board_server import start_board  # noqa: E402

from lit_factory.board.locales import labels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")  # gradio reads the value on blur/change


@pytest.mark.slow
def test_browser_fills_the_train_tab_runs_and_shows_the_loss_curve(tmp_path):
    process, url = start_board(tmp_path / "server.log")
    ARTIFACTS.mkdir(exist_ok=True)
    run_dir = tmp_path / "runs" / "browser-run"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(url, wait_until="networkidle")
            page.locator("#model_path").wait_for()
            fill(page, "output_dir", str(tmp_path / "runs"))
            fill(page, "run_name", "browser-run")
            fill(page, "max_steps", "6")
            fill(page, "val_size", "0")
            fill(page, "log_every_n_steps", "1")
            page.locator("#start_button").click()
            page.locator("#status").get_by_text("Started run").wait_for(timeout=60_000)
            page.locator("#progress").get_by_text("finished").wait_for(timeout=300_000)
            # one drawn mark per logged step: vega draws the line into the plot's canvas or svg
            page.locator("#loss_plot canvas, #loss_plot svg").first.wait_for(timeout=30_000)
            page.wait_for_timeout(2500)  # the monitor's next tick redraws the final points
            page.locator("#loss_plot").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "board-train.png"), full_page=True)
            assert "step 6 / 6" in page.locator("#progress").inner_text()
            assert page.locator("#recipe_yaml").get_by_text("max_steps: 6").count() >= 1

            for code in ("zh", "ru"):
                page.locator("#language input").click()
                page.get_by_role("option", name={"zh": "中文", "ru": "Русский"}[code]).click()
                page.locator("#start_button").get_by_text(labels(code)["start_button"]).wait_for(timeout=30_000)
                assert page.get_by_text(labels(code)["learning_rate"], exact=True).count() >= 1
            page.screenshot(path=str(ARTIFACTS / "board-train-ru.png"), full_page=True)
            browser.close()
    finally:
        process.terminate()
        process.wait(60)
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["status"] == "finished" and progress["step"] == 6
    assert os.path.getsize(ARTIFACTS / "board-train.png") > 10_000
