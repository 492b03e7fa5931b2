"""The search page in a real browser: Playwright for Python driving Debian's chromium.

`playwright install` cannot download browsers here, so the set-up uses the system's
chromium and installs it with apt-get when it is absent (as root; otherwise the test fails
and says how to install it: a missing browser is not a pass). Set VIDCAT_SCREENSHOTS to a
directory to keep the screenshots (docs/serve.png is made this way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from urllib.parse import parse_qs, urlparse

import pytest
from test_serve import serving

pytestmark = [pytest.mark.slow, pytest.mark.browser]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    found = next((p for p in map(shutil.which, _CANDIDATES) if p), None)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("no chromium on this machine: run `apt-get install chromium` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
        check=True,
        env=env,
        timeout=1200,
    )
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, served_catalog):
    yield from _page(browser, served_catalog)


@pytest.fixture
def dedup_page(browser, dedup_catalog):
    yield from _page(browser, dedup_catalog[0])


def _page(browser, catalog):
    with serving(catalog) as http:
        context = browser.new_context(
            permissions=["clipboard-read", "clipboard-write"],
            viewport={"width": 1280, "height": 860},
            base_url=str(http.base_url),
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: (
                problems.append(f"console {msg.type}: {msg.text}")
                if msg.type in ("error", "warning")
                else None
            ),
        )
        page.problems = problems
        yield page
        context.close()


def query_of(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


def shot(page, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    keep = os.environ.get("VIDCAT_SCREENSHOTS")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(path, os.path.join(keep, path.name))


def test_search_play_more_like_this_and_history(page, tmp_path):
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    assert "clips" in page.text_content("#table-info")
    assert page.is_hidden("#dedup-label")  # no near-duplicates table: no switch

    # A text search: results with thumbnails, the query in the URL.
    page.fill("#q", "a red circle")
    page.press("#q", "Enter")
    page.wait_for_selector(".card")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    assert query_of(page)["q"] == ["a red circle"]
    cards = page.locator(".card")
    assert cards.count() >= 8
    first_caption = cards.nth(0).locator(".caption").text_content()
    assert first_caption and cards.nth(0).locator(".score").text_content().startswith("score ")
    shot(page, tmp_path, "serve")

    # Hovering plays the clip's own segment.
    cards.nth(0).locator(".media").hover()
    page.wait_for_function(
        "() => { const v = document.querySelector('.card video');"
        " return v && v.readyState >= 2 && !v.paused && v.currentTime > 0; }"
    )
    start, end, now = page.evaluate(
        "() => { const c = document.querySelector('.card');"
        " return [Number(c.dataset.start), Number(c.dataset.end),"
        " c.querySelector('video').currentTime]; }"
    )
    assert start <= now <= end + 0.5

    # "More like this": a similar-clip search, in the URL, without the clip's own video.
    source = cards.nth(0).get_attribute("data-clip-id")
    cards.nth(0).locator(".more-like-this").click()
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('more like')"
    )
    assert query_of(page)["clip_id"] == [source]
    video = source.split("#")[0]
    shown = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.clipId)")
    assert shown and not any(c.startswith(video + "#") for c in shown)

    # Back and forward restore the searches (and the URL round-trips).
    page.go_back()
    page.wait_for_function("() => document.querySelector('#q').value === 'a red circle'")
    page.wait_for_function(
        "() => !document.querySelector('#status').textContent.includes('more like')"
    )
    assert query_of(page)["q"] == ["a red circle"]
    page.go_forward()
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('more like')"
    )
    # A shared link opens the same search.
    url = page.url
    page.goto("/")
    page.goto(url)
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('more like')"
    )
    assert page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.clipId)") == shown
    assert page.problems == []


def test_filters_keyboard_rerank_and_copy(page, tmp_path):
    page.goto("/?type=text&q=a+shape&k=24")
    page.wait_for_selector(".card")
    # A filter built from the table's columns narrows the results.
    page.click("#add-filter")
    row = page.locator("#filters .filter").last
    row.locator("select").first.select_option("category")
    row.locator("select").nth(1).select_option("eq")
    row.locator("input").fill("circle")
    page.click("#go")
    page.wait_for_function("() => location.search.includes('filter=')")
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('results')"
    )
    metas = page.eval_on_selector_all(".card .meta", "ms => ms.map(m => m.textContent)")
    assert metas and all("category: circle" in m for m in metas)
    assert query_of(page)["filter"] == ["category:eq:circle"]

    # Re-rank shows the re-rank score.
    page.check("#rerank")
    page.click("#go")
    page.wait_for_selector(".card .rerank-score")
    assert query_of(page)["rerank"] == ["true"]

    # Keyboard: / focuses the search box, arrows move between results, m = more like this.
    page.click("body", position={"x": 5, "y": 5})
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    focused = page.evaluate("() => document.activeElement.dataset.clipId")
    assert focused == page.locator(".card").nth(1).get_attribute("data-clip-id")
    page.keyboard.press("m")
    page.wait_for_function("() => location.search.includes('clip_id=')")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('more')")
    assert query_of(page)["clip_id"] == [focused]
    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement.id") == "q"

    # Copy as CLI / Python: the current query, in a form that runs.
    page.click("#copy-cli")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('copied')")
    cli = page.evaluate("() => navigator.clipboard.readText()")
    assert cli.startswith("vidcat query clip ") and "--filter 'category:eq:circle'" in cli
    page.click("#copy-python")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('Python')")
    python = page.evaluate("() => navigator.clipboard.readText()")
    assert "search.similar_clip(" in python and '"category:eq:circle"' in python
    compile(python, "<copied>", "exec")  # valid Python

    # An error is shown, not thrown.
    page.goto("/?type=text&q=x&filter=nope:eq:1")
    page.wait_for_function("() => document.querySelector('#status').classList.contains('error')")
    assert "no filterable column" in page.text_content("#status")
    shot(page, tmp_path, "serve-error")
    assert [p for p in page.problems if "400" not in p] == []


def test_hide_near_duplicates(dedup_page):
    """The switch collapses each near-duplicate group to its best result, marks the group's
    size, lives in the URL (history, shared links, more like this) and in the copies."""
    from serving import QUERY

    page = dedup_page
    page.goto("/?type=text&q=" + QUERY.replace(" ", "+") + "&k=24")
    page.wait_for_selector(".card")
    assert page.is_visible("#dedup-label") and not page.is_checked("#dedup")
    every = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.clipId)")
    assert len(every) == 8 and page.locator(".group-size").count() == 0

    page.check("#dedup")  # applies at once
    page.wait_for_function("() => location.search.includes('dedup=true')")
    page.wait_for_function("() => document.querySelectorAll('.card').length === 5")
    assert "near-duplicates hidden" in page.text_content("#status")
    shown = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.clipId)")
    assert shown == [every[0], every[1], every[4], every[5], every[7]]
    first = page.locator(".card").nth(0)
    assert first.get_attribute("data-group-size") == "3"
    assert first.locator(".group-size").text_content() == "+2 near-duplicates"
    assert page.locator(".card").nth(3).locator(".group-size").text_content() == (
        "+1 near-duplicate"
    )
    assert page.locator(".card").nth(1).locator(".group-size").count() == 0

    # back: the switch off and every copy again; forward: on again
    page.go_back()
    page.wait_for_function("() => document.querySelectorAll('.card').length === 8")
    assert not page.is_checked("#dedup")
    page.go_forward()
    page.wait_for_function("() => document.querySelectorAll('.card').length === 5")
    assert page.is_checked("#dedup")

    # a shared link opens the collapsed search
    url = page.url
    page.goto("/")
    page.goto(url)
    page.wait_for_function("() => document.querySelectorAll('.card').length === 5")
    assert page.is_checked("#dedup")

    # copies and more like this keep it
    page.click("#copy-cli")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('copied')")
    assert page.evaluate("() => navigator.clipboard.readText()").endswith(" --dedup")
    page.click("#copy-python")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('Python')")
    python = page.evaluate("() => navigator.clipboard.readText()")
    assert "dedup=True" in python
    compile(python, "<copied>", "exec")
    page.locator(".card").nth(1).locator(".more-like-this").click()
    page.wait_for_function("() => location.search.includes('clip_id=')")
    assert query_of(page)["dedup"] == ["true"]
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('near-duplicates hidden')"
    )
    assert page.problems == []
