"""The LLM writer against a real HTTP server on loopback that speaks OpenAI chat completions."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from storybook.book import load_book
from storybook.errors import StoryError
from storybook.story.brief import StoryBrief, StoryDraft
from storybook.story.llm_writer import LLMSettings, render_prompt
from storybook.story.offline_writer import write_offline
from storybook.story.stage import StoryRequest, load_cast, write_story

REQUEST = StoryRequest(child="Mia", characters=["Mia", "Rex"], theme="a cozy bedtime", pages=8, seed=5)


class ChatServer(ThreadingHTTPServer):
    """Answers POST /v1/chat/completions with the scripted `replies`, in order, and records each request body."""

    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.replies: list[tuple[int, object, dict, float]] = []  # status, body, headers, delay in seconds
        self.requests: list[dict] = []
        self.trickle_s = 0.0  # seconds between the bytes of a reply; 0: all at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reply(self, body: object, status: int = 200, headers: dict | None = None, delay: float = 0.0) -> None:
        self.replies.append((status, body, headers or {}, delay))


class ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body})
        status, reply, headers, delay = self.server.replies.pop(0)
        time.sleep(delay)
        payload = reply if isinstance(reply, bytes) else json.dumps(reply).encode()  # bytes: sent as they are
        try:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.server.trickle_s:  # one byte at a time, each well within the client's read timeout
                for byte in payload:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(self.server.trickle_s)
            else:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout tests)
            pass

    def log_message(self, *args):
        pass


def completion(content: str | None, refusal: str | None = None, finish_reason: str = "stop") -> dict:
    """A chat.completion response body."""
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    chat_server = ChatServer()
    thread = threading.Thread(target=chat_server.serve_forever, daemon=True)
    thread.start()
    yield chat_server
    chat_server.shutdown()
    chat_server.server_close()


def settings(server: ChatServer, **overrides) -> LLMSettings:
    return LLMSettings(model="test-model", base_url=server.url, api_key="test-key", **overrides)


def good_draft(family_home) -> StoryDraft:
    """A story that follows every rule (the offline writer's, sent back as if the LLM wrote it)."""
    return write_offline(draft_brief(family_home), seed=1)


def test_a_good_reply_becomes_a_saved_book(server, family_home):
    draft = good_draft(family_home)
    server.reply(completion(draft.model_dump_json()))
    folder, book = write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    assert load_book(folder) == book
    assert book.writer == "llm:test-model"
    assert [p.text for p in book.pages] == [p.text for p in draft.pages]
    assert "zorv toddler: 2-year-old girl, curly red hair, yellow raincoat" in book.pages[0].prompt
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_control_characters_and_bidi_overrides_the_llm_writes_are_removed_from_the_book(server, family_home):
    draft = good_draft(family_home)
    draft.title = "\x1b]0;owned\x07Mia\u202e's Night\x1b[0m"
    draft.pages[0].text = f"\x1b[31m{draft.pages[0].text}\r\nThe end\u200b."
    draft.pages[1].scene = f"{draft.pages[1].scene}\x1b[8m"
    server.reply(completion(draft.model_dump_json()))
    folder, book = write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    assert book.title == "]0;ownedMia's Night[0m"
    assert book.pages[0].text == f"[31m{good_draft(family_home).pages[0].text}\nThe end."
    assert book.pages[1].scene == good_draft(family_home).pages[1].scene + "[8m" and load_book(folder) == book
    assert len(server.requests) == 1  # removed, not sent back


def test_the_request_holds_names_descriptions_and_theme_only(server, family_home):
    server.reply(completion(good_draft(family_home).model_dump_json()))
    write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    body = server.requests[0]["body"]
    assert set(body) == {"model", "messages", "response_format", "stream"}
    assert body["model"] == "test-model" and body["stream"] is False
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["title", "pages"]
    assert body["response_format"]["json_schema"]["name"] == "StoryDraft"
    system, user = body["messages"]
    assert system["role"] == "system" and system["content"] == render_prompt("system", brief=draft_brief(family_home))
    assert "Mia" not in system["content"] and "zorv" not in system["content"]  # the rules hold no family data
    assert user == {
        "role": "user",
        "content": "Write a story of 8 pages about Mia (pronouns: they/them), aged 2.\n"
        "Theme: a cozy bedtime\n\n"
        "Characters:\n"
        '- Mia (the child, the hero of the story): a toddler, drawn with the phrase "zorv toddler"; '
        "looks: 2-year-old girl, curly red hair, yellow raincoat\n"
        '- Rex: a dog, drawn with the phrase "qwib dog"; looks: small brown puppy',
    }
    sent = json.dumps(body)
    for private in ("IMG_Mia", "photos/", "prepared/", "image_url", "base64", str(family_home)):
        assert private not in sent


def draft_brief(family_home) -> StoryBrief:
    cast = load_cast(family_home, REQUEST)
    return StoryBrief(
        child="Mia", pronouns="they", theme=REQUEST.theme, pages=8, age=2, max_words_per_page=20, characters=cast
    )


def test_malformed_json_is_sent_back_and_the_next_reply_used(server, family_home):
    server.reply(completion('{"title": "A Beach Day", "pages": [{"text": '))
    server.reply(completion(good_draft(family_home).model_dump_json()))
    _, book = write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    assert len(book.pages) == 8
    retry_messages = server.requests[1]["body"]["messages"]
    assert retry_messages[-1]["role"] == "user"
    assert "could not be read as the story JSON" in retry_messages[-1]["content"]


def test_a_missing_token_is_named_in_the_retry(server, family_home):
    draft = good_draft(family_home)
    broken = draft.model_copy(deep=True)
    broken.pages[0].scene = broken.pages[0].scene.replace("zorv toddler", "a little girl")
    server.reply(completion(broken.model_dump_json()))
    server.reply(completion(draft.model_dump_json()))
    _, book = write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    assert all("zorv toddler" in page.prompt for page in book.pages if "mia" in page.characters)
    assistant, fix = server.requests[1]["body"]["messages"][-2:]
    assert assistant == {"role": "assistant", "content": broken.model_dump_json()}
    assert "page 1: the scene must name Mia as 'zorv toddler'" in fix["content"]


def test_too_many_pages_every_time_ends_with_a_clear_error(server, family_home):
    draft = good_draft(family_home)
    too_long = draft.model_copy(update={"pages": draft.pages + draft.pages[:2]})
    for _ in range(3):
        server.reply(completion(too_long.model_dump_json()))
    with pytest.raises(StoryError, match=r"after 3 attempts:\n  The story has 10 pages; it must have exactly 8"):
        write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    assert len(server.requests) == 3
    assert not (family_home / "books").exists()


def test_a_429_is_retried_after_its_retry_after(server, family_home):
    server.reply(
        {"error": {"message": "slow down", "type": "rate_limit"}}, status=429, headers={"retry-after-ms": "50"}
    )
    server.reply(completion(good_draft(family_home).model_dump_json()))
    _, book = write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    assert len(server.requests) == 2 and len(book.pages) == 8


def test_a_server_that_never_answers_times_out_with_a_clear_error(server, family_home):
    server.reply(completion("{}"), delay=3.0)
    with pytest.raises(StoryError, match=r"did not answer: \d+ s waited \(0 retries, 0.3 s each\)"):
        write_story(family_home, REQUEST, writer="llm", llm=settings(server, timeout_s=0.3, http_retries=0))


def test_a_reply_trickling_in_is_given_up_at_the_story_deadline(server, family_home):
    server.trickle_s = 0.2  # each byte well within the 120 s read timeout: only the deadline ends the wait
    server.reply(completion(good_draft(family_home).model_dump_json()))
    started = time.monotonic()
    with pytest.raises(StoryError, match=r"within its deadline, 1.5 s for every try together"):
        write_story(family_home, REQUEST, writer="llm", llm=settings(server, deadline_s=1.5))
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Welcome to nginx</body></html>", b"not json", b"[1, 2]", {}, {"choices": []}],
    ids=["html", "text", "a-list", "empty-object", "no-choices"],
)
def test_a_reply_that_is_no_chat_completion_is_named_as_such(server, family_home, body):
    server.reply(body, headers={"Content-Type": "text/html"} if isinstance(body, bytes) else {})
    with pytest.raises(StoryError, match="not with a chat completion.*OPENAI_BASE_URL"):
        write_story(family_home, REQUEST, writer="llm", llm=settings(server))


def test_a_refusal_is_reported_as_a_refusal(server, family_home):
    server.reply(completion(None, refusal="I can't help with that."))
    with pytest.raises(StoryError, match="The model refused to write this story: I can't help with that."):
        write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    assert len(server.requests) == 1


def test_a_cut_off_reply_is_reported_as_cut_off(server, family_home):
    server.reply(completion('{"title": "A Beach', finish_reason="length"))
    with pytest.raises(StoryError, match="cut off at the reply length limit"):
        write_story(family_home, REQUEST, writer="llm", llm=settings(server))


def test_no_key_and_no_server_says_how_to_configure_one(family_home, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(StoryError, match="OPENAI_API_KEY"):
        write_story(family_home, REQUEST, writer="llm")


def test_an_unknown_character_is_sent_back(server, family_home):
    draft = good_draft(family_home)
    invented = draft.model_copy(deep=True)
    invented.pages[1].characters.append("Grandma")
    server.reply(completion(invented.model_dump_json()))
    server.reply(completion(draft.model_dump_json()))
    write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    assert (
        "page 2: 'Grandma' is not one of the given characters" in server.requests[1]["body"]["messages"][-1]["content"]
    )


def test_a_server_error_is_retried_and_an_unknown_model_named(server, family_home):
    server.reply({"error": {"message": "overloaded"}}, status=503, headers={"retry-after-ms": "10"})
    server.reply(completion(good_draft(family_home).model_dump_json()))
    write_story(family_home, REQUEST, writer="llm", llm=settings(server))
    server.reply({"error": {"message": "model 'test-model' not found"}}, status=404)
    with pytest.raises(StoryError, match="name one it serves with --model"):
        write_story(family_home, REQUEST, writer="llm", llm=settings(server))
