"""The OpenAI-compatible HTTP API (and the chat page) over a BatchedGenerator.

    GET  /                     the chat page (chat.html)
    GET  /health               how many generations run and wait
    GET  /v1/models            the one loaded model
    POST /v1/chat/completions  chat models: answer the last user message
    POST /v1/completions       any model: continue a text

Requests follow OpenAI's schema, so the official `openai` client and the
tools built on it work unchanged. Where b_lm differs, it says so plainly:
system messages are ignored (our chat format has no system turn), only
n=1 is served, any model name is accepted (there is one model), and a
conversation longer than the context drops its oldest turns first, then
trims the start of the question, as the REPL does. A completion prompt
keeps its last block_size tokens. Every bad request gets an OpenAI-style
JSON error with a 4xx status.
"""
import asyncio
import json
import os
import secrets
import threading
import time
import uuid
from typing import Dict, List, Literal, Optional, Union

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from chat import answer_room, answer_settings, build_prompt
from errors import UserError
from sampling import Sampling, text_prompt
from tokenizer import StreamDecoder, fit_typed_text

MAX_BODY_BYTES = 1 << 20
TOO_LARGE = f"the request body is over {MAX_BODY_BYTES} bytes"
MAX_TOKENS_LIMIT = 100_000  # per request; a longer answer is a runaway, not a request
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat.html")


class APIError(Exception):
    """A request the API refuses: status code, message, and the parameter at fault."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status, message, param=None, code=None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# The request bodies. Fields OpenAI has but b_lm does not use are accepted
# (clients send them with their defaults) and checked for type; a field
# OpenAI does not have is refused, as OpenAI refuses it. Types are strict,
# as OpenAI's are: "5", true and 5.0 are no integers, "1" and true are no
# numbers, "yes" and 0 are no booleans, 5 is no string; an integer is a
# number, as in JSON.
class Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class StreamOptions(Strict):
    model_config = ConfigDict(extra="forbid")
    include_usage: Optional[bool] = None
    include_obfuscation: Optional[bool] = None


class Params(Strict):
    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_LIMIT)
    temperature: Optional[float] = Field(None, ge=0, le=2)  # None: OpenAI's default, 1
    top_p: Optional[float] = Field(None, ge=0, le=1)
    seed: Optional[int] = Field(None, ge=0, lt=2 ** 63)
    stop: Union[str, List[str], None] = Field(None)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=1)
    user: Optional[str] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: Optional[Dict[str, int]] = None


# Messages and their parts ignore keys they do not know: a client that sends
# back the assistant's message as it got it also sends its refusal, tool
# calls and the like.
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


class CompletionParams(Params):
    prompt: Union[str, List[str]]
    echo: bool = False


FIELDS = {name for body in (ChatParams, CompletionParams, StreamOptions, Message, ContentPart)
          for name in body.model_fields}


def param_path(loc):
    """The parameter a validation error's location names, as OpenAI writes it.

    ('body', 'messages', 0, 'content', 'list[ContentPart]', 1, 'text') -> 'messages[0].content[1].text':
    the union's branch labels are no parameters.
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in FIELDS:
            path += f".{part}" if path else part
    return path


def conversation(messages):
    """(history, question) from OpenAI messages: user/assistant turns, ending with the user's question."""
    turns = [m for m in messages if m.role in ("user", "assistant")]  # system messages are ignored
    if not turns or turns[-1].role != "user":
        raise APIError(400, "the last message must be the user's", "messages")
    for i, m in enumerate(turns):
        if m.role != ("user" if i % 2 == 0 else "assistant"):
            raise APIError(400, "user and assistant messages must alternate, starting with the user's", "messages")
    texts = [valid_text(m.text(), "messages") for m in turns]
    return list(zip(texts[:-1:2], texts[1::2])), texts[-1]


def valid_text(text, param):
    """text, if it can be encoded: JSON can carry lone surrogates, which no tokenizer can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the text holds a lone surrogate (an invalid \\ud800-\\udfff escape)", param)
    return text


def stop_strings(stop):
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise APIError(400, "stop takes at most 4 strings", "stop")
    return [s for s in stops if s]


class StopText:
    """Holds back text that may be the start of a stop string, so no part of one is ever sent."""

    def __init__(self, stops):
        self.stops = stops
        self.pending = ""

    def push(self, text):
        """(text safe to send, whether a stop string was reached)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            ready, self.pending = self.pending[:min(hits)], ""
            return ready, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        ready, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return ready, False

    def flush(self):
        ready, self.pending = self.pending, ""
        return ready


class Completion:
    """One generation as the API sees it: text pieces as they come, then its finish reason and token counts."""

    def __init__(self, generator, tokenizer, prompt_ids, settings, stops):
        self.generator, self.tokenizer = generator, tokenizer
        self.prompt_ids, self.settings, self.stops = prompt_ids, settings, stops
        self.completion_tokens = 0
        self.finish_reason = None

    def usage(self):
        n, m = len(self.prompt_ids), self.completion_tokens
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}

    async def pieces(self, mailbox):
        """The text as it is generated. Tokens that arrived together come out as one piece.

        Under load the generator runs ahead of the event loop, and sending
        each token on its own would cost more than generating it.
        """
        queue = asyncio.Queue()
        generation = self.generator.submit(self.prompt_ids, self.settings, lambda item: mailbox.post(queue, item))
        decoder, stop_text = StreamDecoder(self.tokenizer), StopText(self.stops)
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                text, stopped, ended = "", False, False
                for item in items:
                    if isinstance(item, Exception):
                        raise item
                    if item is None:
                        ended = True
                        break
                    self.completion_tokens += 1
                    if item in self.settings.stop_ids:
                        self.finish_reason = "stop"
                        continue
                    piece, stopped = stop_text.push(decoder.push(item))
                    text += piece
                    if stopped:
                        break
                if ended and not stopped:
                    tail, stopped = stop_text.push(decoder.flush())
                    text += tail if stopped else tail + stop_text.flush()
                if text:
                    yield text
                if stopped or ended:
                    self.finish_reason = "stop" if stopped else self.finish_reason or "length"
                    return
        finally:
            generation.cancel()  # a no-op when it is over; frees the slot when the client went away


class Mailbox:
    """Hands items from the generator's thread to queues on the event loop, waking the loop once per batch.

    The generator emits a token for every active request at each step; one
    wake-up for all of them instead of one each keeps the loop's overhead
    from growing with the batch.
    """

    def __init__(self, loop):
        self.loop = loop
        self.lock = threading.Lock()
        self.pending = []

    def post(self, queue, item):
        with self.lock:
            self.pending.append((queue, item))
            if len(self.pending) > 1:  # a delivery is already on its way
                return
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the server is shutting down and its loop is closed
            pass

    def _deliver(self):
        with self.lock:
            items, self.pending = self.pending, []
        for queue, item in items:
            queue.put_nowait(item)


def sampling(params, max_tokens, default_max_tokens):
    """The Sampling a request's parameters describe."""
    temperature = 1.0 if params.temperature is None else params.temperature
    top_p = 1.0 if params.top_p is None else params.top_p
    if top_p == 0:  # keep only the likeliest token
        temperature, top_p = 0.0, 1.0
    return Sampling(max_new_tokens=default_max_tokens if max_tokens is None else max_tokens,
                    temperature=temperature, top_p=top_p, seed=params.seed)


def sse(data):
    """One server-sent event."""
    return f"data: {json.dumps(data)}\n\n"


class Guard:
    """What every request passes before it reaches a route: the API key, and a cap on the body's size.

    Plain ASGI rather than an @app.middleware function: that kind wraps
    streaming responses in a way that hides a client's disconnect.
    """

    def __init__(self, app, api_key=None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and scope["path"].startswith("/v1/"):
            given = headers.get("authorization", "").encode("latin-1")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                response = error_response(401, "missing or wrong API key: send the header "
                                               "'Authorization: Bearer KEY'", code="invalid_api_key")
                return await response(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await error_response(413, TOO_LARGE)(scope, receive, send)
        received = 0

        async def counted():  # a body sent without a length is counted as it arrives
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, counted, send)


def create_app(generator, tokenizer, model_id, context_length, chat_model, api_key=None):
    """The FastAPI app serving generator's model (its tokenizer, name and context size)."""
    app = FastAPI(title="b_lm", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, api_key=api_key)
    created = int(time.time())
    model_card = {"id": model_id, "object": "model", "created": created, "owned_by": "b_lm",
                  "context_length": context_length, "chat": chat_model}

    @app.exception_handler(APIError)
    async def api_error(request, e):
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e):
        errors = e.errors()
        if errors[0].get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON")
        unknown = [x for x in errors if x.get("type") == "extra_forbidden"]
        if unknown:
            loc = unknown[0]["loc"]
            where = ".".join(filter(None, [param_path(loc[:-1]), str(loc[-1])]))
            return error_response(400, f"unrecognized request argument: {where}", where)
        # A value no branch of a union takes fails in each: name the deepest place, and what each wanted there
        paths = [param_path(x.get("loc", ())) for x in errors]
        where = max(paths, key=len)
        wanted = dict.fromkeys(x.get("msg") for x, path in zip(errors, paths) if path == where)
        return error_response(400, f"{where or 'the request body'}: {' or '.join(wanted)}", where or None)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        with open(PAGE, encoding="utf-8") as f:
            return f.read()

    @app.get("/health")
    async def health():  # for monitors and tests: how busy the generator is
        return {"status": "ok", "active": len(generator.active), "waiting": len(generator.waiting)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        if name != model_id:
            raise APIError(404, f"the model {name!r} does not exist: this server has {model_id!r}", "model",
                           "model_not_found")
        return model_card

    @app.post("/v1/chat/completions")
    async def chat_completions(params: ChatParams):
        if not chat_model:
            raise APIError(400, f"{model_id} is not a chat model: use /v1/completions, or fine-tune it "
                                "with sft.py", "model")
        max_tokens = params.max_completion_tokens if params.max_completion_tokens is not None else params.max_tokens
        settings = answer_settings(tokenizer, sampling(params, max_tokens, 500))
        history, question = conversation(params.messages)
        prompt_ids = await run_in_threadpool(chat_prompt, tokenizer, history, question, context_length,
                                             settings.max_new_tokens)
        completion = Completion(generator, tokenizer, prompt_ids, settings, stop_strings(params.stop))
        return await respond(completion, params, "chatcmpl", chat=True)

    @app.post("/v1/completions")
    async def completions(params: CompletionParams):
        prompts = [params.prompt] if isinstance(params.prompt, str) else params.prompt
        if len(prompts) != 1:
            raise APIError(400, "prompt must be one string", "prompt")
        if params.echo:
            raise APIError(400, "echo is not supported", "echo")
        try:
            prompt_ids, settings = await run_in_threadpool(text_prompt, tokenizer, valid_text(prompts[0], "prompt"),
                                                           sampling(params, params.max_tokens, 16))
        except UserError as e:
            raise APIError(400, str(e), "prompt")
        completion = Completion(generator, tokenizer, prompt_ids, settings, stop_strings(params.stop))
        return await respond(completion, params, "cmpl", chat=False)

    mailboxes = {}  # one per event loop: the server runs one

    async def respond(completion, params, prefix, chat):
        loop = asyncio.get_running_loop()
        mailbox = mailboxes.setdefault(loop, Mailbox(loop))
        ident, now = f"{prefix}-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "created": now, "model": model_id}
        if not params.stream:
            text = "".join([piece async for piece in completion.pieces(mailbox)])
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                          "finish_reason": completion.finish_reason}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": completion.finish_reason}
            return {**head, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                    "usage": completion.usage()}
        kind = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool(params.stream_options and params.stream_options.include_usage)

        def chunk(text=None, finish_reason=None, role=None):
            if chat:
                delta = {} if text is None and role is None else {"content": text or ""}
                if role:
                    delta["role"] = role
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            return sse({**head, "object": kind, "choices": [choice]})

        async def events():
            if chat:
                yield chunk("", role="assistant")
            try:
                async for piece in completion.pieces(mailbox):
                    yield chunk(piece)
            except Exception as e:  # the status line is sent: report in the stream
                yield sse({"error": {"message": f"generation failed: {e}", "type": "server_error"}})
                return
            yield chunk(finish_reason=completion.finish_reason)
            if include_usage:
                yield sse({**head, "object": kind, "choices": [], "usage": completion.usage()})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def chat_prompt(tokenizer, history, question, block_size, max_new_tokens):
    """The prompt ids for a conversation, fitted to the context as the REPL fits it."""
    try:
        history = [(fit_typed_text(tokenizer, q), fit_typed_text(tokenizer, a)) for q, a in history]
        return build_prompt(tokenizer, history, question, block_size - answer_room(block_size, max_new_tokens)).ids
    except UserError as e:
        raise APIError(400, str(e), "messages")
