"""Pages in Debian's headless Chromium: where the browser is, a page opened offline, the data a page embeds."""

from __future__ import annotations

import json
import os
import re
import shutil

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# .ci/run installs Chromium and sets this: there, a missing browser fails instead of skipping.
REQUIRE_BROWSER = os.environ.get("BROADCLASS_REQUIRE_BROWSER") == "1"


class OpenPage:
    """A page opened offline; every request that is not the file itself or a data URI is recorded and refused,
    every console error and page error kept."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(offline=True, viewport={"width": 1600, "height": 1100})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def refuse(route):
            self.requests.append(route.request.url)
            route.abort()

        self.page.route(re.compile(r"^(https?|wss?|ftp)://"), refuse)
        self.page.goto(url)

    def shown_ids(self) -> list[str]:
        return self.page.eval_on_selector_all("#utterances tbody tr", "rows => rows.map(r => r.dataset.id)")


def page_json(text: str) -> dict:
    (payload,) = re.findall(r'<script type="application/json" id="page-data">(.*?)</script>', text, flags=re.S)
    return json.loads(payload)
