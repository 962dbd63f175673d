"""The OpenAI API's request bodies and its errors: {"error": {"message", "type", "param", "code"}} with a 4xx
status, param naming the field at fault as OpenAI writes it (messages[0].content). The routes: openai_api.py."""
from typing import Dict, List, Literal, Optional, Union

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from flags import SEED_LIMIT
from sampling import Sampling

MAX_TOKENS_LIMIT = 100_000  # per request; a longer answer is a runaway, not a request


class APIError(HTTPException):
    """A request the API refuses: status code, message, the parameter at fault and OpenAI's code for it. An
    HTTPException, so that FastAPI passes on one raised while it reads the body (openai_api.Guard's 413)."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(status, message)
        self.param, self.code = param, code

    def response(self):
        kind = "invalid_request_error" if self.status_code < 500 else "server_error"
        error = {"message": self.detail, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status_code)


async def refused(request, e):
    """Any refused request as an OpenAI error: ours, Starlette's own (404, 405), or a body that fails the schema."""
    if isinstance(e, RequestValidationError):
        e = invalid_body(e.errors())
    elif not isinstance(e, APIError):
        e = APIError(e.status_code, str(e.detail))
    return e.response()


ERROR_HANDLERS = dict.fromkeys([HTTPException, RequestValidationError], refused)


# The request bodies. Fields OpenAI has but b_lm does not use are accepted (clients send them with their defaults)
# and checked for type; a field OpenAI does not have is refused, as OpenAI refuses it. Types are strict, as OpenAI's
# are: "5", true and 5.0 are no integers, "1" and true no numbers, "yes" and 0 no booleans, 5 no string; an integer
# is a number, as in JSON.
class Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class StreamOptions(Strict, extra="forbid"):
    include_usage: Optional[bool] = None
    include_obfuscation: Optional[bool] = None


class Params(Strict, extra="forbid"):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_LIMIT)
    temperature: Optional[float] = Field(None, ge=0, le=2)  # None: OpenAI's default, 1
    top_p: Optional[float] = Field(None, ge=0, le=1)
    seed: Optional[int] = Field(None, ge=0, lt=SEED_LIMIT)
    stop: Union[str, List[str], None] = Field(None)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=1)
    user: Optional[str] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: Optional[Dict[str, int]] = None

    def sampling(self, default_max_tokens):
        """The Sampling these parameters describe, default_max_tokens long if they set no length."""
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if top_p == 0:  # keep only the likeliest token
            temperature, top_p = 0.0, 1.0
        # a chat's newer name for max_tokens wins
        lengths = (getattr(self, "max_completion_tokens", None), self.max_tokens, default_max_tokens)
        return Sampling(max_new_tokens=next(n for n in lengths if n is not None), temperature=temperature, top_p=top_p,
                        seed=self.seed)

    def stops(self):
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop takes at most 4 strings", "stop")
        return [s for s in stops if s]


# Messages and their parts ignore keys they do not know: a client that sends back the assistant's message as it got
# it also sends its refusal, tool calls and the like.
class ContentPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[ContentPart]]
    name: Optional[str] = None

    def text(self):
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatParams(Params):
    messages: List[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_LIMIT)

    def conversation(self):
        """(history, question): the user/assistant turns, ending with the user's question."""
        turns = [m for m in self.messages if m.role in ("user", "assistant")]  # system messages are ignored
        if not turns or turns[-1].role != "user":
            raise APIError(400, "the last message must be the user's", "messages")
        if any(m.role != ("user", "assistant")[i % 2] for i, m in enumerate(turns)):
            raise APIError(400, "user and assistant messages must alternate, starting with the user's", "messages")
        texts = [valid_text(m.text(), "messages") for m in turns]
        return list(zip(texts[:-1:2], texts[1::2])), texts[-1]


class CompletionParams(Params):
    prompt: Union[str, List[str]]
    echo: bool = False

    def prompt_text(self):
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) != 1:
            raise APIError(400, "prompt must be one string", "prompt")
        if self.echo:
            raise APIError(400, "echo is not supported", "echo")
        return valid_text(prompts[0], "prompt")


def valid_text(text, param):
    """text, if it can be encoded: JSON can carry lone surrogates, which no tokenizer can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the text holds a lone surrogate (an invalid \\ud800-\\udfff escape)", param)
    return text


FIELDS = {name for body in (ChatParams, CompletionParams, StreamOptions, Message, ContentPart)
          for name in body.model_fields}


def param_path(loc):
    """The parameter a validation error's location names, as OpenAI writes it, leaving out a union's branch labels:
    ('body', 'messages', 0, 'content', 'list[ContentPart]', 1, 'text') -> 'messages[0].content[1].text'"""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in FIELDS:
            path += f".{part}" if path else part
    return path


def invalid_body(errors):
    if errors[0].get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON")
    if unknown := [x for x in errors if x.get("type") == "extra_forbidden"]:
        loc = unknown[0]["loc"]
        where = ".".join(filter(None, [param_path(loc[:-1]), str(loc[-1])]))
        return APIError(400, f"unrecognized request argument: {where}", where)
    # A value no branch of a union takes fails in each: name the deepest place, and what each wanted there
    paths = [param_path(x.get("loc", ())) for x in errors]
    where = max(paths, key=len)
    wanted = dict.fromkeys(x.get("msg") for x, path in zip(errors, paths) if path == where)
    return APIError(400, f"{where or 'the request body'}: {' or '.join(wanted)}", where or None)
