"""The blind A/B test: the API through FastAPI's test client, and the page in real headless Chromium on loopback,
served by `talkalike serve`'s app with an API key, the rater coming in through the share link."""

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from talkalike.evaluate import abtest

PAIRS = [
    {
        "id": "eval-3-5",
        "context": [
            {"role": "user", "content": "are you coming tonight?"},
            {"role": "assistant", "content": "maybe\n<|msg|>\nwhere?"},
            {"role": "user", "content": "Noa: at the beach"},
        ],
        "real": ["חחח יאללה", "coming 🏃‍♀️"],
        "twin": ["haha ok", "see u there"],
    },
    {
        "id": "eval-4-1",
        "context": [{"role": "user", "content": "did you see the match?"}],
        "real": ["lol yes"],
        "twin": ["no 😂"],
    },
]


def _app(run_dir: Path, seed: int | None = 0):
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(abtest.make_router(run_dir, seed=seed))
    return app


@pytest.fixture
def run_dir(tmp_path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text("{}")
    abtest.write_pairs(folder, PAIRS)
    return folder


def test_next_serves_a_context_and_the_two_replies_without_saying_which_is_real(run_dir):
    from fastapi.testclient import TestClient

    client = TestClient(_app(run_dir))
    body = client.get("/ab/next").json()
    assert set(body) == {"question", "round", "context", "replies"}  # not the tally of other raters
    assert body["round"] == len(PAIRS)  # fewer pairs than abtest.ROUND: the round is as long as there are pairs
    assert [r["key"] for r in body["replies"]] == ["a", "b"]
    pair = next(p for p in PAIRS if p["context"] == body["context"])
    assert sorted(map(tuple, (r["messages"] for r in body["replies"]))) == sorted([tuple(pair["real"]), tuple(pair["twin"])])
    assert all(set(r) == {"key", "messages"} for r in body["replies"])  # nothing names the real side


def test_both_orders_occur_so_the_real_reply_is_not_always_first(run_dir):
    from fastapi.testclient import TestClient

    client = TestClient(_app(run_dir, seed=1))
    first_is_real = set()
    for _ in range(30):
        body = client.get("/ab/next").json()
        pair = next(p for p in PAIRS if p["context"] == body["context"])
        first_is_real.add(body["replies"][0]["messages"] == pair["real"])
    assert first_is_real == {True, False}


def test_a_round_never_shows_a_pair_twice_when_the_page_names_what_it_has_seen(run_dir):
    from fastapi.testclient import TestClient

    client = TestClient(_app(run_dir, seed=3))
    for _ in range(10):
        first = client.get("/ab/next").json()
        second = client.get("/ab/next", params={"seen": [first["question"]]}).json()
        assert second["context"] != first["context"]  # skipped or not, the other pair comes next
        third = client.get("/ab/next", params={"seen": [first["question"], second["question"]]}).json()
        assert third["context"] in (first["context"], second["context"])  # only 2 pairs: repeats after that
    rounds = {client.get("/ab/next").json()["round"]}
    abtest.write_pairs(run_dir, [PAIRS[1] | {"id": f"p{i}"} for i in range(30)])
    rounds.add(client.get("/ab/next").json()["round"])
    assert rounds == {2, abtest.ROUND}


def test_an_answer_is_saved_and_counted_as_fooled_when_the_twin_is_picked(run_dir):
    from fastapi.testclient import TestClient

    client = TestClient(_app(run_dir))
    body = client.get("/ab/next").json()
    pair = next(p for p in PAIRS if p["context"] == body["context"])
    twin_key = next(r["key"] for r in body["replies"] if r["messages"] == pair["twin"])
    answer = client.post("/ab/answer", json={"question": body["question"], "choice": twin_key, "rater": "Maya"}).json()
    assert answer == {"fooled": True, "real": "b" if twin_key == "a" else "a"}  # no tally of the other raters
    saved = abtest.read_answers(run_dir)
    assert len(saved) == 1 and saved[0]["pair"] == pair["id"] and saved[0]["fooled"] and saved[0]["rater"] == "Maya"
    # the same question cannot be answered twice
    assert client.post("/ab/answer", json={"question": body["question"], "choice": "a"}).status_code == 404


def test_bad_answers_and_missing_pairs_get_clear_4xx(tmp_path, run_dir):
    from fastapi.testclient import TestClient

    client = TestClient(_app(run_dir))
    question = client.get("/ab/next").json()["question"]
    assert client.post("/ab/answer", json={"question": question, "choice": "c"}).status_code == 422
    assert client.post("/ab/answer", json={"question": "nope", "choice": "a"}).status_code == 404
    empty = TestClient(_app(tmp_path))
    response = empty.get("/ab/next")
    assert response.status_code == 404 and "talkalike eval" in response.json()["detail"]


def test_results_give_the_fooled_rate_with_a_wilson_interval(run_dir):
    answers = [{"pair": "x", "fooled": i < 2, "rater": None} for i in range(20)]
    (abtest.ab_dir(run_dir) / abtest.ANSWERS).write_text("".join(json.dumps(a) + "\n" for a in answers))
    summary = abtest.results(run_dir)
    assert summary["answers"] == 20 and summary["fooled"] == 2 and summary["fooled rate"] == pytest.approx(0.1)
    assert [round(x, 4) for x in summary["wilson 95%"]] == [0.0279, 0.3010]


@pytest.fixture
def served(run_dir):
    """The run served by `talkalike serve`'s app with an API key; yields (url, share token)."""
    from fake_twin import FakeTwin, fake_stream, live_server

    from talkalike.frontends.serve import ServeSettings, create_app

    app = create_app(FakeTwin(run_dir=run_dir), ServeSettings(api_key="owner-key"), stream=fake_stream)
    with live_server(app) as url:
        yield url, abtest.share_token(run_dir)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Records what the Content-Security-Policy blocks (an inline script or style would show up here).
CSP_WATCH = """window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => window.cspViolations.push(e.violatedDirective));"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_a_friend_picks_a_reply_in_headless_chromium_and_the_answer_lands_in_the_run(run_dir, served):
    from playwright.sync_api import sync_playwright

    abtest.write_pairs(run_dir, PAIRS[:1])  # the Hebrew pair, so the right-to-left check always runs
    url, token = served

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page()
        page.add_init_script(CSP_WATCH)
        page.goto(f"{url}/ab?t={token}")
        page.fill("#rater", "Maya")
        page.dispatch_event("#rater", "change")
        page.wait_for_selector("#choice-a .bubble")
        context_text = page.inner_text("#context")
        pair = PAIRS[0]
        assert "where?" in context_text and "at the beach" in context_text
        # the Hebrew reply renders right-to-left, the English ones left-to-right
        direction = "el => getComputedStyle(el).direction"
        assert page.locator(".choice .bubble", has_text="חחח יאללה").evaluate(direction) == "rtl"
        assert page.locator(".choice .bubble", has_text="haha ok").evaluate(direction) == "ltr"
        a_text = page.inner_text("#choice-a .replies")
        twin_key = "a" if pair["twin"][0] in a_text else "b"
        page.click(f"#pick-{twin_key}")
        page.wait_for_selector("#next:not([hidden])")
        assert "Fooled" in page.inner_text("#result")
        assert "0 of 1" in page.inner_text("#tally")  # this rater's own score
        assert page.url == f"{url}/ab"  # the token left the address bar (and the history)
        assert page.evaluate("window.cspViolations") == []  # the Content-Security-Policy blocked nothing
        assert "real" in page.get_attribute(f"#choice-{'b' if twin_key == 'a' else 'a'}", "class")
        browser.close()
    saved = abtest.read_answers(run_dir)
    assert len(saved) == 1 and saved[0]["fooled"] is True and saved[0]["pair"] == pair["id"]
    assert saved[0]["rater"] == "Maya"


def test_a_torn_last_answer_line_is_skipped_and_the_next_answer_repairs_the_file(run_dir):
    from fastapi.testclient import TestClient

    path = abtest.ab_dir(run_dir) / abtest.ANSWERS
    whole = {"time": "2025-01-01T00:00:00+00:00", "pair": "eval-4-1", "choice": "a", "real": "a", "fooled": False,
             "rater": None}
    path.write_text(json.dumps(whole) + "\n" + '{"time": "2025-01-01T00:01:00+00:00", "pair": "eval-3')  # power loss
    client = TestClient(_app(run_dir))
    body = client.get("/ab/next")
    assert body.status_code == 200
    assert abtest.results(run_dir)["answers"] == 1
    assert client.post("/ab/answer", json={"question": body.json()["question"], "choice": "a"}).status_code == 200
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == whole and json.loads(lines[1])["choice"] == "a"


def test_pairs_answers_and_the_share_token_are_private_to_the_owner(run_dir):
    from fastapi.testclient import TestClient

    client = TestClient(_app(run_dir))
    question = client.get("/ab/next").json()["question"]
    client.post("/ab/answer", json={"question": question, "choice": "a"})
    token = abtest.share_token(run_dir)
    assert len(token) >= 16 and abtest.share_token(run_dir) == token  # kept, so a handed-out link keeps working
    folder = abtest.ab_dir(run_dir)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in (abtest.PAIRS, abtest.ANSWERS, abtest.SHARE_TOKEN):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert not [p for p in os.listdir(folder) if p.startswith(".")]  # no temp file left behind


@pytest.mark.parametrize("body", [
    b'{"question": "q", "choice": "a", "rater": "\\ud800"}',  # a lone surrogate cannot be written as UTF-8
    b'{"question": "q", "choice": 1}',
    b'{"question": "q", "choice": "a", "rater": ' + b"9" * 5000 + b"}",
    b'{"question": "q", "choice": "a", "x": ' + b"[" * 300 + b"]" * 300 + b"}",
    b"[]",
    b"",
])
def test_a_malformed_answer_is_a_422_not_a_crash(run_dir, body):
    from fastapi.testclient import TestClient

    response = TestClient(_app(run_dir)).post("/ab/answer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert not (abtest.ab_dir(run_dir) / abtest.ANSWERS).exists()


SCREENS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def expect(locator):
    """Playwright's web-first assertions: they poll without eval, which the page's CSP forbids."""
    from playwright.sync_api import expect

    return expect(locator)


THREE = [PAIRS[0], PAIRS[1], {"id": "eval-7-2", "context": [{"role": "user", "content": "pizza or sushi?"}],
                              "real": ["sushi!!"], "twin": ["pizza"]}]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
@pytest.mark.parametrize("screen", list(SCREENS))
def test_a_round_shows_progress_takes_skips_and_keys_and_ends_with_the_raters_score(run_dir, served, browser, screen):
    abtest.write_pairs(run_dir, THREE)
    url, token = served
    context = browser.new_context(**SCREENS[screen])
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    # A phone taps the buttons; a desktop uses the keys.
    keys = screen == "desktop"
    act = {"skip": ("s", "#skip"), "a": ("1", "#pick-a"), "b": ("ArrowRight", "#pick-b"), "next": ("Enter", "#next")}

    def do(what):
        key, button = act[what]
        page.keyboard.press(key) if keys else page.tap(button)

    page.goto(f"{url}/ab?t={token}")
    expect(page.locator("#progress")).to_have_text("1 of 3")
    shown = [page.inner_text("#context")]
    if keys:
        page.fill("#rater", "Sam")  # typing a name is not a key press for the test
        page.press("#rater", "s")
        expect(page.locator("#rater")).to_have_value("Sams")
        page.locator("h1").click()
    assert page.locator("#progress").inner_text() == "1 of 3"
    do("skip")
    expect(page.locator("#progress")).to_have_text("2 of 3")
    expect(page.locator("#context")).not_to_have_text(shown[0])
    shown.append(page.inner_text("#context"))
    do("a")
    expect(page.locator("#next")).to_be_visible()
    expect(page.locator("#result")).to_have_text(re.compile("Fooled|Right"))
    do("next")
    expect(page.locator("#progress")).to_have_text("3 of 3")
    shown.append(page.inner_text("#context"))
    assert len(set(shown)) == 3  # a skipped pair does not come back within the round
    do("b")
    expect(page.locator("#next")).to_have_text("See your score")
    do("next")
    expect(page.locator("#done")).to_be_visible()
    expect(page.locator("#quiz")).to_be_hidden()

    answers = abtest.read_answers(run_dir)
    assert [a["choice"] for a in answers] == ["a", "b"]  # the skip recorded nothing
    spotted = sum(not a["fooled"] for a in answers)
    expect(page.locator("#score")).to_have_text(f"You spotted the real one {spotted} of 2 times.")
    expect(page.locator("#score-detail")).to_contain_text("You skipped 1.")
    page.reload()  # the round is kept in the tab: still done
    expect(page.locator("#done")).to_be_visible()
    page.click("#again")
    expect(page.locator("#progress")).to_have_text("1 of 3")
    assert page.evaluate("window.cspViolations") == []
    context.close()


def colours(page, selector: str) -> str:
    return page.locator(selector).first.evaluate("el => getComputedStyle(el).backgroundColor")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_persona_has_the_same_colours_on_the_chat_page_and_the_ab_page(run_dir, served, browser, scheme):
    abtest.write_pairs(run_dir, PAIRS[:1])  # its context has the persona's turns too
    url, token = served
    context = browser.new_context(color_scheme=scheme)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept("owner-key"))  # the owner's page asks for the API key
    page.goto(url)
    expect(page.locator("#persona")).to_have_text("Noa")
    page.fill("#text", "hey")
    page.press("#text", "Enter")
    expect(page.locator(".row.theirs .bubble:not(.streaming)")).to_have_count(3)
    chat = {"persona": colours(page, ".row.theirs .bubble"), "other": colours(page, ".row.mine .bubble")}
    page.goto(f"{url}/ab?t={token}")
    page.wait_for_selector("#choice-a .bubble")
    ab = {"persona": colours(page, ".choice .bubble"), "other": colours(page, "#context .bubble.user")}
    assert colours(page, "#context .bubble.assistant") == ab["persona"]  # the persona's turns in the context too
    assert chat == ab and chat["persona"] != chat["other"]
    context.close()
