"""
The operator's page (docs/admin.md, "The operator's page") in a real browser:
Debian's Chromium driven by Playwright, headless, against C{twistd -n
refresherd}.  One browser for the module, one service with no admin token
(the page works without asking) and one with an admin token (it asks).
What a user sees is asserted: figures, a job row, an entry and its
timeline, a purge confirmed in a dialog; no console error and no
Content-Security-Policy violation; values of an origin shown as text only.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.harness import Origin, Service, start_origin, start_service

ADMIN = "page-admin-token"
CONFIG = """
[store]
url = "memory://"

[jobs.item]
args = ["id"]
arg_patterns = { id = "[a-z0-9]{1,20}" }
url = "{origin}/items/{id}"
tags = ["item:{id}"]
fresh = "1h"
stale = "1h"
"""
EVIL = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"
BIG = "0123456789abcdef" * 5000  # 80,000 characters: more than the 64 KiB shown at first
WAIT = 15_000  # ms: a few polls of the page, on a loaded machine

# Every CSP violation the page causes, recorded before any script of the page runs.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


def chromium() -> str:
    path = shutil.which("chromium")
    assert path is not None, "Debian's chromium is needed (.ci/run installs it)"
    return path


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    origin = start_origin()
    origin.set("/items/evil", body=EVIL.encode(), content_type="text/plain")
    origin.set("/items/big", body=BIG.encode(), content_type="text/plain")
    origin.set("/items/broken", status=503, body=b"down")
    yield origin
    origin.server.shutdown()


def start(tmp: Path, origin: Origin, auth: str = "") -> Service:
    config = tmp / "refresherd.toml"
    config.write_text(CONFIG.replace("{origin}", origin.url) + auth)
    return start_service(config)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Service]:
    """No admin token configured: the admin listener is loopback, the page asks for nothing."""
    service = start(tmp_path_factory.mktemp("page-open"), origin)
    yield service
    assert service.stop() == 0, service.output()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Service]:
    """An admin token configured: the page asks for it."""
    service = start(
        tmp_path_factory.mktemp("page-token"), origin, f'\n[auth]\nadmin_tokens = ["{ADMIN}"]\n'
    )
    yield service
    assert service.stop() == 0, service.output()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True)
        yield browser
        browser.close()


@attrs.define
class Seen:
    """What the browser reported while a page was open."""

    console: list[str] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)

    def problems(self, page: Page, allowed: tuple[str, ...] = ()) -> list[str]:
        """Console errors (but those C{allowed}), uncaught exceptions and CSP violations."""
        console = [text for text in self.console if not any(a in text for a in allowed)]
        violations: list[str] = page.evaluate("window.__csp")
        return console + self.errors + violations


def open_page(browser: Browser, url: str, width: int = 1200) -> tuple[Page, Seen]:
    page = browser.new_page(viewport={"width": width, "height": 900})
    seen = Seen()

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            seen.console.append(f"{message.type}: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda error: seen.errors.append(f"pageerror: {error}"))
    page.add_init_script(WATCH_CSP)
    page.goto(url + "/")
    return page, seen


def public_get(service: Service, id: str) -> Any:
    response = service.get(f"/v1/jobs/item?id={id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_the_overview_and_a_job_row_show_live_figures(browser: Browser, service: Service) -> None:
    page, seen = open_page(browser, service.admin_url)
    expect(page.locator("#o-version")).to_have_text("0.1.0", timeout=WAIT)
    expect(page.locator("#o-store")).to_have_text("memory")
    expect(page.locator("#o-ready")).to_have_text("yes")
    before = page.locator("#o-rps").inner_text()
    for n in range(30):
        public_get(service, f"k{n % 3}")
    expect(page.locator("#o-rps")).not_to_have_text(before, timeout=WAIT)
    expect(page.locator("#o-hit")).not_to_have_text("0.0 %", timeout=WAIT)
    # One row per job, with its figures and its hot keys.
    row = page.locator("#jobs-table tbody[data-job=item]")
    expect(row.locator("th[scope=row]")).to_have_text("item")
    expect(row.locator("td.config")).to_contain_text("fresh 3600 s")
    expect(row.locator("td.n").first).not_to_have_text("–", timeout=WAIT)
    expect(row.locator(".hot")).to_contain_text("rfd:item:v1:id=k0", timeout=WAIT)
    assert service.get("/v1/jobs/item?id=broken").status_code == 502
    expect(row.locator(".errors")).to_contain_text("origin answered 503", timeout=WAIT)
    expect(row.locator("td[data-label='Fetch p50']")).not_to_have_text("–")
    # The charts are drawn from the history the page keeps.
    expect(page.locator("#charts polyline").first).not_to_have_attribute("points", "")
    assert seen.problems(page) == []
    page.close()


def test_an_origins_value_is_shown_as_text_never_run(browser: Browser, service: Service) -> None:
    key = public_get(service, "evil")["key"]
    page, seen = open_page(browser, service.admin_url)
    page.get_by_label("Key", exact=True).fill(key)
    page.get_by_role("button", name="Look up key").click()
    expect(page.locator("#entry-key")).to_have_text(key, timeout=WAIT)
    expect(page.locator("#entry-value")).to_have_text(EVIL)
    assert page.locator("#entry-value *").count() == 0  # text, no element
    assert page.evaluate("window.__pwned") is None
    # A long value is cut at 64 KiB, the rest a button away.
    page.get_by_label("Key", exact=True).fill(public_get(service, "big")["key"])
    page.get_by_role("button", name="Look up key").click()
    expect(page.locator("#entry-cut")).to_contain_text("Showing 65536 of 80000", timeout=WAIT)
    assert len(page.locator("#entry-value").inner_text()) == 65536
    page.get_by_role("button", name="Show all").click()
    expect(page.locator("#entry-cut")).to_be_hidden()
    assert page.locator("#entry-value").inner_text() == BIG
    assert seen.problems(page) == []
    page.close()


def test_the_inspector_shows_an_entry_and_its_timeline(browser: Browser, service: Service) -> None:
    key = public_get(service, "seen")["key"]
    page, seen = open_page(browser, service.admin_url)
    form = page.locator("#args-form")
    expect(form.get_by_label("Job")).to_have_value("item", timeout=WAIT)
    form.get_by_label("id").fill("seen")
    form.get_by_role("button", name="Look up").click()
    expect(page.locator("#entry-key")).to_have_text(key, timeout=WAIT)
    expect(page.locator("#entry-meta")).to_contain_text("item:seen")
    expect(page.locator("#entry-value")).to_have_text('{\n  "ok": true\n}')
    timeline = page.locator("#timeline svg")
    expect(timeline.locator("rect.fresh")).to_have_count(1)
    expect(timeline.locator("line.now")).to_have_count(1)
    expect(timeline).to_contain_text("fresh until")
    # An unknown key is said so.
    page.get_by_label("Key", exact=True).fill("rfd:item:v1:id=never")
    page.get_by_role("button", name="Look up key").click()
    expect(page.locator("#inspect-message")).to_contain_text("No entry", timeout=WAIT)
    assert seen.problems(page, allowed=("404 (Not Found)",)) == []
    page.close()


def test_a_soft_purge_confirmed_in_the_dialog(browser: Browser, service: Service) -> None:
    key = public_get(service, "soft")["key"]
    assert public_get(service, "soft")["status"] == "hit"
    page, seen = open_page(browser, service.admin_url)
    form = page.locator("#purge-form")
    form.get_by_label("key", exact=True).check()
    form.get_by_label("Key, job or tag").fill(key)
    form.get_by_label("soft", exact=False).check()
    form.get_by_role("button", name="Purge…").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"Soft purge the entry of key {key}?")
    expect(page.locator("#confirm-cancel")).to_be_focused()
    page.keyboard.press("Escape")  # cancelled: nothing purged
    expect(dialog).to_be_hidden()
    assert public_get(service, "soft")["status"] == "hit"
    form.get_by_role("button", name="Purge…").click()
    dialog.get_by_role("button", name="Soft purge").click()
    expect(page.locator("#purge-answer")).to_contain_text("purged 1", timeout=WAIT)
    assert public_get(service, "soft")["status"] == "stale"
    assert seen.problems(page) == []
    page.close()


def test_the_page_fits_a_narrow_screen(browser: Browser, service: Service) -> None:
    public_get(service, "narrow")
    page, seen = open_page(browser, service.admin_url, width=375)
    expect(page.locator("#jobs-table tbody[data-job=item]")).to_be_visible(timeout=WAIT)
    expect(page.locator("#o-version")).to_have_text("0.1.0", timeout=WAIT)
    page.get_by_label("Key", exact=True).fill("rfd:item:v1:id=narrow")
    page.get_by_role("button", name="Look up key").click()
    expect(page.locator("#timeline svg")).to_be_visible(timeout=WAIT)
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1] == 375
    assert seen.problems(page) == []
    page.close()


def test_with_an_admin_token_the_page_asks_for_it(browser: Browser, guarded: Service) -> None:
    page, seen = open_page(browser, guarded.admin_url)
    token = page.locator("#token")
    expect(token).to_be_visible(timeout=WAIT)
    expect(page.locator("#token-message")).to_contain_text("needs a token")
    field = page.get_by_role("textbox", name="Admin token")
    expect(field).to_be_focused()
    field.fill("not-the-token")
    page.keyboard.press("Enter")
    expect(page.locator("#token-message")).to_contain_text("token was refused", timeout=WAIT)
    field.fill(ADMIN)
    page.get_by_role("button", name="Use this token").click()
    expect(token).to_be_hidden(timeout=WAIT)
    expect(page.locator("#jobs-table tbody[data-job=item]")).to_be_visible(timeout=WAIT)
    expect(page.locator("#o-version")).to_have_text("0.1.0", timeout=WAIT)
    # Kept for this tab only; never in a cookie or localStorage.
    assert page.evaluate("sessionStorage.getItem('refresherd.admin_token')") == ADMIN
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert seen.problems(page, allowed=("401 (Unauthorized)",)) == []
    # The page's files needed no token; the API still does.
    assert httpx.get(guarded.admin_url + "/v1/jobs").status_code == 401
    page.close()
