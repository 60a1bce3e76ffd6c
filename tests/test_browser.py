"""The public pages in a real browser: Debian's Chromium, driven by Selenium through chromedriver.

The story is tests/test_pages.py's, played once for the module through signed GitHub webhooks
(SQLite; the pages over PostgreSQL are test_pages.py's business):

Last month: #1 (goal €100) funded by alice 60 and bob 40, claimed by carol, merged and paid
(reference SEPA-1); #2 (goal €50) got dave's €20, which he withdrew. This month: #3 (goal €200)
has erin's €50. So this month asks €250 across #2 and #3 and has €50 (20 %).

The app serves from an event loop in a thread of its own, on a real TCP port, while the tests
drive one headless Chromium synchronously. Each page is also audited: lang, one h1, headings
that do not skip a level, a name for every image, meter, link and form control (as Chromium's
accessibility tree computes it), text contrast from computed styles (light and dark), no
horizontal scroll at 375 px and at 1280 px, and no request to any other host.

Needs /usr/bin/chromium and /usr/bin/chromedriver (`apt-get install chromium chromium-driver`;
`make test` installs them when it may). Without them the tests fail, saying so: never skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestServer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from test_pages import play

from bountybot.app import create_app
from bountybot.resources import SETTINGS
from bountybot.web import pages

from fakes.github import FakeGitHub
from github_harness import REPO, GitHubBot

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Without the background-networking flags Chromium waits for Google's servers on a closed
# network; --headless=new is the headless mode that renders as a desktop browser does.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars")
BASE = f"/github/{REPO}"
NARROW, WIDE = 375, 1280
T = TypeVar("T")


def months() -> tuple[date, date]:
    this = datetime.now(UTC).date().replace(day=1)
    return (this - timedelta(days=1)).replace(day=1), this


def words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# -- the site, served from a thread of its own ---------------------------------------------


class Background:
    """An event loop in a thread: the app serves from it while the browser, driven
    synchronously from the tests, asks it for pages."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Site:
    origin: str  # http://127.0.0.1:<port>

    def url(self, path: str) -> str:
        return self.origin + path


@pytest.fixture(scope="module")
def site(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The story's books, served by the real app (the pages only) on a real TCP port."""
    database = tmp_path_factory.mktemp("browser") / "bountybot.db"
    shutil.copyfile(sqlite_template, database)
    background = Background()
    parts: dict[str, Any] = {}

    async def start() -> str:
        parts["fake"] = fake = await FakeGitHub.start()
        clock: dict[str, datetime | None] = {"now": None}
        parts["bot"] = bot = await GitHubBot.start(
            f"sqlite+aiosqlite:///{database}", fake,
            clock=lambda: clock["now"] or datetime.now(UTC))
        await play(bot, clock)
        app = create_app(bot.app[SETTINGS], engine=bot.engine, features=[pages.setup])
        parts["server"] = server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        return str(server.make_url("")).rstrip("/")

    async def stop() -> None:
        for name in ("server", "bot", "fake"):
            if name in parts:
                await parts[name].close()

    try:
        yield Site(background.run(start()))
    finally:
        background.run(stop())
        background.close()


# -- the browser ---------------------------------------------------------------------------


def browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return None
    return (f"{' and '.join(missing)} missing: `apt-get install chromium chromium-driver`"
            " (Debian's packages; `make test` installs them when it may)")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module, with a fresh profile and its network log on."""
    missing = browser_missing()
    if missing:
        pytest.fail(missing, pytrace=False)
    profile = tempfile.mkdtemp(prefix="bountybot-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", "--lang=en-US"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(15)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def chromium(browser: WebDriver, site: Site) -> Iterator[WebDriver]:
    """The module's browser, wide, light, scripts on, with no request yet in its log; after
    the test, every request it logged went to the site, and nowhere else."""
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": "light"}]})
    viewport(browser, WIDE)
    browser.get("about:blank")
    browser.get_log("performance")
    yield browser
    assert_stays_home(browser, site)


def viewport(driver: WebDriver, width: int) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 600})


def requested(driver: WebDriver) -> list[str]:
    """The addresses the browser asked for since the log was last read."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_stays_home(driver: WebDriver, site: Site) -> None:
    """No font, script, image or anything else fetched from another host."""
    home = urlsplit(site.origin)
    for url in requested(driver):
        parts = urlsplit(url)
        if parts.scheme in ("data", "about"):
            continue
        assert (parts.scheme, parts.netloc) == (home.scheme, home.netloc), url


def visit(driver: WebDriver, site: Site, path: str) -> None:
    driver.get(site.url(path))
    assert driver.current_url.startswith(site.origin), driver.current_url


def text(driver: WebDriver, css: str = "main") -> str:
    return words(driver.find_element(By.CSS_SELECTOR, css).text)


def click(driver: WebDriver, link_text: str, within: str = "main") -> None:
    """Click the link of that visible text, and wait for the page it leads to."""
    before = driver.current_url
    links = [a for a in driver.find_elements(By.CSS_SELECTOR, f"{within} a")
             if words(a.text) == link_text]
    assert links, (link_text, [words(a.text) for a in driver.find_elements(By.TAG_NAME, "a")])
    links[0].click()
    assert driver.current_url != before, link_text
    assert driver.execute_script("return document.readyState") == "complete"


# -- the audit -------------------------------------------------------------------------------

# Runs in the page: what the DOM and the computed styles say. Names come from the
# accessibility tree (below), which is Chromium's own computation.
AUDIT = r"""
const problems = [];
const lang = document.documentElement.getAttribute("lang");
if (!lang) problems.push("html has no lang");
const h1s = document.querySelectorAll("h1").length;
if (h1s !== 1) problems.push(`${h1s} h1 elements`);
let level = 0;
for (const h of document.querySelectorAll("h1, h2, h3, h4, h5, h6")) {
  const next = Number(h.tagName[1]);
  if (next > level + 1) problems.push(`heading ${h.tagName} after h${level}: ${h.textContent}`);
  level = next;
}
if (!document.title.trim()) problems.push("no title");
for (const el of document.querySelectorAll("[aria-label], [aria-labelledby]")) {
  if (["DIV", "SPAN", "P", "B", "I", "CODE"].includes(el.tagName) && !el.getAttribute("role"))
    problems.push(`aria-label on a ${el.tagName.toLowerCase()} with no role (a name it cannot`
                  + ` have): ${el.outerHTML.slice(0, 80)}`);
}
for (const el of document.querySelectorAll("[aria-labelledby]")) {
  for (const id of el.getAttribute("aria-labelledby").split(/\s+/))
    if (!document.getElementById(id)) problems.push(`aria-labelledby points at no #${id}`);
}
for (const el of document.querySelectorAll("img, svg, [role=img]")) {
  const named = el.getAttribute("alt") !== null || el.getAttribute("aria-label")
    || el.getAttribute("aria-labelledby") || el.getAttribute("title")
    || el.getAttribute("aria-hidden") === "true" || el.querySelector(":scope > title");
  if (!named)
    problems.push(`image with no alt, aria-label or title: ${el.outerHTML.slice(0, 80)}`);
}
for (const el of document.querySelectorAll("input, select, textarea, meter, progress")) {
  if (el.type === "hidden" || el.type === "submit" || el.type === "button") continue;
  const named = el.labels?.length || el.getAttribute("aria-label")
    || el.getAttribute("aria-labelledby") || el.getAttribute("title");
  if (!named)
    problems.push(`${el.tagName.toLowerCase()} with no label: ${el.outerHTML.slice(0, 80)}`);
}
for (const a of document.querySelectorAll("a[href]")) {
  if (!a.textContent.trim() && !a.getAttribute("aria-label") && !a.querySelector("img[alt]"))
    problems.push(`link with no text: ${a.outerHTML.slice(0, 80)}`);
}
const ids = new Set();
for (const el of document.querySelectorAll("[id]")) {
  if (ids.has(el.id)) problems.push(`duplicate id ${el.id}`);
  ids.add(el.id);
}

function rgba(value) {
  const m = value.match(/rgba?\(([\d.]+),? ([\d.]+),? ([\d.]+)(?:,? \/? ?([\d.]+))?\)/);
  if (!m) return null;
  return [Number(m[1]), Number(m[2]), Number(m[3]), m[4] === undefined ? 1 : Number(m[4])];
}
function over(top, bottom) {  // top composited over an opaque bottom
  const a = top[3];
  return [0, 1, 2].map(i => top[i] * a + bottom[i] * (1 - a)).concat([1]);
}
const probe = document.createElement("i");
probe.style.backgroundColor = "Canvas";
document.body.appendChild(probe);
const canvas = rgba(getComputedStyle(probe).backgroundColor);
probe.remove();
function background(el) {
  const layers = [];
  for (let e = el; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor);
    if (c && c[3] > 0) layers.push(c);
    if (c && c[3] === 1) break;
  }
  let colour = canvas;
  for (const layer of layers.reverse()) colour = over(layer, colour);
  return colour;
}
function luminance(c) {
  const [r, g, b] = c.slice(0, 3).map(v => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
let lowest = 21;
let checked = 0;
for (const el of document.body.querySelectorAll("*")) {
  const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own || !el.getClientRects().length) continue;
  const style = getComputedStyle(el);
  if (style.visibility === "hidden") continue;
  const fg = rgba(style.color);
  if (!fg) { problems.push(`colour not understood: ${style.color}`); continue; }
  const bg = background(el);
  const [a, b] = [luminance(over(fg, bg)), luminance(bg)];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
  const needed = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
  checked += 1;
  lowest = Math.min(lowest, ratio);
  if (ratio < needed)
    problems.push(`contrast ${ratio.toFixed(2)} < ${needed} for "${el.textContent.trim()
      .slice(0, 40)}" (${style.color} on rgb(${bg.slice(0, 3).map(Math.round)}))`);
}
const root = document.documentElement;
return {problems, lang, checked, lowest, canvas,
        scroll: [root.scrollWidth, root.clientWidth, document.body.scrollWidth]};
"""

NAMED = {"link", "meter", "progressbar", "image", "img", "textbox", "combobox", "checkbox",
         "radio", "listbox", "searchbox", "slider", "spinbutton", "button"}


def ax_nodes(driver: WebDriver) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = driver.execute_cdp_cmd("Accessibility.getFullAXTree",
                                                         {})["nodes"]
    return nodes


def unnamed(driver: WebDriver) -> list[str]:
    """What Chromium's accessibility tree shows with no name: links, images, meters, form
    controls."""
    missing = []
    for node in ax_nodes(driver):
        role = node.get("role", {}).get("value")
        name = (node.get("name") or {}).get("value") or ""
        if role in NAMED and not node.get("ignored") and not name.strip():
            missing.append(f"{role} {node.get('backendDOMNodeId')}")
    return missing


def audit(driver: WebDriver, lang: str = "en") -> dict[str, Any]:
    """The page's accessibility problems, at both widths and in both colour schemes."""
    found: dict[str, Any] = {}
    for scheme in ("light", "dark"):
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
            {"name": "prefers-color-scheme", "value": scheme}]})
        result = driver.execute_script(AUDIT)
        assert result["problems"] == [], (scheme, driver.current_url, result["problems"])
        assert result["checked"] > 5  # the contrast loop did look at the text
        found[scheme] = result
    assert found["light"]["canvas"][:3] != found["dark"]["canvas"][:3]  # the scheme did change
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": "light"}]})
    assert found["light"]["lang"] == lang
    assert unnamed(driver) == [], driver.current_url
    for width in (NARROW, WIDE):
        viewport(driver, width)
        scroll_width, client_width, body_width = driver.execute_script(
            "const r = document.documentElement;"
            " return [r.scrollWidth, r.clientWidth, document.body.scrollWidth];")
        assert client_width == width, (width, client_width)
        assert scroll_width <= client_width and body_width <= client_width, (
            f"{driver.current_url} scrolls sideways at {width}px: {scroll_width} > {client_width}")
        # A table that scrolls inside itself on a narrow screen is still a table to a reader.
        tables = [n for n in ax_nodes(driver) if n.get("role", {}).get("value") == "table"]
        assert len(tables) == len(driver.find_elements(By.TAG_NAME, "table")), width
    return found


# -- the tests -------------------------------------------------------------------------------


def test_a_backer_clicks_from_the_index_to_a_task_and_to_the_appeal(
        chromium: WebDriver, site: Site) -> None:
    driver = chromium
    last, this = months()
    visit(driver, site, "/")
    assert driver.find_element(By.TAG_NAME, "h1").text == "bountybot"
    assert "€250.00 asked across 2 tasks, €50.00 funded (20%)" in text(driver, "#appeal-sentence")
    [meter] = driver.find_elements(By.CSS_SELECTOR, "#appeal-h ~ meter")
    assert (meter.get_property("value"), meter.get_property("max")) == (5000, 25000)
    assert meter.accessible_name == text(driver, "#appeal-sentence")
    audit(driver)

    click(driver, f"github/{REPO}")
    assert driver.current_url == site.url(BASE)
    assert words(driver.find_element(By.TAG_NAME, "h1").text) == f"{REPO} (github)"
    meters = {m.accessible_name: (m.get_property("value"), m.get_property("max"))
              for m in driver.find_elements(By.CSS_SELECTOR, "table.tasks meter")}
    assert meters == {"Funding of #3: €50.00 of €200.00": (5000, 20000),
                      "Funding of #2: €0.00 of €50.00": (0, 5000)}
    assert f"{this:%B %Y}" in text(driver, "table.history") and f"{last:%B %Y}" in text(
        driver, "table.history")
    audit(driver)

    [task3] = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "table.tasks a")
               if a.text.startswith("#3 ")]
    click(driver, task3)
    assert driver.current_url == site.url(f"{BASE}/-/issues/3")
    assert "€50.00 of €200.00" in text(driver, "p.meter")
    assert "erin pledged €50.00" in text(driver, "ol.timeline")
    assert "/pledge 20" in text(driver)
    audit(driver)

    click(driver, REPO, within="h1")
    click(driver, "The monthly appeal")
    assert driver.current_url == site.url(f"{BASE}/-/needs")
    sentence = text(driver, "#appeal-sentence")
    assert re.fullmatch(rf"{this:%B %Y}: €250\.00 asked across 2 tasks, €50\.00 funded \(20%\),"
                        r" €200\.00 to go, [0-9]+ days? left\.", sentence), sentence
    [meter] = driver.find_elements(By.CSS_SELECTOR, "meter.appeal-meter")
    assert (meter.get_property("value"), meter.get_property("max")) == (5000, 25000)
    assert meter.accessible_name == sentence
    assert meter.aria_role == "meter"
    audit(driver)

    click(driver, "Previous month")
    assert driver.current_url == site.url(f"{BASE}/-/needs/{last:%Y-%m}")
    assert text(driver, "#appeal-sentence") == (
        f"{last:%B %Y}: €150.00 asked across 2 tasks, €100.00 funded (66%), €50.00 short.")
    payouts = text(driver, "ul.payouts")
    assert "€100.00 paid to carol for #1, merged pull request #7" in payouts
    assert "reference SEPA-1" in payouts
    assert "€20.00 back to dave (#2, withdrawn)" in text(driver, "ul.refunds")
    audit(driver)


def test_a_paid_task_tells_its_story_in_order(chromium: WebDriver, site: Site) -> None:
    driver = chromium
    visit(driver, site, f"{BASE}/-/issues/1")
    [meter] = driver.find_elements(By.TAG_NAME, "meter")
    assert (meter.get_property("value"), meter.get_property("max")) == (10000, 10000)
    assert meter.accessible_name.startswith("Funding of #1: €100.00 of €100.00")
    assert "€100.00 of €100.00 · Goal reached" in text(driver, "p.meter")
    assert text(driver, "strong.state") == "done"
    backers = {words(row.text) for row in driver.find_elements(By.CSS_SELECTOR,
                                                                 "table.backers tbody tr")}
    assert backers == {"alice €60.00", "bob €40.00"}
    lines = [words(li.text) for li in driver.find_elements(By.CSS_SELECTOR, "ol.timeline li")]
    expected = ["Bounty opened", "alice pledged €60.00", "bob pledged €40.00", "Goal reached",
                "carol claimed the task", "carol opened pull request #7",
                "Pull request #7 merged", "€100.00 paid to carol (reference SEPA-1)"]
    at = [next((i for i, line in enumerate(lines) if want in line), -1) for want in expected]
    assert -1 not in at and at == sorted(at), lines
    times = [e.get_attribute("datetime") or "" for e in driver.find_elements(
        By.CSS_SELECTOR, "ol.timeline time")]
    assert len(times) == len(lines) and times == sorted(times)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", x) for x in times)
    audit(driver)


def test_the_pages_need_no_javascript(chromium: WebDriver, site: Site) -> None:
    driver = chromium
    driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    # Scripts are off indeed: a page's own script does not run.
    driver.get("data:text/html,<title>off</title><script>document.title='on'</script>")
    assert driver.title == "off"
    visit(driver, site, BASE)
    assert driver.find_elements(By.TAG_NAME, "script") == []
    meters = driver.find_elements(By.CSS_SELECTOR, "meter")
    assert len(meters) == 3 and all(m.is_displayed() and m.size["width"] > 50 for m in meters)
    assert "€250.00 asked across 2 tasks" in text(driver, "#appeal-sentence")
    click(driver, "The monthly appeal")
    assert driver.current_url == site.url(f"{BASE}/-/needs")
    click(driver, "Français", within="header")
    assert driver.current_url == site.url(f"{BASE}/-/needs?lang=fr")
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "fr"
    assert "demandés pour 2 tâches" in text(driver, "#appeal-sentence")


def test_the_stylesheet_loads_and_nothing_comes_from_elsewhere(
        chromium: WebDriver, site: Site) -> None:
    driver = chromium
    visit(driver, site, BASE)
    asked = requested(driver)
    assert site.url(BASE) in asked and site.url("/static/bountybot.css") in asked
    assert_stays_home(driver, site)
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == [site.url("/static/bountybot.css")]
    # The stylesheet applies: the body is a centred column, links take the accent colour,
    # tables fill the width, where a browser's defaults say otherwise.
    style = driver.execute_script(
        "const s = e => getComputedStyle(document.querySelector(e));"
        " return [s('body').maxWidth, s('main a').color, s('table').borderCollapse,"
        " document.styleSheets.length, document.styleSheets[0].cssRules.length];")
    assert style[0] == "960px" and style[1] == "rgb(11, 110, 79)"
    assert style[2] == "collapse" and style[3] == 1 and style[4] > 10
    skip = driver.find_element(By.CSS_SELECTOR, "a.skip")
    assert skip.location["x"] < 0  # off screen until focused


def test_french_pages_say_so(chromium: WebDriver, site: Site) -> None:
    driver = chromium
    last, _ = months()
    for path in ("/?lang=fr", f"{BASE}?lang=fr", f"{BASE}/-/issues/1?lang=fr",
                 f"{BASE}/-/needs/{last:%Y-%m}?lang=fr"):
        visit(driver, site, path)
        audit(driver, lang="fr")
    assert "Les douze derniers mois" in text(driver, "table.history caption")
    assert driver.find_element(By.CSS_SELECTOR, "[aria-current]").text == "Français"
