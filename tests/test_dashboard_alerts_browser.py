"""Alerts in a real browser: Debian's Chromium (Playwright) against `monapi serve`, whose own
alert runner evaluates the rules every second, as in production.

One instance and one browser for the module, a fresh browser context per test (as in
test_dashboard_browser.py). What the pages show is checked against the API, and what a form
changed is read back through it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from . import browser as bw
from .test_dashboard_browser import PASSWORD, USER, Served, _cli, push, register
from .test_serve import call, start_instance

pytestmark = pytest.mark.slow

# How long the runner may take to evaluate a new rule or value: it ticks every second; a
# worker that starts late takes the lease within its first tick.
FIRES_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("dashboard-alerts")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAPI_")}
    env.update(MONAPI_DATA_DIR=str(data), MONAPI_LOG_LEVEL="WARNING")
    _cli(env, "db", "upgrade")
    assert (
        _cli(env, "admin", "create-user", USER, "--password-stdin", stdin=PASSWORD + "\n")
        == f"created dashboard user {USER}"
    )
    token = _cli(env, "admin", "create-token", "--name", "browser tests").split()[-1]
    proc, base, log = start_instance(
        data, {"MONAPI_RATE_LIMIT_LOGIN": "1000/minute", "MONAPI_ALERTS_INTERVAL": "1s"}
    )
    try:
        s = Served(base, token)
        s.ids["web-01"], s.keys["web-01"] = register(s, "web-01", "192.0.2.10", {"role": "web"})
        s.ids["db-01"], s.keys["db-01"] = register(s, "db-01", "192.0.2.20", {"role": "db"})
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


def api_rule(s: Served, **body: Any) -> dict[str, Any]:
    status, rule, _ = call(s.base, "POST", "/api/v1/alerts", s.token, body)
    assert status == 201, rule
    return dict(rule)


def states(s: Served, rule_id: int) -> dict[int, str]:
    """server id -> state of a rule's pending and firing alerts, as the API says."""
    status, body, _ = call(s.base, "GET", f"/api/v1/alerts/states?rule_id={rule_id}", s.token)
    assert status == 200, body
    return {int(i["server_id"]): str(i["state"]) for i in body["items"]}


def wait_for_state(s: Served, rule_id: int, want: dict[int, str]) -> None:
    got = bw.eventually(lambda: states(s, rule_id), lambda got: got == want, FIRES_WITHIN_S)
    assert got == want


def test_a_firing_alert_on_the_overview_and_the_server_page(served: Served, page: Page) -> None:
    web, db1 = served.ids["web-01"], served.ids["db-01"]
    rule = api_rule(
        served,
        name="High CPU",
        measurement="cpu",
        field="usage_percent",
        aggregation="last",
        window="10m",
        condition=">",
        threshold=90,
        severity="critical",
    )
    now = int(time.time())
    cpu = [{"measurement": "cpu", "timestamp": now - 5, "fields": {"usage_percent": 97.0}}]
    assert push(served, served.keys["web-01"], cpu) == 204
    low = [{"measurement": "cpu", "timestamp": now - 5, "fields": {"usage_percent": 12.0}}]
    assert push(served, served.keys["db-01"], low) == 204
    wait_for_state(served, rule["id"], {web: "firing"})

    page.reload()
    panel = page.locator("#firing-alerts")
    expect(panel.locator("h2")).to_contain_text("Firing alerts")
    rows = panel.locator("tr[data-alert]")
    expect(rows).to_have_count(1)
    row = panel.locator(f"tr[data-alert='{rule['id']}-{web}']")
    expect(row.locator(".state")).to_have_text("firing")
    expect(row.locator(".severity")).to_have_text("critical")
    expect(row.locator("td[data-label=Value]")).to_have_text("97.0 %")
    expect(row.locator("td[data-label=Rule] code")).to_have_text(
        "last(cpu.usage_percent) over 10m > 90"
    )
    expect(page.locator("header nav #firing-count")).to_have_text("1")
    # the panel is above the fleet table, which is unchanged
    panel_box, fleet_box = panel.bounding_box(), page.locator("#fleet").bounding_box()
    assert panel_box and fleet_box and panel_box["y"] < fleet_box["y"]
    expect(page.locator("#fleet a.host")).to_have_text(["db-01", "web-01"])
    bw.screenshot(page, "alerts-overview.png")

    row.locator("a.alert-host").click()
    expect(page).to_have_url(f"{served.base}/servers/{web}")
    section = page.locator("#server-alerts")
    expect(section.locator(f"tr[data-alert='{rule['id']}-{web}'] .state")).to_have_text("firing")
    page.wait_for_selector("#charts[data-ready=true]")
    bw.screenshot(page, "alerts-server.png")

    # Silence this server from its page: the alert is marked, the API has the silence.
    section.locator("select[name=duration]").select_option("4h")
    section.locator("input[name=comment]").fill("kernel update")
    section.locator("button", has_text="Silence this server").click()
    expect(page).to_have_url(f"{served.base}/servers/{web}")
    expect(page.locator(".flash")).to_contain_text("server web-01 silenced until")
    expect(section.locator(f"tr[data-alert='{rule['id']}-{web}'] .badge.silenced")).to_be_visible()
    expect(section.locator(".silence-line")).to_contain_text("every rule until")
    status, body, _ = call(served.base, "GET", "/api/v1/alerts/silences", served.token)
    assert status == 200
    [silence] = [x for x in body["items"] if x["server_id"] == web]
    assert (silence["comment"], silence["rule_id"]) == ("kernel update", None)
    section.locator(".silence-line button", has_text="End now").click()
    expect(page.locator(".flash")).to_have_text("silence ended")
    expect(section.locator(".silence-line")).to_have_count(0)

    # db-01 has no alert; its page says so.
    page.goto(f"{served.base}/servers/{db1}")
    expect(page.locator("#server-alerts")).to_contain_text("No alert is firing or pending")

    # On a phone the alert table becomes cards like the fleet's: nothing scrolls sideways.
    page.set_viewport_size(bw.PHONE)
    page.goto(served.base + "/")
    expect(page.locator("#firing-alerts tr[data-alert]")).to_have_count(1)
    width, inner = bw.no_horizontal_scroll(page)
    bw.screenshot(page, "alerts-overview-phone.png")
    assert width <= inner, f"the overview scrolls sideways on a phone: {width} > {inner}"

    # The value falls: the runner resolves the alert and the pages stop showing it.
    ok = [{"measurement": "cpu", "timestamp": int(time.time()), "fields": {"usage_percent": 5.0}}]
    assert push(served, served.keys["web-01"], ok) == 204
    wait_for_state(served, rule["id"], {})
    page.set_viewport_size(bw.DESKTOP)
    page.goto(served.base + "/")
    expect(page.locator("#firing-alerts")).to_have_count(0)
    expect(page.locator("header nav #firing-count")).to_have_count(0)
    assert call(served.base, "DELETE", f"/api/v1/alerts/{rule['id']}", served.token)[0] == 204


def test_add_a_rule_through_the_form_and_see_it_fire(served: Served, page: Page) -> None:
    web = served.ids["web-01"]
    page.locator("header nav a", has_text="Alerts").click()
    expect(page).to_have_url(served.base + "/alerts")
    page.click("a:has-text('Add a rule')")
    expect(page.locator("h1")).to_have_text("Add an alert rule")
    form = page.locator("form.rule-form")
    # Only the inputs of the chosen kind and target are shown (CSS, no script).
    expect(form.locator("input[name=intervals]")).to_be_hidden()
    expect(form.locator("textarea[name=labels]")).to_be_hidden()
    form.locator("input[name=kind][value=silent]").check()
    expect(form.locator("input[name=intervals]")).to_be_visible()
    expect(form.locator("select[name=field]")).to_be_hidden()
    form.locator("input[name=kind][value=threshold]").check()

    form.locator("input[name=name]").fill("Disk full")
    form.locator("select[name=field]").select_option("disk.used_percent")
    form.locator("input[name=tags]").fill("mount=/data")
    form.locator("select[name=aggregation]").select_option("max")
    form.locator("input[name=window]").fill("10m")
    form.locator("select[name=condition]").select_option(">=")
    form.locator("input[name=threshold]").fill("eighty")
    form.locator("input[name=target][value=labels]").check()
    form.locator("textarea[name=labels]").fill("role=web")
    form.locator("select[name=severity]").select_option("critical")
    with page.expect_response(lambda r: r.request.method == "POST") as info:
        form.locator("button", has_text="Save").click()
    assert info.value.status == 422
    expect(page.locator("#err-threshold")).to_have_text("threshold must be a number")
    expect(page.locator("textarea[name=labels]")).to_have_value("role=web")  # kept
    bw.screenshot(page, "alert-rule-error.png")
    page.locator("input[name=threshold]").fill("80")
    page.locator("form.rule-form button", has_text="Save").click()
    expect(page).to_have_url(served.base + "/alerts")
    expect(page.locator(".flash")).to_have_text("rule Disk full added")

    status, body, _ = call(served.base, "GET", "/api/v1/alerts", served.token)
    assert status == 200
    [rule] = [r for r in body["items"] if r["name"] == "Disk full"]
    assert rule["expression"] == "max(disk.used_percent{mount=/data}) over 10m >= 80"
    assert (rule["labels"], rule["server_ids"], rule["severity"]) == (
        {"role": "web"},
        None,
        "critical",
    )
    row = page.locator(f"tr[data-rule='{rule['id']}']")
    expect(row.locator("td[data-label=Servers] .label")).to_have_text("role=web")

    # web-01's /data fills up: the runner fires the rule made through the form.
    now = int(time.time())
    points = [
        {
            "measurement": "disk",
            "timestamp": now - 5,
            "tags": {"mount": mount},
            "fields": {"used_percent": used},
        }
        for mount, used in (("/", 40.0), ("/data", 91.5))
    ]
    assert push(served, served.keys["web-01"], points) == 204
    wait_for_state(served, rule["id"], {web: "firing"})
    page.reload()
    alert = page.locator(f"#alerts-now tr[data-alert='{rule['id']}-{web}']")
    expect(alert.locator(".state")).to_have_text("firing")
    expect(alert.locator("td[data-label=Value]")).to_contain_text("91.5 %")
    expect(alert.locator("td[data-label=Value]")).to_contain_text("mount=/data")
    expect(row.locator("td[data-label=Now]")).to_have_text("1 firing")
    expect(page.locator("#history tr[data-event]").first).to_contain_text("Disk full")
    bw.screenshot(page, "alerts.png")

    # Delete it through its dialog; Cancel first does nothing.
    row.locator("button", has_text="Delete").click()
    dialog = page.locator(f"#dlg-delete-rule-{rule['id']}")
    expect(dialog).to_be_visible()
    dialog.locator("button[data-close]").click()
    expect(dialog).to_be_hidden()
    row.locator("button", has_text="Delete").click()
    dialog.locator("button[type=submit]").click()
    expect(page.locator(".flash")).to_have_text("rule Disk full deleted")
    expect(page.locator(f"tr[data-rule='{rule['id']}']")).to_have_count(0)
    assert call(served.base, "GET", f"/api/v1/alerts/{rule['id']}", served.token)[0] == 404
