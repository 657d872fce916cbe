"""The LLM writer: a story from any OpenAI-compatible chat server (OpenAI, Ollama, vLLM, LM Studio) through the
`openai` client, parsed into a StoryDraft by structured output.

The client retries 429s, 5xx and dropped connections with back-off. A reply that is not valid JSON for the schema, or
whose story breaks the rules, is sent back with what is wrong, up to `attempts` times. Refusals, cut-off replies,
timeouts and refused keys end with a StoryError that says which. The prompts are templates/llm/*.j2; only the brief
(names, the parent's descriptions, the theme) is ever sent.
"""

import os
from collections.abc import Callable

import jinja2
import openai
from openai.types.chat import ParsedChatCompletion
from pydantic import BaseModel, ValidationError

from storybook.errors import StoryError
from storybook.storage import TEMPLATES_DIR
from storybook.story_brief import StoryBrief, StoryDraft

DEFAULT_LLM_MODEL = "gpt-4o-mini"


class LLMSettings(BaseModel):
    """Which server and model write the story, and how patiently."""

    model: str = DEFAULT_LLM_MODEL
    base_url: str | None = None  # default: $OPENAI_BASE_URL, else OpenAI
    api_key: str | None = None  # default: $OPENAI_API_KEY (a local server needs none)
    timeout_s: float = 120.0
    http_retries: int = 3  # 429 / 5xx / connection errors, with back-off, by the openai client
    attempts: int = 3  # replies to ask for when one breaks the rules


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


def make_client(settings: LLMSettings) -> openai.OpenAI:
    """An OpenAI client for `settings`. Raises StoryError when neither a key nor a base URL is configured."""
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
    client: openai.OpenAI, settings: LLMSettings, messages: list[dict[str, str]]
) -> ParsedChatCompletion[StoryDraft]:
    """One chat completion parsed as a StoryDraft. Raises StoryError for every failure that a retry cannot fix."""
    where = f"{client.base_url} (model {settings.model})"
    try:
        return client.chat.completions.parse(model=settings.model, messages=messages, response_format=StoryDraft)
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
            f"{where} did not answer within {settings.timeout_s:g} s ({settings.http_retries} retries); "
            "check that the server is up, or try a smaller model."
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


def write_with_llm(brief: StoryBrief, check: Callable[[StoryDraft], list[str]], settings: LLMSettings) -> StoryDraft:
    """Ask the LLM for the story of `brief` until `check` finds no problem in it, at most `settings.attempts` times.

    Returns the first draft that passes. Raises StoryError when the model refuses, the reply is cut off, the server
    fails, or the last attempt still breaks the rules (its problems listed).
    """
    client = make_client(settings)
    messages = story_messages(brief)
    problems: list[str] = []
    for _ in range(settings.attempts):
        try:
            completion = request_story(client, settings, messages)
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
