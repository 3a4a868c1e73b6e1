"""The web dashboard in a real browser: Debian's Chromium (Playwright) against `monapi serve`.

One server instance (gunicorn, two workers) and one browser for the module; each test gets a
fresh browser context. Screenshots go to ``MONAPI_TEST_ARTIFACTS`` (default
``test-artifacts/dashboard/``). Everything the page does is checked from the outside as well:
what a form changed is read back through the HTTP API.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from monapi.services.metrics import auto_step

from . import browser as bw
from .test_serve import call, start_instance

pytestmark = pytest.mark.slow

USER = "alice"
PASSWORD = "correct horse battery"
CPU = "cpu.usage_percent"


@dataclass
class Served:
    """The running instance and the servers the module made."""

    base: str
    token: str  # admin
    ids: dict[str, int] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    cpu: list[tuple[int, float]] = field(default_factory=list)  # web-01's pushed cpu points


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "monapi.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def register(s: Served, hostname: str, ip: str, labels: dict[str, str]) -> tuple[int, str]:
    status, body, _ = call(
        s.base,
        "POST",
        "/api/v1/servers",
        s.token,
        {"hostname": hostname, "ip_address": ip, "labels": labels},
    )
    assert status == 201, body
    return int(body["id"]), str(body["api_key"])


def push(s: Served, key: str, points: list[dict[str, Any]]) -> int:
    return call(s.base, "POST", "/api/v1/data", key, {"points": points})[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("dashboard")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    env.update(MONAPI_DATA_DIR=str(data), MONAPI_LOG_LEVEL="WARNING")
    _cli(env, "db", "upgrade")
    with ThreadPoolExecutor(2) as pool:  # two slow starts of Python at once
        user = pool.submit(
            _cli, env, "admin", "create-user", USER, "--password-stdin", stdin=PASSWORD + "\n"
        )
        made = pool.submit(_cli, env, "admin", "create-token", "--name", "browser tests")
        assert user.result() == f"created dashboard user {USER}"
        token = made.result().split()[-1]
    assert token.startswith("mka_"), token
    # Each test logs in once or twice: more than the default 10 per minute from 127.0.0.1.
    proc, base, log = start_instance(data, {"MONAPI_RATE_LIMIT_LOGIN": "1000/minute"})
    try:
        s = Served(base, token)
        now = int(time.time()) - 60
        # web-01: one CPU value a minute over the last 30 minutes (a known number of chart
        # points), memory and two disks once a minute over the last hour.
        s.ids["web-01"], s.keys["web-01"] = register(s, "web-01", "192.0.2.10", {"role": "web"})
        s.cpu = [(now - 60 * i, 10.0 + 1.5 * i) for i in range(30)]
        points: list[dict[str, Any]] = [
            {"measurement": "cpu", "timestamp": ts, "fields": {"usage_percent": v}}
            for ts, v in s.cpu
        ]
        for i in range(60):
            ts = now - 60 * i
            points.append(
                {"measurement": "mem", "timestamp": ts, "fields": {"used_percent": 40.0 + i % 7}}
            )
            for mount, used in (("/", 55.0), ("/data", 70.0 + i % 5)):
                points.append(
                    {
                        "measurement": "disk",
                        "timestamp": ts,
                        "tags": {"mount": mount},
                        "fields": {"used_percent": used},
                    }
                )
        assert push(s, s.keys["web-01"], points) == 204
        # db-01: busier than web-01 (sorting by CPU puts it after web-01).
        s.ids["db-01"], s.keys["db-01"] = register(s, "db-01", "192.0.2.20", {"role": "db"})
        busy = [
            {
                "measurement": m,
                "timestamp": now - 60 * i,
                "fields": {f: 90.0 - i},
            }
            for i in range(10)
            for m, f in (("cpu", "usage_percent"), ("mem", "used_percent"))
        ]
        assert push(s, s.keys["db-01"], busy) == 204
        # new-01: registered, never pushed.
        s.ids["new-01"], s.keys["new-01"] = register(s, "new-01", "192.0.2.30", {"role": "web"})
        yield s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        bw.assert_log_clean(log)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with bw.chromium() as b:
        yield b


@pytest.fixture
def context(browser: Browser) -> Iterator[tuple[BrowserContext, bw.Watch]]:
    """A fresh context (no cookies); no script of any page it opened may throw."""
    with bw.watched_context(browser) as watched:
        yield watched


@pytest.fixture
def page(served: Served, context: tuple[BrowserContext, bw.Watch]) -> Page:
    """A signed-in page on the overview."""
    pg = context[0].new_page()
    bw.log_in(pg, served.base, USER, PASSWORD)
    return pg


def session_payload(value: str) -> dict[str, Any]:
    """What Flask's signed session cookie holds (it is signed, not encrypted)."""
    compressed = value.startswith(".")
    data = value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    payload: dict[str, Any] = json.loads(zlib.decompress(raw) if compressed else raw)
    return payload


def hostnames(page: Page) -> list[str]:
    return [t.strip() for t in page.locator("#fleet a.host").all_inner_texts()]


# 1 -------------------------------------------------------------------------------------------
def test_log_in(served: Served, context: tuple[BrowserContext, bw.Watch]) -> None:
    ctx, _ = context
    page = ctx.new_page()
    page.goto(served.base + "/")
    expect(page).to_have_url(re.compile(re.escape(served.base) + r"/login\?next=/?$"))
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", "not the password")
    with page.expect_response(lambda r: r.request.method == "POST") as info:
        page.click("form button[type=submit]")
    assert info.value.status == 401
    expect(page.locator("#login-error")).to_have_text("wrong user name or password")
    assert page.url.startswith(served.base + "/login")
    expect(page.locator("input[name=username]")).to_have_value(USER)
    bw.screenshot(page, "login-error.png")

    page.fill("input[name=password]", PASSWORD)
    page.click("form button[type=submit]")
    expect(page).to_have_url(served.base + "/")
    expect(page.locator("header .who")).to_have_text(USER)
    expect(page.locator("#fleet")).to_be_visible()
    (cookie,) = [c for c in ctx.cookies() if c["name"] == "monapi_session"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["secure"] is True
    assert cookie["domain"] == "127.0.0.1"
    # HttpOnly: the page's scripts cannot read it.
    assert "monapi_session" not in page.evaluate("document.cookie")


# 2 -------------------------------------------------------------------------------------------
def test_overview(served: Served, page: Page) -> None:
    web = page.locator(f"#fleet tr[data-server-id='{served.ids['web-01']}']")
    expect(web.locator(".status")).to_have_text("online")
    expect(web.locator(".label")).to_have_text(["role=web"])
    expect(web.locator("td[data-label=CPU] .now")).to_have_text(f"{served.cpu[0][1]:.1f} %")
    paths = web.locator("svg.spark path")
    expect(paths).to_have_count(3)
    for d in (p.get_attribute("d") for p in paths.all()):
        assert d and d.startswith("M"), d
    new = page.locator(f"#fleet tr[data-server-id='{served.ids['new-01']}']")
    expect(new.locator(".status")).to_have_text("never seen")
    expect(new.locator("td[data-label='Last seen']")).to_have_text("never")
    expect(new.locator("svg.spark path")).to_have_count(0)
    expect(page.locator("#fleet .counts")).to_contain_text("3 servers")
    assert hostnames(page) == ["db-01", "new-01", "web-01"]
    bw.screenshot(page, "overview.png")

    # Search: htmx swaps the table in place (no new document), and the URL follows.
    page.evaluate("window.__sameDocument = true")
    with page.expect_request(
        lambda r: "q=eb-" in r.url and r.headers.get("hx-request") == "true"
    ) as req:
        page.fill("input[name=q]", "eb-")
    assert req.value.resource_type in ("xhr", "fetch")
    expect(page.locator("#fleet a.host")).to_have_text(["web-01"])
    expect(page).to_have_url(re.compile(r"[?&]q=eb-"))
    page.fill("input[name=q]", "")
    expect(page.locator("#fleet a.host")).to_have_count(3)

    # Status filter.
    page.select_option("select[name=status]", "never_seen")
    expect(page.locator("#fleet a.host")).to_have_text(["new-01"])
    page.select_option("select[name=status]", "online")
    expect(page.locator("#fleet a.host")).to_have_text(["db-01", "web-01"])
    page.select_option("select[name=status]", "")
    expect(page.locator("#fleet a.host")).to_have_count(3)

    # Sort by CPU: lowest first; again: highest first. A server without values comes last
    # either way.
    page.locator("#fleet th a", has_text="CPU").click()
    expect(page.locator("#fleet a.host")).to_have_text(["web-01", "db-01", "new-01"])
    expect(page.locator("#fleet th[aria-sort=ascending]")).to_contain_text("CPU")
    page.locator("#fleet th a", has_text="CPU").click()
    expect(page.locator("#fleet th[aria-sort=descending]")).to_contain_text("CPU")
    expect(page.locator("#fleet a.host")).to_have_text(["db-01", "web-01", "new-01"])
    assert page.evaluate("window.__sameDocument") is True
    page.locator("#fleet th a", has_text="Server").click()
    expect(page.locator("#fleet a.host")).to_have_text(["db-01", "new-01", "web-01"])

    page.set_viewport_size(bw.PHONE)
    page.goto(served.base + "/")
    expect(page.locator("#fleet a.host")).to_have_count(3)
    width, inner = bw.no_horizontal_scroll(page)
    assert width <= inner, f"the overview scrolls sideways on a phone: {width} > {inner}"
    bw.screenshot(page, "overview-phone.png")


# 3 -------------------------------------------------------------------------------------------
def _legend(chart: Locator) -> tuple[str, str]:
    """The (time, value) the chart's legend shows for the cursor."""
    rows = chart.locator(".u-legend .u-series .u-value")
    return rows.nth(0).inner_text().strip(), rows.nth(1).inner_text().strip()


def _hover(page: Page, chart: Locator, fraction: float) -> tuple[str, str]:
    chart.scroll_into_view_if_needed()
    box = chart.locator(".u-over").bounding_box()
    assert box is not None
    before = _legend(chart)
    page.mouse.move(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
    # The legend follows the cursor on the next animation frame.
    return bw.eventually(lambda: _legend(chart), lambda got: got != before, timeout=2)


def _expected_points(served: Served, range_s: int) -> int:
    step = auto_step(range_s)
    return len({ts // step for ts, _ in served.cpu})


def test_server_page(served: Served, page: Page) -> None:
    page.locator("#fleet a.host", has_text="web-01").click()
    expect(page).to_have_url(f"{served.base}/servers/{served.ids['web-01']}")
    expect(page.locator("h1.server-title")).to_contain_text("web-01")
    page.wait_for_selector("#charts[data-ready=true]")
    assert page.get_attribute("#charts", "data-step") == str(auto_step(3600))
    chart = page.locator(f".chart[data-field='{CPU}']")
    assert chart.get_attribute("data-points") == str(_expected_points(served, 3600)) == "30"
    expect(chart.locator("canvas")).to_have_count(1)
    expect(chart.locator("h3")).to_have_text(f"{CPU} (%)")
    # Both disks are drawn in one chart, one series per mount.
    disk = page.locator(".chart[data-field='disk.used_percent']")
    expect(disk.locator(".u-legend .u-series .u-label")).to_have_text(["Time", "/", "/data"])
    # (An hour of points a minute apart: the oldest may have left the range by now.)
    for name, most in (("mem.used_percent", 60), ("disk.used_percent", 120)):
        count = int(page.get_attribute(f".chart[data-field='{name}']", "data-points") or 0)
        assert most - 4 <= count <= most, (name, count)
    # Fields configured but never pushed are listed, not drawn.
    expect(page.locator("#no-data")).to_contain_text("No data in this range for:")
    bw.screenshot(page, "server.png")

    pushed = {f"{v:.1f} %" for _, v in served.cpu}
    _, value = _hover(page, chart, 0.5)
    assert value in pushed, (value, sorted(pushed))
    # The cursor is synchronised: memory's legend follows too.
    mem_value = _legend(page.locator(".chart[data-field='mem.used_percent']"))[1]
    assert re.fullmatch(r"\d+\.\d %", mem_value), mem_value

    # Zoom: drag from 55 % to 90 % of the plot; the legend at the plot's edges then shows
    # times inside the dragged span, later at the left edge and earlier at the right.
    left0, _ = _hover(page, chart, 0.01)
    right0, _ = _hover(page, chart, 0.99)
    chart.scroll_into_view_if_needed()
    box = chart.locator(".u-over").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.55, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.9, y, steps=8)
    page.mouse.up()
    left1, v1 = _hover(page, chart, 0.01)
    right1, v2 = _hover(page, chart, 0.99)
    assert left0 < left1 < right1 < right0, (left0, left1, right1, right0)
    assert {v1, v2} <= pushed
    # Every chart of the page zoomed with it.
    mem = page.locator(".chart[data-field='mem.used_percent']")
    mem_left, _ = _hover(page, mem, 0.01)
    assert mem_left == left1

    # 24 h: a new page with a coarser step.
    page.locator(".ranges a", has_text="24h").click()
    expect(page).to_have_url(re.compile(r"\?range=24h$"))
    page.wait_for_selector("#charts[data-ready=true]")
    expect(page.locator(".ranges a[aria-current]")).to_have_text("24h")
    assert page.get_attribute("#charts", "data-step") == str(auto_step(86400))
    chart = page.locator(f".chart[data-field='{CPU}']")
    expect(chart.locator("canvas")).to_have_count(1)
    assert chart.get_attribute("data-points") == str(_expected_points(served, 86400))
    assert int(chart.get_attribute("data-points") or 0) < 30

    page.set_viewport_size(bw.PHONE)
    page.goto(f"{served.base}/servers/{served.ids['web-01']}")
    page.wait_for_selector("#charts[data-ready=true]")
    width, inner = bw.no_horizontal_scroll(page)
    bw.screenshot(page, "server-phone.png")
    assert width <= inner, f"the server page scrolls sideways on a phone: {width} > {inner}"


def test_custom_range_in_the_browsers_time_zone(served: Served, browser: Browser) -> None:
    """The From/to fields are the browser's local time (here UTC+05:30); the page turns them
    back into the same instants."""
    zone = "Asia/Kolkata"
    ctx, watch = bw.new_context(browser, timezone_id=zone)
    try:
        page = ctx.new_page()
        bw.log_in(page, served.base, USER, PASSWORD)
        page.goto(f"{served.base}/servers/{served.ids['web-01']}")
        page.wait_for_selector("#charts[data-ready=true]")
        start = int(page.get_attribute("#charts", "data-start") or 0)
        end = int(page.get_attribute("#charts", "data-end") or 0)
        local = ZoneInfo(zone)
        shown = datetime.fromtimestamp(start, local).strftime("%Y-%m-%dT%H:%M")
        expect(page.locator("input[name=start]")).to_have_value(shown)
        expect(page.locator("input[name=end]")).to_have_value(
            datetime.fromtimestamp(end, local).strftime("%Y-%m-%dT%H:%M")
        )
        page.click("form.custom-range button[type=submit]")
        expect(page).to_have_url(re.compile(r"[?&]tz=-330&"))
        page.wait_for_selector("#charts[data-ready=true]")
        assert int(page.get_attribute("#charts", "data-start") or 0) == start - start % 60
        assert int(page.get_attribute("#charts", "data-end") or 0) == end - end % 60
        expect(page.locator(".ranges a[aria-current]")).to_have_count(0)
        chart = page.locator(f".chart[data-field='{CPU}']")
        assert chart.get_attribute("data-points") == "30"
    finally:
        ctx.close()
    assert not watch.page_errors and not watch.console_errors, watch


# 4 -------------------------------------------------------------------------------------------
def _field(served: Served, measurement: str, name: str) -> dict[str, Any]:
    status, body, _ = call(
        served.base, "GET", f"/api/v1/fields?measurement={measurement}", served.token
    )
    assert status == 200
    (found,) = [f for f in body["items"] if f["name"] == name]
    return dict(found)


def test_fields(served: Served, page: Page) -> None:
    page.locator("header nav a", has_text="Fields").click()
    expect(page).to_have_url(served.base + "/fields")
    row = page.locator(f"tr[data-field='{CPU}']")
    expect(row.locator("td[data-label=Unit]")).to_have_text("%")
    row.locator("a", has_text="Edit").click()
    expect(page.locator("h1")).to_have_text(f"Edit {CPU}")
    page.fill("input[name=unit]", "pct")
    page.fill("input[name=max]", "150")
    page.click("button:has-text('Save')")
    expect(page).to_have_url(served.base + "/fields")
    expect(page.locator(".flash")).to_have_text(f"field {CPU} saved")
    expect(row.locator("td[data-label=Unit]")).to_have_text("pct")
    expect(row.locator("td[data-label=Max]")).to_have_text("150")

    row.locator("a", has_text="Edit").click()
    expect(page.locator("input[name=max]")).to_have_value("150")
    page.fill("input[name=max]", "abc")
    with page.expect_response(lambda r: r.request.method == "POST") as info:
        page.click("button:has-text('Save')")
    assert info.value.status == 422
    expect(page.locator("#err-max")).to_have_text("max must be a number")
    expect(page.locator("input[name=max]")).to_have_value("abc")  # kept for correcting
    page.fill("input[name=max]", "150")
    page.fill("input[name=min]", "200")
    with page.expect_response(lambda r: r.request.method == "POST") as info:
        page.click("button:has-text('Save')")
    assert info.value.status == 422
    expect(page.locator("#err-min")).to_contain_text("min (200) is greater than max (150)")
    bw.screenshot(page, "field-error.png")

    stored = _field(served, "cpu", "usage_percent")
    assert (stored["unit"], stored["min"], stored["max"]) == ("pct", 0, 150)

    page.goto(served.base + "/fields")
    page.click("a:has-text('Add a field')")
    page.fill("input[name=measurement]", "app")
    page.fill("input[name=name]", "queue_depth")
    page.select_option("select[name=type]", "int")
    page.click("button:has-text('Save')")
    expect(page).to_have_url(served.base + "/fields")
    new = page.locator("tr[data-field='app.queue_depth']")
    expect(new.locator("td[data-label=Type]")).to_have_text("int")
    expect(new.locator("td[data-label=Enabled]")).to_have_text("yes")
    bw.screenshot(page, "fields.png")
    assert _field(served, "app", "queue_depth")["type"] == "int"
    point = [{"measurement": "app", "fields": {"queue_depth": 7}}]
    key = served.keys["web-01"]
    assert bw.eventually(lambda: push(served, key, point), lambda got: got == 204) == 204


# 5 -------------------------------------------------------------------------------------------
def test_enrollment(served: Served, page: Page) -> None:
    page.locator("header nav a", has_text="Enrollment").click()
    expect(page).to_have_url(served.base + "/enrollment")
    page.fill("input[name=name]", "rack 4")
    page.fill("input[name=expires_in]", "24h")
    page.fill("input[name=max_uses]", "2")
    page.click("button:has-text('Create token')")
    expect(page.locator("#new-token h2")).to_have_text("Token rack 4 created")
    token = page.locator("#token-value").inner_text().strip()
    assert re.fullmatch(r"mke_\S+", token), token
    commands = page.locator("#install-commands").inner_text()
    assert f"register --url {served.base} --enroll-token {token}" in commands, commands
    assert "install-service" in commands
    row = page.locator("tr", has=page.locator("td[data-label=Name]", has_text="rack 4"))
    expect(row.locator("td[data-label=Uses]")).to_have_text("0 of 2")
    expect(row.locator("td[data-label=State]")).to_have_text("active")
    bw.screenshot(page, "enrollment.png")

    body = {"hostname": "rack4-01", "ip_address": "192.0.2.40"}
    status, server, _ = call(served.base, "POST", "/api/v1/servers", token, body)
    assert status == 201, server
    assert server["api_key"].startswith("mks_")
    # Shown once: a fresh look at the page has the token's row but not the token.
    page.goto(served.base + "/enrollment")
    expect(page.locator("#new-token")).to_have_count(0)
    assert token not in page.content()
    expect(row.locator("td[data-label=Uses]")).to_have_text("1 of 2")

    page.once("dialog", lambda d: d.accept())
    row.locator("button", has_text="Revoke").click()
    expect(page.locator(".flash")).to_have_text("token rack 4 revoked")
    expect(row.locator("td[data-label=State]")).to_have_text("revoked")
    body = {"hostname": "rack4-02", "ip_address": "192.0.2.41"}

    def register_again() -> int:
        return call(served.base, "POST", "/api/v1/servers", token, body)[0]

    assert bw.eventually(register_again, lambda got: got == 401) == 401


# 6 -------------------------------------------------------------------------------------------
def test_server_actions(served: Served, page: Page) -> None:
    sid, key = register(served, "victim-01", "192.0.2.50", {})
    one = [{"measurement": "cpu", "fields": {"usage_percent": 5.0}}]
    assert push(served, key, one) == 204
    url = f"{served.base}/servers/{sid}"
    page.goto(url)

    def pushes(k: str, want: int) -> None:
        got = bw.eventually(lambda: push(served, k, one), lambda got: got == want)
        assert got == want

    # Disable, through its dialog; Cancel first does nothing.
    page.click("button[data-dialog=dlg-disable]")
    expect(page.locator("#dlg-disable")).to_be_visible()
    page.locator("#dlg-disable button[data-close]").click()
    expect(page.locator("#dlg-disable")).to_be_hidden()
    pushes(key, 204)
    page.click("button[data-dialog=dlg-disable]")
    page.locator("#dlg-disable button[type=submit]").click()
    expect(page).to_have_url(url)
    expect(page.locator(".flash")).to_contain_text("victim-01 is disabled")
    expect(page.locator("h1 .badge")).to_have_text("disabled")
    pushes(key, 403)

    page.click("button[data-dialog=dlg-enable]")
    page.locator("#dlg-enable button[type=submit]").click()
    expect(page.locator(".flash")).to_have_text("victim-01 is enabled")
    expect(page.locator("h1 .badge")).to_have_count(0)
    pushes(key, 204)

    page.click("button[data-dialog=dlg-rotate]")
    page.locator("#dlg-rotate button[type=submit]").click()
    new_key = page.locator("pre#new-key").inner_text().strip()
    assert re.fullmatch(r"mks_\S+", new_key), new_key
    assert new_key != key
    bw.screenshot(page, "rotated-key.png")
    pushes(key, 401)
    pushes(new_key, 204)
    page.click("a:has-text('Back to the charts')")
    expect(page).to_have_url(url)
    assert new_key not in page.content()

    # Delete: the dialog wants the host name. The browser refuses a wrong one (pattern) ...
    page.click("button[data-dialog=dlg-delete]")
    confirm = page.locator("#dlg-delete input[name=confirm_hostname]")
    confirm.fill("victim-02")
    page.locator("#dlg-delete button[type=submit]").click()
    expect(page.locator("#dlg-delete")).to_be_visible()
    assert confirm.evaluate("e => e.validity.valid") is False
    assert page.url == url
    # ... and so does the server, when the browser's check is out of the way.
    confirm.evaluate("e => e.removeAttribute('pattern')")
    page.locator("#dlg-delete button[type=submit]").click()
    expect(page.locator(".flash.error")).to_have_text("not deleted: type victim-01 to confirm")
    assert call(served.base, "GET", f"/api/v1/servers/{sid}", served.token)[0] == 200
    pushes(new_key, 204)

    page.click("button[data-dialog=dlg-delete]")
    confirm.fill("victim-01")
    page.locator("#dlg-delete button[type=submit]").click()
    expect(page).to_have_url(served.base + "/")
    expect(page.locator(".flash")).to_have_text("victim-01 and all of its data were deleted")
    expect(page.locator("#fleet a.host", has_text="victim-01")).to_have_count(0)
    assert call(served.base, "GET", f"/api/v1/servers/{sid}", served.token)[0] == 404
    pushes(new_key, 401)


# 7 -------------------------------------------------------------------------------------------
def test_log_out(
    served: Served, browser: Browser, page: Page, context: tuple[BrowserContext, bw.Watch]
) -> None:
    ctx, _ = context
    old = ctx.cookies()
    assert [c["name"] for c in old] == ["monapi_session"]
    page.click("header button:has-text('Log out')")
    expect(page).to_have_url(served.base + "/login")
    page.goto(served.base + "/")
    expect(page).to_have_url(re.compile(re.escape(served.base) + r"/login\?next="))
    expect(page.locator("header")).to_have_count(0)

    # The copied cookie is worthless in another browser.
    other, _ = bw.new_context(browser)
    try:
        other.add_cookies(old)  # type: ignore[arg-type]
        thief = other.new_page()
        resp = thief.goto(served.base + f"/servers/{served.ids['web-01']}")
        expect(thief).to_have_url(re.compile(re.escape(served.base) + r"/login\?next="))
        assert resp is not None and resp.status == 200
        expect(thief.locator("header")).to_have_count(0)
        # Nor a form, even with the CSRF token read out of the (signed, not encrypted) cookie:
        # the answer is the redirect to the log-in page (opaque to fetch: status 0).
        (cookie,) = [c for c in old if c["name"] == "monapi_session"]
        csrf = session_payload(cookie["value"])["csrf"]
        got = thief.evaluate(
            """async ([url, csrf]) => {
                const r = await fetch(url, {method: 'POST', redirect: 'manual',
                                            headers: {'X-CSRF-Token': csrf}});
                return [r.type, r.status];
            }""",
            [f"{served.base}/servers/{served.ids['web-01']}/disable", csrf],
        )
        assert got == ["opaqueredirect", 0], got
    finally:
        other.close()
    assert call(served.base, "GET", f"/api/v1/servers/{served.ids['web-01']}", served.token)[1][
        "enabled"
    ]


# 8 -------------------------------------------------------------------------------------------
def test_every_page_stays_on_monapi_without_errors(
    served: Served, context: tuple[BrowserContext, bw.Watch]
) -> None:
    ctx, watch = context
    page = ctx.new_page()
    bw.log_in(page, served.base, USER, PASSWORD)
    page.fill("input[name=q]", "web")
    expect(page.locator("#fleet a.host")).to_have_text(["web-01"])
    page.locator("#fleet a.host", has_text="web-01").click()
    page.wait_for_selector("#charts[data-ready=true]")
    page.locator(".ranges a", has_text="7d").click()
    page.wait_for_selector("#charts[data-ready=true]")
    page.locator("header nav a", has_text="Fields").click()
    page.locator(f"tr[data-field='{CPU}'] a", has_text="Edit").click()
    expect(page.locator("input[name=unit]")).to_be_visible()
    page.goto(served.base + "/fields?show=discovered")
    page.click("a:has-text('Add a field')")
    expect(page.locator("input[name=measurement]")).to_be_visible()
    page.locator("header nav a", has_text="Enrollment").click()
    expect(page.locator("h1")).to_have_text("Enrollment")
    resp = page.goto(served.base + "/servers/999999")
    assert resp is not None and resp.status == 404
    expect(page.locator("h1")).to_have_text("404")
    expect(page.locator("header nav")).to_be_visible()  # the dashboard's page, not JSON
    page.goto(served.base + "/")
    expect(page.locator("#fleet")).to_be_visible()
    page.wait_for_load_state("networkidle")

    assert len(watch.requests) > 10
    outside = [
        u for u in watch.requests if not (u.startswith(served.base + "/") or u.startswith("data:"))
    ]
    assert not outside, outside
    # The 404 page logs its status as a console error; nothing else may.
    assert len(watch.console_errors) == 1, watch.console_errors
    assert "/servers/999999: " in watch.console_errors[0]
    assert not watch.page_errors, watch.page_errors


# Known bugs (strict: when one is fixed, its test passes, and the marker must go) ------------
def test_searching_keeps_the_sort(served: Served, page: Page) -> None:
    page.locator("#fleet th a", has_text="CPU").click()
    expect(page.locator("#fleet th[aria-sort=ascending]")).to_contain_text("CPU")
    by_cpu = hostnames(page)
    assert by_cpu[:2] == ["web-01", "db-01"], by_cpu
    with page.expect_response(lambda r: "q=-0" in r.url):
        page.fill("input[name=q]", "-0")  # every host name here has it
    page.wait_for_function("() => /q=-0/.test(location.search)")  # swapped in
    assert "sort=cpu" in page.url, page.url
    assert hostnames(page) == by_cpu


def test_every_chart_shows_the_chosen_range(served: Served, page: Page) -> None:
    page.goto(f"{served.base}/servers/{served.ids['web-01']}")
    page.wait_for_selector("#charts[data-ready=true]")
    # cpu was pushed over the last 30 minutes, memory over the last hour: memory's chart must
    # reach back further than cpu's.
    cpu_left, _ = _hover(page, page.locator(f".chart[data-field='{CPU}']"), 0.01)
    mem_left, _ = _hover(page, page.locator(".chart[data-field='mem.used_percent']"), 0.01)
    assert mem_left < cpu_left, (mem_left, cpu_left)


def test_chart_legend_stays_compact_on_a_phone(served: Served, page: Page) -> None:
    page.set_viewport_size(bw.PHONE)
    page.goto(f"{served.base}/servers/{served.ids['web-01']}")
    page.wait_for_selector("#charts[data-ready=true]")
    legend = page.locator(f".chart[data-field='{CPU}'] .u-legend").bounding_box()
    assert legend is not None
    assert legend["height"] < 60, legend
