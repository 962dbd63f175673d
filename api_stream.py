"""A completion on its way to the client: the generator's tokens as text, cut at the stop strings, sent back
as one JSON body or as server-sent events while it is generated."""
import asyncio
import contextlib
import json
import threading
import time
import uuid

from fastapi.responses import StreamingResponse

from errors import short_reason
from tokenizer import StreamDecoder


class StopText:
    """Holds back text that may be the start of a stop string, so no part of one is ever sent."""

    def __init__(self, stops):
        self.stops, self.pending = stops, ""

    def push(self, text):
        """(text safe to send, whether a stop string was reached)."""
        self.pending += text
        if hits := [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]:
            ready, self.pending = self.pending[:min(hits)], ""
            return ready, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        ready, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return ready, False


class Mailbox:
    """Hands items from the generator's thread to queues on the event loop, waking the loop once per batch: the
    generator emits a token for every active request at each step, and one wake-up for all keeps it cheap."""
    of_loop = {}  # one per event loop: the server runs one

    def __init__(self, loop):
        self.loop, self.lock, self.pending = loop, threading.Lock(), []

    def post(self, queue, item):
        with self.lock:
            self.pending.append((queue, item))
            if len(self.pending) > 1:  # a delivery is already on its way
                return
        with contextlib.suppress(RuntimeError):  # the server is shutting down and its loop is closed
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self):
        with self.lock:
            items, self.pending = self.pending, []
        for queue, item in items:
            queue.put_nowait(item)


class Completion:
    """One generation as the API sees it: text pieces as they come, then its finish reason and token counts."""

    def __init__(self, generator, tokenizer, prompt_ids, settings, stops):
        self.generator, self.prompt_ids, self.settings = generator, prompt_ids, settings
        self.decoder, self.stop_text = StreamDecoder(tokenizer), StopText(stops)
        self.completion_tokens = 0
        self.stop_token = False  # whether the model ended the text itself
        self.finish_reason = None  # set when the text is over: "stop" or "length"

    def usage(self):
        n, m = len(self.prompt_ids), self.completion_tokens
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}

    async def pieces(self):
        """The text as it is generated. Tokens that arrived together come out as one piece: under load the generator
        runs ahead of the event loop, and sending each token on its own would cost more than generating it."""
        loop = asyncio.get_running_loop()
        queue, mailbox = asyncio.Queue(), Mailbox.of_loop.setdefault(loop, Mailbox(loop))
        generation = self.generator.submit(self.prompt_ids, self.settings, lambda item: mailbox.post(queue, item))
        try:
            while self.finish_reason is None:
                text = self._take(await queue.get())
                while self.finish_reason is None and not queue.empty():
                    text += self._take(queue.get_nowait())
                if text:
                    yield text
        finally:
            generation.cancel()  # a no-op when it is over; frees the slot when the client went away

    def _take(self, item):
        """The text one item from the generator adds: a token, the end (None) or the model's failure."""
        if isinstance(item, Exception):
            raise item
        if item is None:  # the generation is over: out with what the decoder and the stop check hold back
            tail, stopped = self.stop_text.push(self.decoder.flush())
            self.finish_reason = "stop" if stopped or self.stop_token else "length"
            return tail if stopped else tail + self.stop_text.pending
        self.completion_tokens += 1
        if item in self.settings.stop_ids:
            self.stop_token = True
            return ""
        piece, stopped = self.stop_text.push(self.decoder.push(item))
        if stopped:
            self.finish_reason = "stop"
        return piece


def choice(chat, text, finish_reason=None, streamed=False, role=None):
    """A response's one choice: a chat message (streamed: a chunk's delta), or a completion's text."""
    if not chat:
        part = {"text": text or ""}
    elif streamed:  # the role comes in the first chunk only, and no content in the last
        delta = {} if text is None else {"content": text}
        part = {"delta": {**delta, "role": role} if role else delta}
    else:
        part = {"message": {"role": "assistant", "content": text}}
    return {"index": 0, **part, "logprobs": None, "finish_reason": finish_reason}


def sse(data):
    return f"data: {json.dumps(data)}\n\n"


async def respond(completion, params, model_id, chat):
    """The completion as OpenAI sends one: a chat or text completion, whole or (params.stream) as events."""
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": model_id}
    if not params.stream:
        text = "".join([piece async for piece in completion.pieces()])
        return {**head, "object": "chat.completion" if chat else "text_completion",
                "choices": [choice(chat, text, completion.finish_reason)], "usage": completion.usage()}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    include_usage = bool(params.stream_options and params.stream_options.include_usage)
    return StreamingResponse(events(completion, head, chat, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def events(completion, head, chat, include_usage):
    """A streamed completion's server-sent events: each chunk is head (id, time, model, object) and a choice."""
    if chat:
        yield sse({**head, "choices": [choice(chat, "", streamed=True, role="assistant")]})
    try:
        async for piece in completion.pieces():
            yield sse({**head, "choices": [choice(chat, piece, streamed=True)]})
    except Exception as e:  # the status line is sent: report in the stream
        yield sse({"error": {"message": f"generation failed: {short_reason(e)}", "type": "server_error"}})
        return
    yield sse({**head, "choices": [choice(chat, None, completion.finish_reason, streamed=True)]})
    if include_usage:
        yield sse({**head, "choices": [], "usage": completion.usage()})
    yield "data: [DONE]\n\n"
