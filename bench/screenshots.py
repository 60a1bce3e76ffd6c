"""Screenshots of the public pages for the README: the demo's story, photographed by Chromium.

    .venv/bin/python bench/screenshots.py [--out docs/screenshots] [--width 1000]

Plays `bountybot demo`'s story (bountybot/demo.py: two repos, three months, through signed
webhooks into a fresh SQLite file in a temporary directory), then opens the index, the garden
repo page and lantern's monthly appeal in headless Chromium (Debian's `chromium` and
`chromium-driver`, through Selenium) and saves each whole page as a PNG. Not run in CI; run it
again after a change to the pages, and look at the pictures before committing them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from bountybot.demo import OWNER, DemoSite, play_story

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--lang=en-US")
PAGES = {
    "index": "/",
    "repo": f"/github/{OWNER}/garden",
    "task": f"/github/{OWNER}/garden/-/issues/1",
    "needs": f"/github/{OWNER}/lantern/-/needs",
}
MAX_HEIGHT = 2400


def start_browser(profile: str) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def photograph(driver: Any, url: str, width: int, path: Path, scheme: str) -> int:
    """The whole page at `width` CSS pixels (up to MAX_HEIGHT high), saved as a PNG."""
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": scheme}]})
    metrics = {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.get(url)
    height = min(MAX_HEIGHT, int(driver.execute_script(
        "return document.documentElement.scrollHeight")))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": height})
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    data = base64.b64decode(shot["data"])
    path.write_bytes(data)
    return len(data)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--dark", action="store_true", help="the dark colour scheme")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="bountybot-screenshots-")
    try:
        async with DemoSite.start(Path(workdir) / "demo.db", port=0) as site:
            await play_story(site)
            driver = await asyncio.to_thread(start_browser, str(Path(workdir) / "profile"))
            try:
                for name, page in PAGES.items():
                    path = args.out / f"{name}.png"
                    size = await asyncio.to_thread(
                        photograph, driver, site.url(page), args.width, path,
                        "dark" if args.dark else "light")
                    print(f"{path}: {size // 1024} KB")
            finally:
                await asyncio.to_thread(driver.quit)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
