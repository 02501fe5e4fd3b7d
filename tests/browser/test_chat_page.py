"""The chat page in a real browser, step by step, with a screenshot of each step under build/browser/."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import SCREENSHOTS

pytestmark = pytest.mark.integration

#: Records, in the page, every change of an answer's text and whether the answer was still streaming then.
OBSERVE_TOKENS = """
window.__updates = [];
new MutationObserver((records) => {
  for (const r of records) {
    const node = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    const li = node && node.closest('li.assistant');
    const answer = li && li.querySelector('.answer');
    if (answer && answer.contains(r.target)) {
      window.__updates.push({streaming: li.classList.contains('streaming'), length: answer.textContent.length});
    }
  }
}).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
"""


def wait_for(condition: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Page:
    def __init__(self, driver: Any, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.url = url
        self.by = By
        self.step = 0

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def shot(self, name: str) -> Path:
        self.step += 1
        path = SCREENSHOTS / f"{self.step:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def ask(self, question: str) -> Any:
        """Type the question and press Enter (the keyboard path); wait until that answer is finished."""
        from selenium.webdriver.common.keys import Keys

        before = len(self.all("li.assistant"))
        box = self.find("#question")
        box.click()
        box.send_keys(question)
        box.send_keys(Keys.ENTER)
        wait_for(lambda: len(self.all("li.assistant")) > before, what="an answer to start")
        answer = self.all("li.assistant")[-1]
        wait_for(lambda: "streaming" not in (answer.get_attribute("class") or ""), what="the answer to finish")
        return answer


@pytest.fixture(scope="module")
def page(driver: Any, page_url: str) -> Iterator[Page]:
    driver.get(page_url)
    yield Page(driver, page_url)


def test_every_control_has_a_label_and_the_log_is_announced(page: Page) -> None:
    labelled = {label.get_attribute("for") for label in page.all("label")}
    for control in page.all("textarea, select, input"):
        assert control.get_attribute("id") in labelled, control.get_attribute("id")
    assert page.find("#log").get_attribute("aria-live") == "polite"
    assert page.find("#citation").get_attribute("aria-labelledby") == "citation-title"
    page.shot("page")


def test_a_question_streams_tokens_before_done_and_a_citation_opens_its_chunk(page: Page) -> None:
    page.driver.execute_script(OBSERVE_TOKENS)
    answer = page.ask("What causes ocean tides?")
    updates = page.driver.execute_script("return window.__updates")
    streamed = [u for u in updates if u["streaming"] and u["length"] > 0]
    assert len({u["length"] for u in streamed}) >= 2, updates  # text grew token by token while streaming
    assert "Moon" in answer.find_element(page.by.CSS_SELECTOR, ".answer").text
    assert "Retrieval query: What causes ocean tides?" in answer.text
    stages = [row.get_attribute("data-stage") for row in answer.find_elements(page.by.CSS_SELECTOR, "tr")]
    assert {"embed", "route", "fuse", "first token", "total"} <= set(stages) and any(
        s.startswith("shard ") for s in stages
    )
    page.shot("answer-streamed")
    answer.find_element(page.by.CSS_SELECTOR, "button.cite").click()
    dialog = wait_for(lambda: page.find("#citation").get_attribute("open") is not None and page.find("#citation"))
    assert "sample/tides.txt" in dialog.text and "Shard" in dialog.text and "Score" in dialog.text
    page.shot("citation-open")
    page.find("#citation-close").click()
    wait_for(lambda: page.find("#citation").get_attribute("open") is None, what="the dialog to close")
    assert page.all("#conversations button"), "the new conversation is listed"


def test_a_follow_up_shows_the_rewritten_query(page: Page) -> None:
    answer = page.ask("And how strong are they?")
    query = answer.find_element(page.by.CSS_SELECTOR, ".retrieval-query").text
    assert "tides" in query and query != "Retrieval query: And how strong are they?"
    page.shot("follow-up-rewritten")


def test_a_stopped_shard_shows_the_degraded_banner_and_no_shard_an_error_in_words(
    page: Page, browser_runtime: Any
) -> None:
    try:
        browser_runtime.stop_shard(1)
        page.ask("How do honeybees communicate?")
        banner = page.find("#banner")
        assert banner.is_displayed() and "Degraded" in banner.text and "1" in banner.text
        page.shot("degraded-banner")
        for shard in range(4):
            browser_runtime.stop_shard(shard)
        page.ask("How do honeybees communicate?")
        error = page.find("#error")
        assert error.is_displayed() and "No part of the index could answer" in error.text
        page.shot("error-in-words")
    finally:
        for shard in range(4):
            browser_runtime.start_shard(shard)


def test_an_uploaded_file_becomes_answerable(page: Page, tmp_path: Path) -> None:
    document = tmp_path / "glacier-notes.md"
    document.write_text(
        "# Glacier notes\n\nThe Zorblat glacier moves eleven metres every winter because meltwater lubricates "
        "its bed.\n"
    )
    page.find("#upload-file").send_keys(str(document))
    page.find("#upload-button").click()
    status = wait_for(
        lambda: "answerable" in page.find("#upload-status").text and page.find("#upload-status"),
        timeout_s=120,
        what="the upload to be indexed",
    )
    page.shot("upload-answerable")
    assert "glacier-notes.md" in status.text
    page.find("#new-chat").click()
    answer = page.ask("How fast does the Zorblat glacier move?")
    assert "eleven metres" in answer.text
    answer.find_element(page.by.CSS_SELECTOR, "button.cite").click()
    dialog = wait_for(lambda: page.find("#citation").get_attribute("open") is not None and page.find("#citation"))
    assert "uploads/glacier-notes.md" in dialog.text
    page.shot("upload-answered")
    page.find("#citation-close").click()


class _Slow:
    name = "slow"

    def __init__(self) -> None:
        self.produced = 0

    def stream(self, question: str, hits: Any) -> Any:
        from shardrag.generation.stream import AnswerStream

        def produce(stream: AnswerStream) -> Iterator[str]:
            for i in range(600):
                time.sleep(0.02)
                self.produced += 1
                yield f"word{i} "

        return AnswerStream(model="slow", citations=[], produce=produce)


def test_stop_ends_the_answer_and_the_conversation_list_reopens_it(page: Page, browser_runtime: Any) -> None:
    from shardrag.chat.service import ChatService

    real = browser_runtime.chat_service()
    slow = _Slow()
    browser_runtime._chat = ChatService(
        retrieve=real.retrieve, generator=lambda: slow, store=real.store, condenser=real.condenser
    )
    try:
        page.find("#new-chat").click()
        box = page.find("#question")
        box.send_keys("What causes ocean tides?")
        page.find("#send").click()
        wait_for(lambda: "word3" in page.all("li.assistant")[-1].text, what="the first words")
        page.find("#stop").click()
        answer = page.all("li.assistant")[-1]
        wait_for(lambda: "Stopped." in answer.text, what="the stop note")
        page.shot("stopped")
        produced = slow.produced
        time.sleep(1.0)
        assert slow.produced - produced <= 2 and produced < 600
    finally:
        browser_runtime._chat = real
    # Reload the page: the stopped conversation is listed and shows what was said, marked as stopped.
    page.driver.get(page.url)
    wait_for(lambda: page.all("#conversations button"), what="the conversation list")
    titles = [b.text for b in page.all("#conversations button")]
    assert titles.count("What causes ocean tides?") >= 2
    page.all("#conversations button")[0].click()
    wait_for(lambda: "(answer stopped)" in page.find("#log").text, what="the stored stopped turn")
    page.shot("reloaded-conversation")
