"""The board in a real browser: headless Chromium (Debian's package, driven by Playwright) opens the page, fills
the Train tab, starts a tiny run, watches it finish and saves a screenshot with the loss curve under
``test-artifacts/``; opens the typed panels and the preview command, sees a path out of the workspace refused on
its field, screenshots every tab; then switches the page to Chinese and Russian."""

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
from lit_factory.board.tabs.train import LOSS_COLORS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def line_pixels(png: Path, color: str) -> int:
    """Pixels within a small distance of ``color`` (#rrggbb) in a screenshot: the drawn line, antialiased."""
    from PIL import Image

    target = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    image = Image.open(png).convert("RGB")
    return sum(1 for pixel in image.getdata() if sum(abs(a - b) for a, b in zip(pixel, target)) < 60)


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")  # gradio reads the value on blur/change


def pick(page, elem_id: str, option: str) -> None:
    """Choose ``option`` in the dropdown ``#elem_id``."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_timeout(500)


@pytest.mark.slow
def test_browser_fills_the_train_tab_runs_and_shows_the_loss_curve(tmp_path):
    process, url = start_board(tmp_path / "server.log", tmp_path)
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
            page.wait_for_timeout(2500)  # the monitor's next tick redraws the final points
            page.locator("#loss_plot").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "board-train.png"), full_page=True)
            # What a person sees: the train/loss line is drawn with a stroke through one point per logged step,
            # and its colour fills pixels of the plot (a line without stroke leaves none).
            line = page.locator("#loss_plot path[aria-roledescription='line mark']").first
            line.wait_for(timeout=30_000)
            assert line.get_attribute("stroke") == LOSS_COLORS["train/loss"]
            assert line.get_attribute("d").count("L") == 5  # 6 points: a move and five line segments
            page.locator("#loss_plot").screenshot(path=str(ARTIFACTS / "board-loss-plot.png"))
            assert line_pixels(ARTIFACTS / "board-loss-plot.png", LOSS_COLORS["train/loss"]) > 200
            # The log box shows the end of the log, not its first lines.
            scroll = page.evaluate("() => { const box = document.querySelector('#log textarea');"
                                   " return [box.scrollTop, box.scrollHeight, box.clientHeight]; }")
            assert scroll[1] > scroll[2] and scroll[0] + scroll[2] >= scroll[1] - 5
            assert "step 6 / 6" in page.locator("#progress").inner_text()
            assert page.locator("#recipe_yaml").get_by_text("max_steps: 6").count() >= 1

            # The typed panels: a stage or optimizer shows its own fields; the preview command appears.
            pick(page, "stage", "DPO")
            page.locator("#panel_dpo").get_by_text(labels("en")["arg_loss_type"]).wait_for(timeout=30_000)
            page.locator("#panel_dpo").screenshot(path=str(ARTIFACTS / "board-panel-dpo.png"))
            pick(page, "optimizer", "GaLore")
            page.locator("#panel_galore").get_by_text(labels("en")["galore_rank"]).wait_for(timeout=30_000)
            pick(page, "stage", "PPO")
            page.locator("#panel_ppo").get_by_text(labels("en")["arg_reward_model"]).wait_for(timeout=30_000)
            assert not page.locator("#panel_dpo").is_visible()
            page.locator("#panel_ppo").screenshot(path=str(ARTIFACTS / "board-panel-ppo.png"))
            pick(page, "stage", "SFT")
            page.locator("#command_button").click()
            page.locator("#command").get_by_text("lit-factory fit --config recipes/quickstart.yaml").wait_for(
                timeout=60_000)
            assert page.locator("#command").get_by_text("lit_factory.optim.GaLore").count() >= 1
            page.screenshot(path=str(ARTIFACTS / "board-train-panels.png"), full_page=True)
            # A path out of the workspace: refused before the handler runs, the message shown on the field.
            fill(page, "output_dir", "/etc/board-runs")
            page.locator("#show_button").click()
            page.get_by_text("is outside the board's workspace").first.wait_for(timeout=30_000)
            page.locator("#output_dir").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "board-train-refused.png"), full_page=False)
            assert not Path("/etc/board-runs").exists()
            fill(page, "output_dir", str(tmp_path / "runs"))
            pick(page, "optimizer", "AdamW")

            for tab in ("chat", "evaluate", "export"):
                page.get_by_role("tab", name=labels("en")[f"tab_{tab}"]).click()
                page.wait_for_timeout(1000)
                page.screenshot(path=str(ARTIFACTS / f"board-{tab}.png"), full_page=True)
            page.get_by_role("tab", name=labels("en")["tab_train"]).click()
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
