"""Cut the Rate Limiter panel out of docs/dashboard.png into docs/limiter.png.

docs/limiter.md explains the limiter with this picture; cutting it from the README's
screenshot keeps the two the same run of `make demo`.  Headless Chromium does the
cropping (the project has it for its page tests; no imaging library needed):

    .venv/bin/python docs/limiter_picture.py

Run it again after replacing docs/dashboard.png, and check the box still frames the
panel: it is the panel's place in the 1400 x 1372 screenshot.
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import FloatRect, ViewportSize, sync_playwright

DOCS = Path(__file__).resolve().parent
SOURCE = DOCS / "dashboard.png"
TARGET = DOCS / "limiter.png"
SIZE: ViewportSize = {"width": 1400, "height": 1372}
PANEL: FloatRect = {"x": 14, "y": 882, "width": 680, "height": 410}


def main() -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        try:
            page = browser.new_page(viewport=SIZE, device_scale_factor=1)
            page.goto(SOURCE.as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(TARGET), clip=PANEL)
        finally:
            browser.close()
    print(f"wrote {TARGET.relative_to(DOCS.parent)}")


if __name__ == "__main__":
    main()
