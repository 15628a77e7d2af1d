"""`loyaltyctl report` from a seeded demo shop: the PNGs are real charts, the page is self-contained and opens
cleanly in headless Chromium (Debian's chromium package)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from services.cli import report as report_module
from tests.integration.test_cli import CliRunnerCall
from tests.support import Stack

CHROMIUM = os.environ.get("LOYALTY_CHROMIUM", "/usr/bin/chromium")
CHARTS = [name for name, _ in report_module.DRAWINGS]


@pytest.fixture(scope="module")
def reports(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[CliRunnerCall, Path]:
    """One seeded demo shop per backend and its report in both languages."""
    run = CliRunnerCall(stack, "report-demo")
    code, _out, err = run("demo", "seed", "--customers", "150", "--seed", "11")
    assert code == 0, err
    out_dir = tmp_path_factory.mktemp("report")
    for lang in ("zh", "en"):
        code, out, err = run("--json", "report", "--out", str(out_dir), "--lang", lang)
        assert code == 0, err
        written = json.loads(out)
        assert written["html"] == str(out_dir / f"report.{lang}.html")
        assert written["charts"] == [str(out_dir / f"{name}.{lang}.png") for name in CHARTS]
    return run, out_dir


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_chart_is_a_non_empty_png_of_sane_size(reports: tuple[CliRunnerCall, Path], lang: str) -> None:
    _run, out_dir = reports
    for name in CHARTS:
        path = out_dir / f"{name}.{lang}.png"
        assert path.stat().st_size > 10_000, name
        with Image.open(path) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert 600 <= width <= 3_000, (name, image.size)
            assert 300 <= height <= 3_000, (name, image.size)
            colours = image.convert("RGB").getcolors(maxcolors=width * height)
            assert colours is not None
            assert len(colours) > 20, f"{name} looks blank"  # axes, text and data, not one flat colour


@pytest.mark.parametrize(("lang", "title"), [("zh", "复购与忠诚度报告"), ("en", "Repurchase and loyalty report")])
def test_the_page_is_self_contained_with_every_chart_embedded(
    reports: tuple[CliRunnerCall, Path], lang: str, title: str
) -> None:
    _run, out_dir = reports
    page = (out_dir / f"report.{lang}.html").read_text(encoding="utf-8")
    assert title in page
    assert page.count('src="data:image/png;base64,') == len(CHARTS)
    for external in ('src="http', 'href="http', "<script src", "<link "):
        assert external not in page


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_page_opens_in_headless_chromium_without_console_errors(
    reports: tuple[CliRunnerCall, Path], lang: str
) -> None:
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    _run, out_dir = reports
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto((out_dir / f"report.{lang}.html").as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
            )
            text_width = page.evaluate("document.querySelector('h1').getBoundingClientRect().width")
        finally:
            browser.close()
    assert problems == []
    assert len(images) == len(CHARTS)
    assert all(done and width > 0 and height > 0 for done, width, height in images), images
    assert text_width > 100  # the title was laid out with a font, not left empty


def test_a_shop_without_data_still_gets_a_report_that_says_so(stack: Stack, tmp_path: Path) -> None:
    run = CliRunnerCall(stack, "report-empty")
    code, _out, err = run("report", "--out", str(tmp_path), "--lang", "en")
    assert code == 0, err
    page = (tmp_path / "report.en.html").read_text(encoding="utf-8")
    assert "No segment evaluation yet" in page
    assert page.count('src="data:image/png;base64,') == len(CHARTS)


def test_chinese_without_a_cjk_font_is_one_clear_line(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_module, "cjk_font", lambda: None)
    run = CliRunnerCall(stack, "report-nofont")
    code, _out, err = run("report", "--out", str(tmp_path), "--lang", "zh")
    assert code == 1
    assert err.strip().count("\n") == 0
    assert "apt-get install fonts-noto-cjk" in err
    assert run("report", "--out", str(tmp_path), "--lang", "en")[0] == 0


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--lang", "fr"), "--lang"),
        (("--months", "1"), "--months"),
        (("--today", "2026-13-01"), "--today"),
    ],
)
def test_bad_report_arguments_exit_2_naming_the_option(
    stack: Stack, tmp_path: Path, args: tuple[str, ...], text: str
) -> None:
    code, out, err = CliRunnerCall(stack, "report-bad")("report", "--out", str(tmp_path), *args)
    assert code == 2
    assert text in out + err
    assert "Traceback" not in out + err
