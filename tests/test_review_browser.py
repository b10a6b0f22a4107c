"""The review console in a real headless browser (Debian's Chromium and ChromeDriver, driven by Selenium):
a moderator logs in, filters the queue, restores one item from a selection (back in the mirror and in the
real `rclone serve s3` bucket), confirms another from its page, and finds both in the history under their
name. Screenshots of the queue and the dashboard are kept in .test-artifacts/ (MIRROR_SCAN_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import browserdiff
from .conftest import REPO
from .console_client import PASSWORD, add_user
from .test_review_console import Site

pytestmark = pytest.mark.skipif(
    not browserdiff.have_chromium(),
    reason="Debian's chromium and chromium-driver are not installed (scripts/install.sh installs them as root)",
)


@pytest.fixture
def browser(tmp_path):
    driver = browserdiff.chromium(str(tmp_path / "chromium"), ("--window-size=1280,900",))
    driver.set_page_load_timeout(60)
    driver.implicitly_wait(15)  # a loaded 2-core CI: elements of the next page may take a moment
    yield driver
    driver.quit()


def _artifacts() -> Path:
    where = Path(os.environ.get("MIRROR_SCAN_TEST_ARTIFACTS") or REPO / ".test-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


def fits(browser, what: str) -> None:
    """The page never scrolls sideways at this window's width, and Log out is inside the window."""
    from selenium.webdriver.common.by import By

    wide, room = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert wide <= room, f"{what}: {wide} px wide in a {room} px window"
    box = browser.find_element(By.ID, "logout").rect
    assert 0 <= box["x"] and box["x"] + box["width"] <= room, f"{what}: Log out at {box} in {room} px"


def test_a_moderator_reviews_the_day_in_a_browser(tmp_path, s3, tiny_bundle_master, flag_all, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def arrive(fragment: str) -> None:
        WebDriverWait(browser, 30).until(expected_conditions.url_contains(fragment))

    site = Site(tmp_path, s3, tiny_bundle_master, flag_all)
    add_user(site.people, "maria", tmp_path)
    items = site.items()
    restored, confirmed = items["pic-0.png"], items["pic-1.png"]
    server = site.console()
    try:
        browser.get(f"{server.url}/")
        arrive("/login")  # no page without a session
        browser.find_element(By.ID, "username").send_keys("maria")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login").click()
        assert browser.find_elements(By.ID, "who"), browser.page_source[:3000]
        assert browser.find_element(By.ID, "who").text == "maria (local account)"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#queue tr[id^=row-]")) == len(items)

        # Filter: only quarantined items of the last day from the mirror.
        Select(browser.find_element(By.ID, "f-state")).select_by_value("quarantined")
        Select(browser.find_element(By.ID, "f-age")).select_by_value("1d")
        Select(browser.find_element(By.ID, "f-source")).select_by_value("mirror")
        browser.find_element(By.ID, "apply-filters").click()
        arrive("state=quarantined")
        rows = browser.find_elements(By.CSS_SELECTOR, "#queue tr[id^=row-]")
        assert len(rows) == len(items)
        browser.save_screenshot(str(_artifacts() / "console-queue.png"))

        fits(browser, "the queue at 1280 px")
        # The label filter offers what the policy flagged, not a free text box.
        offered = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "f-label")).options]
        assert offered[0] == "" and "match" in offered, offered

        # Restore one from a selection: asked first, with room for a note.
        browser.find_element(By.ID, f"pick-{restored['short_id']}").click()
        browser.find_element(By.ID, "restore-selected").click()
        confirm_button = browser.find_element(By.ID, "confirm-decision")  # waits for the confirmation page
        assert "Restore 1 item?" in browser.find_element(By.TAG_NAME, "h1").text
        assert confirm_button.text == "Restore 1 item"
        assert not (site.mirror / "pic-0.png").exists()  # nothing done before the confirmation
        browser.find_element(By.ID, "note").send_keys("a comic strip, not a photo")
        confirm_button.click()
        outcome = browser.find_element(By.CSS_SELECTOR, "#outcomes tr.outcome-done")
        assert restored["id"] in outcome.text
        assert (site.mirror / "pic-0.png").read_bytes() == site.objects["pic-0.png"]
        assert s3.get("pic-0.png") == site.objects["pic-0.png"]

        # Confirm another from its own page (its context first: the margins, never the picture).
        browser.get(f"{server.url}/items/{confirmed['id']}")
        assert browser.find_elements(By.CSS_SELECTOR, "#checks tr")  # the margins to the thresholds
        assert "<img" not in browser.page_source
        made_by = browser.find_element(By.ID, "made-by").text  # which model, policy and severity said so
        assert "model tiny-test/none@" in made_by and "policy flag-everything@" in made_by and "severity +0" in made_by
        assert "random weights" in browser.find_element(By.ID, "random-weights").text
        assert "not configured" in browser.find_element(By.ID, "uploader").text  # not "Unknown"
        fits(browser, "an item's page at 1280 px")
        browser.find_element(By.ID, "confirm").click()
        browser.find_element(By.ID, "confirm-decision").click()
        assert browser.find_element(By.CSS_SELECTOR, "#outcomes tr.outcome-done")
        browser.get(f"{server.url}/items/{confirmed['id']}")
        assert browser.find_element(By.ID, "item-confirmed").text == "confirmed"

        # The filter now leaves the restored item out; the history names the reviewer twice.
        browser.get(f"{server.url}/?state=quarantined")
        shown = {r.get_attribute("id") for r in browser.find_elements(By.CSS_SELECTOR, "#queue tr[id^=row-]")}
        assert f"row-{restored['short_id']}" not in shown and f"row-{confirmed['short_id']}" in shown
        browser.find_element(By.ID, "nav-history").click()
        history = browser.find_element(By.ID, "decisions").text
        assert history.count("maria (local account)") == 2 and "restore" in history and "confirm" in history
        assert "a comic strip, not a photo" in history  # the note, in the history
        # By default the queue holds what needs a decision: not the restored item, not the confirmed one.
        browser.get(f"{server.url}/")
        shown = {r.get_attribute("id") for r in browser.find_elements(By.CSS_SELECTOR, "#queue tr[id^=row-]")}
        assert shown == {f"row-{i['short_id']}" for k, i in items.items() if i not in (restored, confirmed)}, shown

        browser.find_element(By.ID, "nav-dashboard").click()
        assert browser.find_element(By.ID, "pending").text == "0"
        assert browser.find_element(By.ID, "open").text == str(len(items) - 2)
        assert "decided file(s)" in browser.find_element(By.ID, "scores").text
        browser.save_screenshot(str(_artifacts() / "console-dashboard.png"))

        fits(browser, "the dashboard at 1280 px")
        # A phone: nothing scrolls sideways, and Log out is on the screen.
        browser.set_window_size(390, 844)
        for page in ("/", f"/items/{confirmed['id']}", "/history", "/dashboard"):
            browser.get(f"{server.url}{page}")
            fits(browser, f"{page} at phone width")
        browser.get(f"{server.url}/")
        browser.save_screenshot(str(_artifacts() / "console-queue-phone.png"))

        browser.find_element(By.ID, "logout").click()
        arrive("/login")
        browser.get(f"{server.url}/history")
        arrive("/login")
    finally:
        server.stop()
    assert (_artifacts() / "console-queue.png").stat().st_size > 10_000
