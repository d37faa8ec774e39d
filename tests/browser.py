"""Render a page in a real headless browser (Debian's Chromium, driven by Playwright): its
console errors and whether every image loaded. `make test` installs Chromium when it is missing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: Chromium's flags on these machines: no sandbox as root, and no background connections (the
#: network is closed, and every refused connection would be noise).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def render(page_path: Path) -> dict:
    """Load ``page_path``; return its images (total, loaded) and every console error."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("the report's browser test needs Chromium: apt-get install chromium "
                    "(make test installs it where apt-get can)")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=FLAGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(Path(page_path).resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        finally:
            browser.close()
    return {"images": len(images), "loaded": sum(images), "errors": errors}


def assert_renders(page_path: Path, min_images: int = 1) -> dict:
    seen = render(page_path)
    assert seen["errors"] == [], seen
    assert seen["images"] >= min_images and seen["loaded"] == seen["images"], seen
    return seen
