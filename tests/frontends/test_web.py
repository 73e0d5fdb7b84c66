"""The chat page in real headless Chromium (Debian's package, driven by Playwright): a typed message gets the
persona's reply as several bubbles that stream in, a Hebrew bubble renders right-to-left, the base switch works, and
the server's Content-Security-Policy blocks nothing the page needs. scripts/setup.sh installs /usr/bin/chromium;
without it this test fails rather than skips."""

from pathlib import Path

import pytest
from fake_twin import BASE, TUNED, FakeTwin, fake_stream, live_server

from talkalike.frontends.serve import ServeSettings, create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

# Records every length the reply passes through (all persona bubbles together), to tell streaming from all-at-once.
WATCH_REPLY = """() => {
  window.seenLengths = [];
  new MutationObserver(() => {
    const texts = [...document.querySelectorAll('.row.theirs .bubble .text')];
    window.seenLengths.push(texts.reduce((n, t) => n + t.textContent.length, 0));
  }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
}"""

# Where the first and last letters of a bubble are drawn: in right-to-left text the first letter is rightmost.
LETTER_POSITIONS = """el => {
  const node = el.querySelector('.text').firstChild;
  const range = document.createRange();
  const left = (i) => { range.setStart(node, i); range.setEnd(node, i + 1); return range.getBoundingClientRect().left; };
  return [left(0), left(node.length - 1)];
}"""


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian's chromium is missing: run scripts/setup.sh (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


# Records what the Content-Security-Policy blocks (an inline script or style would show up here).
CSP_WATCH = """window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => window.cspViolations.push(e.violatedDirective));"""


def expect(locator):
    """Playwright's web-first assertions: they poll without eval, which the page's CSP forbids (a string predicate
    passed to page.wait_for_function is eval'd in the page)."""
    from playwright.sync_api import expect

    return expect(locator)


def persona_bubbles(page):
    return page.locator(".row.theirs .bubble")


def test_a_typed_message_gets_streamed_bubbles_and_hebrew_renders_right_to_left(browser, tmp_path):
    twin = FakeTwin(delay=0.03)
    with live_server(create_app(twin, ServeSettings(), stream=fake_stream)) as url:
        page = browser.new_page(viewport={"width": 480, "height": 720})
        page.add_init_script(CSP_WATCH)
        response = page.goto(url)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        expect(page.locator("#persona")).to_have_text("Noa")
        page.evaluate(WATCH_REPLY)
        page.fill("#text", "hey, still on for tonight?")
        page.press("#text", "Enter")
        page.wait_for_selector(".row.theirs .bubble.streaming")
        assert page.locator("#status").inner_text() == "typing…"
        expect(page.locator(".row.theirs .bubble:not(.streaming)")).to_have_count(len(TUNED))
        expect(page.locator("#status")).to_have_text("online")

        assert page.locator(".row.mine .bubble").all_inner_texts() == ["hey, still on for tonight?"]
        assert persona_bubbles(page).locator(".text").all_inner_texts() == TUNED
        lengths = page.evaluate("window.seenLengths")
        # It grew in many steps, more than one per bubble: the text streamed in, not bubble by bubble.
        assert len(set(lengths)) > len(TUNED) + 2 and max(lengths) == sum(len(m) for m in TUNED)

        hebrew, english = persona_bubbles(page).nth(2), persona_bubbles(page).nth(0)
        assert hebrew.evaluate("el => getComputedStyle(el).direction") == "rtl"
        assert english.evaluate("el => getComputedStyle(el).direction") == "ltr"
        first, last = hebrew.evaluate(LETTER_POSITIONS)
        assert first > last
        first, last = page.locator(".row.theirs .bubble").nth(1).evaluate(LETTER_POSITIONS)
        assert first < last
        assert page.evaluate("window.cspViolations") == []
        page.screenshot(path=str(tmp_path / "chat.png"))


def test_the_base_switch_sends_the_same_conversation_to_the_base_model(browser):
    twin = FakeTwin()
    with live_server(create_app(twin, ServeSettings(), stream=fake_stream)) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#persona")).to_have_text("Noa")
        page.fill("#text", "hey")
        page.press("#text", "Enter")
        expect(page.locator(".row.theirs .bubble")).to_have_count(len(TUNED))
        page.click("#switch button[data-model=base]")
        page.fill("#text", "and you?")
        page.press("#text", "Enter")
        page.wait_for_selector(".row.theirs .bubble.base:not(.streaming)")
        assert page.locator(".bubble.base .text").all_inner_texts() == BASE
        assert page.locator(".bubble.base .tag").inner_text() == "base model"
    history, _, use_adapter = twin.calls[1]
    assert use_adapter is False
    assert history == [{"role": "user", "content": "hey"}] + [{"role": "assistant", "content": m} for m in TUNED] + \
        [{"role": "user", "content": "and you?"}]


def test_an_error_from_the_server_shows_as_a_message_not_a_blank_page(browser):
    with live_server(create_app(FakeTwin(), ServeSettings(), stream=fake_stream)) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#persona")).to_have_text("Noa")
        page.fill("#text", "too long")
        page.press("#text", "Enter")
        page.wait_for_selector(".row.error")
        assert "shorter message" in page.locator(".row.error").inner_text()


def test_with_an_api_key_the_page_asks_for_it_once_and_then_chats(browser):
    twin = FakeTwin()
    with live_server(create_app(twin, ServeSettings(api_key="s3cret"), stream=fake_stream)) as url:
        page = browser.new_page()
        page.add_init_script(CSP_WATCH)
        asked = []
        page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept("s3cret")))
        page.goto(url)
        expect(page.locator("#persona")).to_have_text("Noa")
        page.fill("#text", "hey")
        page.press("#text", "Enter")
        expect(page.locator(".row.theirs .bubble:not(.streaming)")).to_have_count(len(TUNED))
        assert asked == ["This twin needs its API key:"]
        assert page.evaluate("window.cspViolations") == []
    assert len(twin.calls) == 1
