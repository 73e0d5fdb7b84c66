"""The chat page in real headless Chromium (Debian's package, driven by Playwright): a typed message gets the
persona's reply as several bubbles that stream in, a Hebrew bubble renders right-to-left, the base switch works, and
the server's Content-Security-Policy blocks nothing the page needs. Then what every chat page has, on a desktop and
a phone-sized screen: conversations that survive a reload and a list of past ones, regenerate and copy, a visible
offline state with a retry, and dark mode that follows the system. scripts/setup.sh installs /usr/bin/chromium;
without it this test fails rather than skips."""

from pathlib import Path

import pytest
from fake_twin import BASE, TUNED, FakeTwin, fake_stream, live_server

from talkalike.frontends import conversations
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


@pytest.fixture(scope="module")
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


SCREENS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}


@pytest.fixture(params=list(SCREENS))
def screen(request, browser):
    """A fresh browser context of each size (its own storage), closed after the test."""
    context = browser.new_context(**SCREENS[request.param])
    context.add_init_script(CSP_WATCH)
    context.screen_name = request.param
    yield context
    context.close()


def say_and_wait(page, text, replies):
    """Send a message and wait until the whole reply is on the page (`replies` persona bubbles in all)."""
    page.fill("#text", text)
    page.press("#text", "Enter")
    expect(page.locator(".row.theirs .bubble:not(.streaming)")).to_have_count(replies)
    expect(page.locator("#status")).to_have_text("online")


def open_list(page):
    """The list of past conversations: a column on a wide screen, a drawer behind the menu button on a phone."""
    if page.locator("#menu").is_visible():
        page.click("#menu")
    expect(page.locator("#sidebar")).to_be_visible()


def test_a_reload_shows_the_past_conversation_and_the_list_opens_older_ones(screen, tmp_path):
    twin = FakeTwin(run_dir=tmp_path)
    with live_server(create_app(twin, ServeSettings(), stream=fake_stream)) as url:
        page = screen.new_page()
        page.goto(url)
        expect(page.locator("#persona")).to_have_text("Noa")
        say_and_wait(page, "hey, still on for tonight?", len(TUNED))
        expect(page.locator("#conversations li[data-id]")).to_have_count(1)

        page.reload()
        expect(persona_bubbles(page)).to_have_count(len(TUNED))
        assert page.locator(".row.mine .bubble").all_inner_texts() == ["hey, still on for tonight?"]
        assert persona_bubbles(page).locator(".text").all_inner_texts() == TUNED

        page.click("#reset")  # a new conversation; the first stays in the list
        expect(page.locator(".row")).to_have_count(0)
        say_and_wait(page, "second chat", len(TUNED))
        expect(page.locator("#conversations li[data-id]")).to_have_count(2)
        open_list(page)
        assert page.locator("#conversations .title").all_inner_texts() == ["second chat", "hey, still on for tonight?"]
        page.click("#conversations li:nth-child(2) .open")
        expect(page.locator(".row.mine .bubble")).to_have_text(["hey, still on for tonight?"])
        expect(page.locator("#conversations li[aria-current=true] .title")).to_have_text("hey, still on for tonight?")

        page.once("dialog", lambda dialog: dialog.accept())
        open_list(page)
        page.click("#conversations li:nth-child(1) .delete")
        expect(page.locator("#conversations li[data-id]")).to_have_count(1)
        assert page.evaluate("window.cspViolations") == []
    saved = sorted((tmp_path / "chats").glob("web-*.txt"))
    assert len(saved) == 1
    assert conversations.parse(saved[0].read_text(encoding="utf-8")) == \
        [{"role": "user", "content": "hey, still on for tonight?", "base": False}] + \
        [{"role": "assistant", "content": m, "base": False} for m in TUNED]


def test_regenerate_replaces_the_last_reply_and_copy_puts_a_reply_on_the_clipboard(screen, tmp_path):
    twin = FakeTwin(run_dir=tmp_path)
    with live_server(create_app(twin, ServeSettings(), stream=fake_stream)) as url:
        screen.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
        page = screen.new_page()
        page.goto(url)
        expect(page.locator("#persona")).to_have_text("Noa")
        say_and_wait(page, "hey", len(TUNED))
        twin.tuned = ["nah", "changed my mind"]
        page.click(".actions .regenerate")
        expect(persona_bubbles(page).locator(".text")).to_have_text(twin.tuned)
        expect(page.locator(".actions .regenerate")).to_have_count(1)

        page.click(".actions .copy-reply")
        expect(page.locator(".actions .copy-reply.done")).to_have_count(1)
        assert page.evaluate("navigator.clipboard.readText()") == "nah\nchanged my mind"
        page.locator(".row.theirs").nth(1).locator(".copy").click()
        expect(page.locator(".row.theirs .copy.done")).to_have_count(1)
        assert page.evaluate("navigator.clipboard.readText()") == "changed my mind"

        page.reload()  # what was saved is the new reply, not the old one
        expect(persona_bubbles(page).locator(".text")).to_have_text(twin.tuned)
        assert page.evaluate("window.cspViolations") == []
    # The regenerated reply answered the same history: the old reply was not in it.
    assert twin.calls[1][0] == [{"role": "user", "content": "hey"}]


def test_a_stopped_server_shows_offline_and_retry_sends_the_message_once_it_is_back(screen, tmp_path):
    first = FakeTwin(run_dir=tmp_path)
    with live_server(create_app(first, ServeSettings(), stream=fake_stream)) as url:
        page = screen.new_page()
        page.goto(url)
        expect(page.locator("#persona")).to_have_text("Noa")
        say_and_wait(page, "hey", len(TUNED))
        expect(page.locator("#conversations li[data-id]")).to_have_count(1)

    page.fill("#text", "are you there?")
    page.press("#text", "Enter")
    failed = page.locator(".row.mine.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".bubble")).to_have_text("are you there?")
    expect(failed.locator(".failed-note")).to_contain_text("not sent")
    expect(page.locator("#status")).to_contain_text("offline")
    expect(page.locator("#bar")).to_have_class("bar offline")
    assert page.locator(".row.error").count() == 0  # the header and the note say it; no error bubble

    second = FakeTwin(run_dir=tmp_path, tuned=["back!"])
    port = int(url.rsplit(":", 1)[1])
    with live_server(create_app(second, ServeSettings(), stream=fake_stream), port=port):
        expect(page.locator("#status")).to_have_text("online", timeout=15_000)  # found again, nothing sent
        expect(page.locator("#bar")).to_have_class("bar")
        failed.locator(".retry").click()
        expect(page.locator(".row.theirs .bubble:not(.streaming)")).to_have_count(len(TUNED) + 1)
        expect(page.locator(".row.failed")).to_have_count(0)
        expect(page.locator(".row.mine .bubble")).to_have_text(["hey", "are you there?"])
        expect(page.locator("#conversations li[data-id]")).to_have_count(1)
        expect(page.locator("#conversations .when")).to_contain_text(f"{2 + len(TUNED) + 1} messages")
        assert page.evaluate("window.cspViolations") == []
    # The message was sent once, after the old reply, and the failed attempt never reached the history.
    assert [call[0] for call in second.calls] == [
        [{"role": "user", "content": "hey"}] + [{"role": "assistant", "content": m} for m in TUNED] +
        [{"role": "user", "content": "are you there?"}]]
    saved = conversations.parse(next((tmp_path / "chats").glob("web-*.txt")).read_text(encoding="utf-8"))
    assert [m["content"] for m in saved] == ["hey", *TUNED, "are you there?", "back!"]


def background(locator) -> tuple[int, ...]:
    rgb = locator.evaluate("el => getComputedStyle(el).backgroundColor")
    return tuple(int(x) for x in rgb[rgb.index("(") + 1: rgb.index(")")].split(",")[:3])


def test_dark_mode_follows_the_systems_colour_scheme(screen):
    with live_server(create_app(FakeTwin(), ServeSettings(), stream=fake_stream)) as url:
        page = screen.new_page()
        page.goto(url)
        expect(page.locator("#persona")).to_have_text("Noa")
        say_and_wait(page, "hey", len(TUNED))
        light = {name: background(page.locator(selector)) for name, selector in
                 [("page", "body"), ("chat", ".phone"), ("persona", ".row.theirs .bubble >> nth=0")]}
        text_light = persona_bubbles(page).first.evaluate("el => getComputedStyle(el).color")
        page.emulate_media(color_scheme="dark")
        dark = {name: background(page.locator(selector)) for name, selector in
                [("page", "body"), ("chat", ".phone"), ("persona", ".row.theirs .bubble >> nth=0")]}
        text_dark = persona_bubbles(page).first.evaluate("el => getComputedStyle(el).color")
    assert all(sum(dark[name]) < 150 < sum(light[name]) for name in light), (light, dark)
    assert text_light != text_dark
