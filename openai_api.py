"""The OpenAI-compatible HTTP API (and the chat page at /) over a BatchedGenerator. Requests follow OpenAI's schema, so
the official `openai` client and the tools built on it work unchanged. Where b_lm differs: system messages are ignored
(our chat format has no system turn), only n=1 is served, any model name is accepted (there is one model), and a
conversation longer than the context drops its oldest turns first, then trims the start of the question, as the REPL
does. A completion prompt keeps its last block_size tokens."""
import os
import secrets
import time

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from api_schema import ERROR_HANDLERS, APIError, ChatParams, CompletionParams
from api_stream import Completion, respond
from chat import answer_settings, build_prompt, prompt_budget
from errors import UserError
from sampling import text_prompt

MAX_BODY_BYTES = 1 << 20
TOO_LARGE = f"the request body is over {MAX_BODY_BYTES} bytes"
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat.html")


class Guard:
    """What every request passes before it reaches a route: the API key, and a cap on the body's size. Plain ASGI rather
    than an @app.middleware function, which wraps streaming responses so as to hide a disconnect."""

    def __init__(self, app, api_key=None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and scope["path"].startswith("/v1/"):
            given = headers.get("authorization", "").encode("latin-1")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                refused = APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                                   code="invalid_api_key")
                return await refused.response()(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await APIError(413, TOO_LARGE).response()(scope, receive, send)
        received = 0

        async def counted():  # a body sent without a length is counted as it arrives
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise APIError(413, TOO_LARGE)
            return message

        await self.app(scope, counted, send)


def create_app(generator, tokenizer, model_id, context_length, chat_model, api_key=None):
    app = FastAPI(title="b_lm", docs_url=None, redoc_url=None, openapi_url=None, exception_handlers=ERROR_HANDLERS)
    app.add_middleware(Guard, api_key=api_key)
    model_card = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "b_lm",
                  "context_length": context_length, "chat": chat_model}

    @app.get("/")
    async def page():
        return FileResponse(PAGE)

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
        settings = answer_settings(tokenizer, params.sampling(500))
        history, question = params.conversation()
        try:  # fitted to the context as the REPL fits it
            budget = prompt_budget(context_length, settings.max_new_tokens)
            prompt = await run_in_threadpool(build_prompt, tokenizer, history, question, budget)
        except UserError as e:
            raise APIError(400, str(e), "messages")
        completion = Completion(generator, tokenizer, prompt.ids, settings, params.stops())
        return await respond(completion, params, model_id, chat=True)

    @app.post("/v1/completions")
    async def completions(params: CompletionParams):
        try:
            ids, settings = await run_in_threadpool(text_prompt, tokenizer, params.prompt_text(), params.sampling(16))
        except UserError as e:
            raise APIError(400, str(e), "prompt")
        completion = Completion(generator, tokenizer, ids, settings, params.stops())
        return await respond(completion, params, model_id, chat=False)

    return app
