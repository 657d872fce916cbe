"""The LLM writer: a story from any OpenAI-compatible chat server (OpenAI, Ollama, vLLM, LM Studio) through the
`openai` client, parsed into a StoryDraft by structured output.

The client retries 429s, 5xx and dropped connections with back-off. A reply that is not valid JSON for the schema, or
whose story breaks the rules, is sent back with what is wrong, up to `attempts` times. Refusals, cut-off replies,
timeouts and refused keys end with a StoryError that says which. The prompts are templates/llm/*.j2; only the brief
(names, the parent's descriptions, the theme) is ever sent.
"""

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import jinja2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storybook.errors import StoryError
from storybook.storage import TEMPLATES_DIR
from storybook.story.brief import StoryBrief, StoryDraft

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ParsedChatCompletion

DEFAULT_LLM_MODEL = "gpt-4o-mini"
T = TypeVar("T")


class LLMSettings(BaseModel):
    """Which server and model write the story, and how patiently."""

    model: str = DEFAULT_LLM_MODEL
    base_url: str | None = None  # default: $OPENAI_BASE_URL, else OpenAI
    api_key: str | None = None  # default: $OPENAI_API_KEY (a local server needs none)
    model_config = ConfigDict(allow_inf_nan=False)

    timeout_s: float = Field(120.0, gt=0)  # the longest wait for the server's next byte
    deadline_s: float = Field(300.0, gt=0)  # the whole story, every retry and attempt included
    http_retries: int = Field(3, ge=0, le=10)  # 429 / 5xx / connection errors, with back-off, by the openai client
    attempts: int = Field(3, ge=1, le=10)  # replies to ask for when one breaks the rules


def render_prompt(name: str, **variables) -> str:
    """Render templates/llm/<name>.j2."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR / "llm"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template(f"{name}.j2").render(**variables).strip()


def story_messages(brief: StoryBrief) -> list[dict[str, str]]:
    """The opening chat messages for `brief`: the rules (system) and the story asked for (user)."""
    return [
        {"role": "system", "content": render_prompt("system", brief=brief)},
        {"role": "user", "content": render_prompt("request", brief=brief)},
    ]


def make_client(settings: LLMSettings) -> "openai.OpenAI":
    """An OpenAI client for `settings`. Raises StoryError when neither a key nor a base URL is configured."""
    import openai  # 1.4 s to import: only when an LLM writes

    base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL")
    api_key = settings.api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key and not base_url:
        raise StoryError(
            "The LLM writer needs OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (a local OpenAI-compatible server such "
            "as Ollama at http://localhost:11434/v1); or use --writer offline."
        )
    return openai.OpenAI(
        api_key=api_key or "not-needed",  # local servers ignore the key, the client insists on one
        base_url=base_url,
        timeout=settings.timeout_s,
        max_retries=settings.http_retries,
    )


def request_story(
    client: "openai.OpenAI", settings: LLMSettings, messages: list[dict[str, str]], seconds: float
) -> "ParsedChatCompletion[StoryDraft]":
    """One chat completion parsed as a StoryDraft, given up after `seconds` of wall-clock time however the server
    trickles its reply. Raises pydantic's ValidationError for a reply that is not the story JSON (a retry may fix
    that) and StoryError for every other failure."""
    import openai
    from openai.types.chat import ParsedChatCompletion

    where = f"{client.base_url} (model {settings.model})"
    started = time.monotonic()
    try:
        completion = within(
            seconds,
            lambda: client.chat.completions.parse(model=settings.model, messages=messages, response_format=StoryDraft),
        )
    except TimeoutError:
        client.close()  # ends the abandoned request
        raise StoryError(
            f"{where} did not finish the story within its deadline, {settings.deadline_s:g} s for every try together "
            f"(this reply was waited on for {time.monotonic() - started:.0f} s); check that the server is up, try a "
            "smaller model, or allow more time with --llm-deadline."
        ) from None
    except ValidationError:
        raise
    except openai.LengthFinishReasonError as error:
        raise StoryError(
            f"The story from {where} was cut off at the reply length limit; ask for fewer pages or use a model with "
            "a longer output."
        ) from error
    except openai.ContentFilterFinishReasonError as error:
        raise StoryError(
            f"{where} stopped the story with its content filter; change the theme or descriptions."
        ) from error
    except openai.APITimeoutError as error:
        raise StoryError(
            f"{where} did not answer: {time.monotonic() - started:.0f} s waited ({settings.http_retries} retries, "
            f"{settings.timeout_s:g} s each); check that the server is up, or try a smaller model."
        ) from error
    except openai.APIConnectionError as error:
        raise StoryError(f"Cannot reach {where}: {error}. Check OPENAI_BASE_URL and that the server runs.") from error
    except openai.AuthenticationError as error:
        raise StoryError(f"{where} refused the API key; check OPENAI_API_KEY.") from error
    except openai.RateLimitError as error:
        raise StoryError(
            f"{where} is still rate-limiting after {settings.http_retries} retries; wait a minute and try again."
        ) from error
    except openai.NotFoundError as error:
        raise StoryError(
            f"{where} has no such model or endpoint ({error.message}); name one it serves with --model."
        ) from error
    except openai.APIStatusError as error:
        raise StoryError(f"{where} answered HTTP {error.status_code}: {error.message}") from error
    except (AttributeError, TypeError, ValueError) as error:  # the client found no chat completion in the reply
        raise not_a_completion(where) from error
    if not isinstance(completion, ParsedChatCompletion) or not completion.choices:
        raise not_a_completion(where)
    return completion


def not_a_completion(where: str) -> StoryError:
    """The error for a server that answered with something other than a chat completion (a web page, no choices)."""
    return StoryError(
        f"{where} answered, but not with a chat completion (a web page, other JSON or no choices): check that "
        "OPENAI_BASE_URL is the server's OpenAI-compatible address (often ending in /v1)."
    )


def within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`'s result, or TimeoutError after `seconds` of wall-clock time (the call is left to end in the
    background: a read timeout alone never ends a reply that trickles in a byte at a time)."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(max(seconds, 0.0))
    if worker.is_alive():
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def write_with_llm(brief: StoryBrief, check: Callable[[StoryDraft], list[str]], settings: LLMSettings) -> StoryDraft:
    """Ask the LLM for the story of `brief` until `check` finds no problem in it, at most `settings.attempts` times,
    all within `settings.deadline_s`.

    Returns the first draft that passes. Raises StoryError when the model refuses, the reply is cut off, the server
    fails or runs past the deadline, or the last attempt still breaks the rules (its problems listed).
    """
    client = make_client(settings)
    messages = story_messages(brief)
    problems: list[str] = []
    deadline = time.monotonic() + settings.deadline_s
    for _ in range(settings.attempts):
        try:
            completion = request_story(client, settings, messages, deadline - time.monotonic())
        except ValidationError as error:  # not JSON, or not the schema
            places = [(".".join(map(str, e["loc"])) or "the reply", e["msg"]) for e in error.errors()[:10]]
            problems = [f"Your reply could not be read as the story JSON: {place}: {msg}." for place, msg in places]
            messages.append({"role": "user", "content": render_prompt("fix", problems=problems)})
            continue
        message = completion.choices[0].message
        if message.refusal:
            raise StoryError(f"The model refused to write this story: {message.refusal}")
        draft = message.parsed
        problems = check(draft) if draft is not None else ["Your reply was empty."]
        if not problems:
            return draft
        messages.append({"role": "assistant", "content": message.content or ""})
        messages.append({"role": "user", "content": render_prompt("fix", problems=problems)})
    raise StoryError(
        f"The LLM's story could still not be used after {settings.attempts} attempts:\n  "
        + "\n  ".join(problems)
        + "\nTry again, use another model (--model), or use --writer offline."
    )
