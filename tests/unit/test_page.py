"""
The operator's page (docs/admin.md, "The operator's page") as the admin
listener serves it: its files with their headers, the loopback C{Host} rule
when the admin API is open, nothing but its own files; and the admin route it
adds, C{GET /v1/jobs/{job}/key}.
"""

from __future__ import annotations

import re
from importlib.resources import files

from refresherd.config import AuthConfig, Secret
from refresherd.http.page import CSP, FILES, load_page
from tests.unit.test_admin import JSON_BODY, AdminTestCase, bearer

PAGE_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
SHIPPED = files("refresherd") / "ui"


class PageTests(AdminTestCase):
    """Admin tokens configured: the page's files need none (they hold no secret)."""

    def assert_page_headers(self, response: object) -> None:
        headers = response.headers  # type: ignore[attr-defined]
        for name, value in PAGE_HEADERS.items():
            self.assertEqual(headers.getRawHeaders(name), [value], name)

    def test_the_page_and_its_files_are_served_without_a_token(self) -> None:
        for path, name, kind in [
            ("/", "index.html", "text/html; charset=utf-8"),
            ("/ui/page.css", "page.css", "text/css; charset=utf-8"),
            ("/ui/page.js", "page.js", "text/javascript; charset=utf-8"),
            ("/ui/icon.svg", "icon.svg", "image/svg+xml"),
        ]:
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(response.headers.getRawHeaders("content-type"), [kind])
            self.assertEqual(body, (SHIPPED / name).read_bytes())
            self.assert_page_headers(response)
            head, body = self.request("HEAD", path)
            self.assertEqual((head.code, body), (200, b""))

    def test_the_csp_is_strict(self) -> None:
        self.assertEqual(
            CSP,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        )

    def test_only_the_pages_own_files_are_served(self) -> None:
        for path in [
            "/ui/index.html",
            "/ui/",
            "/ui/nothing.js",
            "/ui/..%2Fhttp%2Fadmin.py",
            "/ui/%2E%2E%2Fopenapi.json",
            "/ui/..%5Copenapi.json",
            "/ui/page.js%00",
            "/ui/page.js/x",
            "/ui/../openapi.json",
            "/ui/PAGE.JS",
            "/index.html",
        ]:
            self.assertEqual(self.error(404, "GET", path), "not_found", path)
        self.assertEqual(sorted(load_page().files), sorted(FILES))

    def test_a_post_to_the_page_is_not_allowed(self) -> None:
        code = self.error(405, "POST", "/", data=b"{}", headers=JSON_BODY)
        self.assertEqual(code, "method_not_allowed")

    def test_the_page_carries_no_inline_script_or_style(self) -> None:
        html = (SHIPPED / "index.html").read_text()
        self.assertNotRegex(html, r"<script(?![^>]*\bsrc=)")
        self.assertNotIn("<style", html)
        self.assertNotRegex(html, r"\sstyle=|\son[a-z]+=")
        self.assertNotRegex(html, r"(src|href)=\"(https?:)?//")  # nothing from outside
        script = (SHIPPED / "page.js").read_text()
        self.assertNotRegex(script, r"innerHTML|outerHTML|insertAdjacentHTML|document\.write")
        self.assertNotRegex(script, r"\beval\(|new Function|import\(")
        # Every file the page names is one the admin listener serves.
        named = set(re.findall(r'(?:src|href)="ui/([^"]+)"', html))
        self.assertEqual(named, set(FILES))


class OpenPageTests(AdminTestCase):
    """No admin token: the page, as every admin route, needs a loopback Host."""

    def setUp(self) -> None:
        super().setUp()
        self.build(auth=AuthConfig(write_tokens=(Secret("w-token"),)))

    def test_the_page_needs_a_loopback_host(self) -> None:
        for path in ("/", "/ui/page.js", "/ui/page.css"):
            for host in ("evil.example", "evil.example:8081", "127.0.0.1.evil.example"):
                response, body = self.request("GET", path, headers={"Host": host})
                self.assertEqual(response.code, 403, (path, host))
                self.assertEqual(body["error"]["code"], "forbidden")
                for name, value in PAGE_HEADERS.items():
                    self.assertEqual(response.headers.getRawHeaders(name), [value])
            for host in ("localhost:8081", "127.0.0.1", "[::1]:8081"):
                response, _ = self.request("GET", path, headers={"Host": host})
                self.assertEqual(response.code, 200, (path, host))


class KeyTests(AdminTestCase):
    """C{GET /v1/jobs/{job}/key}: the key of a job and arguments, nothing fetched."""

    def test_the_key_of_a_job_and_arguments(self) -> None:
        response, body = self.request(
            "GET", "/v1/jobs/user/key?id=caf%C3%A9", headers=bearer("a-token")
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(body, {"job": "user", "key": "rfd:user:v1:id=caf%C3%A9"})
        self.assertEqual(self.fetcher.calls, [])

    def test_the_key_is_the_one_a_request_reads(self) -> None:
        key = self.cached("42")
        _, body = self.request("GET", "/v1/jobs/user/key?id=42", headers=bearer("a-token"))
        self.assertEqual(body["key"], key)

    def test_bad_arguments_and_unknown_jobs(self) -> None:
        token = bearer("a-token")
        for query in ("", "?id=1&id=2", "?id=1&other=2", "?name=1"):
            code = self.error(400, "GET", "/v1/jobs/user/key" + query, headers=token)
            self.assertEqual(code, "bad_args", query)
        code = self.error(404, "GET", "/v1/jobs/nobody/key?id=1", headers=token)
        self.assertEqual(code, "unknown_job")
