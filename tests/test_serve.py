"""serve.py: a real server process, driven by the real openai client, raw HTTP and a headless Chromium."""
import contextlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

import openai
import pytest

import generate
from conftest import QA, ROOT, TINY, assert_clean_error, run_script

QUESTIONS = ["Who is the father of Achilles?", "Who killed Patroclus?", "Where is Troy?", "Who is Hector?",
             "What did Achilles do?", "Who is the king of men?", "Who is Helen?", "Why are they fighting?"]


# serve.py as it runs, with the model's forward pass wrapped to log what the model receives: one JSON line per
# pass, {"ids": the token ids it adds to each slot, a list per slot}. Arguments: ROOT, the log, flags.
OBSERVED_SERVE = """
import json, os, runpy, sys
root, log = sys.argv[1:3]
sys.path.insert(0, root)
sys.argv = [os.path.join(root, "serve.py"), *sys.argv[3:]]
import transformer
forward = transformer.Transformer.forward

def logged(self, idx, targets=None, kv_cache=None):
    with open(log, "a") as f:
        ids, rows = idx[0].tolist(), []
        for fed in kv_cache.feeds:
            rows, ids = rows + [ids[:fed]], ids[fed:]
        f.write(json.dumps({"ids": rows}) + "\\n")
    return forward(self, idx, targets, kv_cache)

transformer.Transformer.forward = logged
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@contextlib.contextmanager
def serving(ckpt, *flags, log=None):
    """A serve.py process on a free port: yields its base URL; on exit checks it logged no traceback.

    With log (a path), the server's model logs each forward pass there: see forward_passes.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    script = ["-c", OBSERVED_SERVE, ROOT, log] if log else [os.path.join(ROOT, "serve.py")]
    proc = subprocess.Popen([sys.executable, *script, "--ckpt", ckpt, "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://\S+", line)
        assert match, line + proc.stderr.read()
        yield match.group(0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "500" not in err, err


def forward_passes(log):
    """The forward passes a served model has logged so far: [{"ids": [[...], ...]}, ...]."""
    if not os.path.exists(log):
        return []
    with open(log, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def chat_url(tiny_chat_ckpt):
    with serving(tiny_chat_ckpt, "--max-batch", "4") as url:
        yield url


@pytest.fixture(scope="module")
def base_url(tiny_ckpt):
    with serving(tiny_ckpt) as url:
        yield url


@pytest.fixture(scope="module")
def long_chat_ckpt(tmp_path_factory, small_corpus):
    """A (poor) chat model with a context of 128 tokens: room for a conversation's earlier turns."""
    import sft
    import train
    folder = tmp_path_factory.mktemp("long-chat")
    base, ckpt = str(folder / "base.pth"), str(folder / "chat.pth")
    # tiny_ckpt's and tiny_chat_ckpt's recipes (conftest.py) with a longer context
    train.main(["--data", small_corpus, "--ckpt", base, "--max-iters", "30", "--eval-interval", "15",
                "--muon-lr", "0.02", "--min-lr-ratio", "0.1", "--muon-weight-decay", "0",
                "--metrics", str(folder / "base.csv"), *TINY, "--block-size", "128"])
    sft.main(["--init-from", base, "--qa", QA, "--ckpt", ckpt, "--max-iters", "30", "--batch-size", "8",
              "--eval-interval", "15", "--eval-tokens", "256", "--warmup-iters", "2", "--lr", "1e-2",
              "--shuffle-words", "0", "--question-loss", "0", "--metrics", str(folder / "chat.csv"), "--plot", ""])
    return ckpt


@pytest.fixture(scope="module")
def observed(long_chat_ckpt, tmp_path_factory):
    """(URL, forward-pass log) of a server of long_chat_ckpt whose model logs what it receives."""
    log = str(tmp_path_factory.mktemp("observed") / "forward.jsonl")
    with serving(long_chat_ckpt, "--max-batch", "4", log=log) as url:
        yield url, log


def client(url, key="none"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def ask(url, question, **kw):
    messages = [{"role": "user", "content": question}]
    return client(url).chat.completions.create(model="chat", messages=messages, temperature=0, **kw)


def streamed(url, question, **kw):
    """A streamed chat answer: (text, finish_reason, the chunks)."""
    chunks = list(client(url).chat.completions.create(model="chat", stream=True, temperature=0, **kw,
                                                      messages=[{"role": "user", "content": question}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish, chunks


def request(url, method, path, body=None, headers=None):
    """(status, parsed JSON) of one raw HTTP request; body may be bytes or a JSON-able value."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    is_json = response.getheader("content-type", "").startswith("application/json")
    return response.status, json.loads(raw) if is_json else raw.decode()


def test_chat_answers_equal_generate_py(chat_url, tiny_chat_ckpt, cli):
    for question, length, extra in [(QUESTIONS[0], 30, []), (QUESTIONS[1], 12, ["--temp", "0.8", "--seed", "7"])]:
        expected = cli(generate, "--ckpt", tiny_chat_ckpt, "--chat", question, "--length", length,
                       "--temp", "0", *extra).stdout.rstrip("\n")
        kw = dict(max_tokens=length)
        if extra:
            kw.update(temperature=0.8, seed=7)
        reply = client(chat_url).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": question}], **{"temperature": 0, **kw})
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].message.role == "assistant"
        assert reply.usage.completion_tokens <= length
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_sends_the_same_text_in_openai_chunks(chat_url):
    whole = ask(chat_url, QUESTIONS[2], max_tokens=25)
    text, finish, chunks = streamed(chat_url, QUESTIONS[2], max_tokens=25, stream_options={"include_usage": True})
    assert text == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # the usage chunk comes last
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it streamed


def test_max_tokens_and_stop_behave_as_in_the_api(chat_url):
    # the tiny model's longest greedy answer, asked for one token less than it takes
    replies = {q: ask(chat_url, q, max_tokens=40) for q in QUESTIONS}
    question = max(replies, key=lambda q: replies[q].usage.completion_tokens)
    n = replies[question].usage.completion_tokens - 1
    assert n >= 3
    long = ask(chat_url, question, max_tokens=n)
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == n
    text = long.choices[0].message.content
    short = ask(chat_url, question, max_tokens=n - 1)
    assert short.usage.completion_tokens == n - 1 and text.startswith(short.choices[0].message.content)
    stop = text[1:3]  # a string the greedy answer contains: the answer ends just before its first occurrence
    for reply in (ask(chat_url, question, max_tokens=n, stop=[stop, "never seen"]),
                  ask(chat_url, question, max_tokens=n, stop=stop)):
        assert reply.choices[0].message.content == text[:text.index(stop)]
        assert reply.choices[0].finish_reason == "stop"
    streamed_text, finish, _ = streamed(chat_url, question, max_tokens=n, stop=stop)
    assert streamed_text == text[:text.index(stop)] and finish == ["stop"]


def test_a_conversation_uses_its_history_and_system_messages_are_ignored(observed, long_chat_ckpt):
    import chat
    from checkpoint import load_model
    from sampling import Sampling
    url, log = observed
    model, tokenizer, _ = load_model(long_chat_ckpt)
    block = model.config.block_size
    budget = block - chat.answer_room(block, 15)

    def served(messages):
        """(the prompt ids the server's model received, the reply's text, its usage.prompt_tokens)."""
        start = len(forward_passes(log))
        reply = client(url).chat.completions.create(model="chat", messages=messages, max_tokens=15, temperature=0)
        passes = forward_passes(log)[start:]  # nothing else runs: the passes feed this prompt, then its answer
        assert all(len(p["ids"]) == 1 for p in passes), passes
        fed = [token for p in passes for token in p["ids"][0]]
        return fed[:reply.usage.prompt_tokens], reply.choices[0].message.content, reply.usage.prompt_tokens

    def user(text):
        return {"role": "user", "content": text}

    def assistant(text):  # as the openai client sends back a reply: content parts
        return {"role": "assistant", "content": [{"type": "text", "text": text}]}

    history = [(QUESTIONS[0], "Peleus"), (QUESTIONS[2], "By the sea.")]
    question = QUESTIONS[1]
    prompt = chat.build_prompt(tokenizer, history, question, budget)
    assert prompt.dropped_turns == 0  # the whole conversation fits: the prompt holds both earlier turns
    plain = [user(QUESTIONS[0]), assistant("Peleus"), user(QUESTIONS[2]), assistant("By the sea."), user(question)]
    ids, text, prompt_tokens = served(plain)
    assert ids == prompt.ids and prompt_tokens == len(prompt.ids)
    assert text == chat.answer(model, tokenizer, question, Sampling(max_new_tokens=15, temperature=0), history)
    # system and developer messages, wherever they are, change nothing
    system = {"role": "system", "content": "You are helpful. Answer in Latin."}
    developer = {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}
    assert served([system, *plain[:2], developer, *plain[2:4], system, plain[4]]) == (ids, text, prompt_tokens)
    # a conversation longer than the context drops its oldest turns first, as the REPL does
    long_history = [(QUESTIONS[3 + i], "Son of Priam, tamer of horses, the best of the Trojans.") for i in range(4)]
    prompt = chat.build_prompt(tokenizer, long_history, question, budget)
    assert 0 < prompt.dropped_turns < len(long_history)
    long = [m for q, a in long_history for m in (user(q), assistant(a))] + [user(question)]
    ids, _, prompt_tokens = served([system, *long])
    assert ids == prompt.ids and prompt_tokens == len(prompt.ids)


def test_models_lists_the_checkpoint_and_its_context(chat_url):
    models = client(chat_url).models.list().data
    assert [m.id for m in models] == ["chat"]
    assert models[0].model_extra["context_length"] == 16


def test_a_base_model_continues_text_and_refuses_chat(base_url, tiny_ckpt, cli):
    expected = cli(generate, "--ckpt", tiny_ckpt, "--start", "Sing, O goddess", "--length", "30", "--temp", "0").stdout
    reply = client(base_url).completions.create(model="tiny", prompt="Sing, O goddess", max_tokens=30, temperature=0)
    assert "Sing, O goddess" + reply.choices[0].text + "\n" == expected
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 30
    pieces = list(client(base_url).completions.create(model="tiny", prompt="Sing, O goddess", max_tokens=30,
                                                      temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == reply.choices[0].text
    with pytest.raises(openai.BadRequestError, match="not a chat model"):
        ask(base_url, "Who is Hector?")


def test_eight_concurrent_streams_get_their_single_client_answers(chat_url):
    alone = {q: ask(chat_url, q, max_tokens=40).choices[0].message.content for q in QUESTIONS}
    answers, errors = {}, []

    def stream(question):
        try:
            answers[question] = streamed(chat_url, question, max_tokens=40)[0]
        except Exception as e:  # reported below, with the others' results
            errors.append(e)

    def abandon():  # a client that goes away mid-stream
        try:
            conn = endless_stream(chat_url)
            conn.sock.shutdown(2)
            conn.close()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=stream, args=(q,)) for q in QUESTIONS] + [threading.Thread(target=abandon)]
    for t in threads:
        t.start()
    join_all(threads, seconds=60)
    assert not errors, errors
    assert answers == alone
    assert idle(chat_url)  # the abandoned generation freed its slot


def join_all(threads, seconds):
    """Wait for the threads to end, all within seconds: a client left hanging fails the test instead of it."""
    deadline = time.monotonic() + seconds
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"a client had no answer within {seconds} s"


def test_concurrent_requests_share_the_model_s_forward_passes(observed):
    url, log = observed
    prompts = ["Sing, O goddess", "Achilles", "the ships", "Hector", "Troy", "Patroclus", "the gods", "Helen"]

    def complete(prompt):  # plain text never ends by itself: every answer is 200 tokens long
        code, reply = request(url, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": 200, "temperature": 0})
        assert code == 200 and reply["usage"]["completion_tokens"] == 200, reply
        return reply["choices"][0]["text"]

    alone, solo = {}, 0  # the answers, and the forward passes, of the eight served one after another
    for prompt in prompts:
        start = len(forward_passes(log))
        alone[prompt] = complete(prompt)
        solo += len(forward_passes(log)) - start
    together, errors = {}, []
    barrier = threading.Barrier(len(prompts))

    def send(prompt):
        try:
            barrier.wait(timeout=60)
            together[prompt] = complete(prompt)
        except Exception as e:  # reported below
            errors.append(e)

    start = len(forward_passes(log))
    threads = [threading.Thread(target=send, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    join_all(threads, seconds=120)
    assert not errors, errors
    assert together == alone
    passes = forward_passes(log)[start:]
    assert 1 < max(sum(len(ids) == 1 for ids in p["ids"]) for p in passes) <= 4  # decoding together, --max-batch 4
    assert len(passes) <= solo / 2, (len(passes), solo)


def idle(url, tries=100):
    """Whether the server's generator is (or soon becomes) idle: no generation running or waiting."""
    for _ in range(tries):
        status, health = request(url, "GET", "/health")
        if health["active"] == 0 and health["waiting"] == 0:
            return True
        time.sleep(0.05)
    return False


def endless_stream(url):
    """An open connection streaming a completion that would run for 100,000 tokens, its first event read."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    body = {"prompt": "Sing", "stream": True, "max_tokens": 100000}  # plain text never ends by itself
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    assert conn.getresponse().read(6) == b"data: "
    return conn


def test_a_disconnected_client_frees_its_slot_at_once(tiny_chat_ckpt):
    with serving(tiny_chat_ckpt, "--max-batch", "1") as url:
        conn = endless_stream(url)
        assert request(url, "GET", "/health")[1]["active"] == 1
        conn.sock.shutdown(2)
        conn.close()
        assert idle(url)
        # the one slot is free again: the next request is answered
        assert ask(url, QUESTIONS[0], max_tokens=5).usage.completion_tokens == 5


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "Who is Hector?"}], "max_tokens": 3}
BAD_REQUESTS = [
    ("not JSON", b"{'messages': nope", 400, None),
    ("a JSON list", [1, 2], 400, None),
    ("no messages", {"model": "chat"}, 400, "messages"),
    ("empty messages", {**CHAT, "messages": []}, 400, "messages"),
    ("max_tokens a string", {**CHAT, "max_tokens": "ten"}, 400, "max_tokens"),
    ("negative max_tokens", {**CHAT, "max_tokens": -1}, 400, "max_tokens"),
    ("huge max_tokens", {**CHAT, "max_tokens": 10 ** 30}, 400, "max_tokens"),
    ("temperature out of range", {**CHAT, "temperature": 7}, 400, "temperature"),
    ("NaN-like top_p", {**CHAT, "top_p": "nan"}, 400, "top_p"),
    ("negative seed", {**CHAT, "seed": -3}, 400, "seed"),
    ("unknown field", {**CHAT, "frobnicate": True}, 400, "frobnicate"),
    ("n > 1", {**CHAT, "n": 3}, 400, "n"),
    ("stream not a bool", {**CHAT, "stream": "maybe"}, 400, "stream"),
    ("five stop strings", {**CHAT, "stop": list("abcde")}, 400, "stop"),
    ("a bad role", {**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    ("content a number", {**CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "messages"),
    ("ends with the assistant", {**CHAT, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
    ("two user turns", {**CHAT, "messages": [{"role": "user", "content": "a"}] * 2}, 400, "messages"),
    ("a character the model lacks", {**CHAT, "messages": [{"role": "user", "content": "日本"}]}, 400, "messages"),
    ("a lone surrogate", b'{"messages": [{"role": "user", "content": "Hector \\ud800"}]}', 400, "messages"),
    ("a body over the limit", {**CHAT, "user": "x" * (2 << 20)}, 413, None),
]


@pytest.mark.parametrize("name,body,status,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(chat_url, name, body, status, param):
    code, reply = request(chat_url, "POST", "/v1/chat/completions", body)
    assert code == status, reply
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["message"]
    if param:
        assert reply["error"]["param"].startswith(param), reply
    assert ask(chat_url, "Who is Hector?", max_tokens=3).usage.completion_tokens == 3


# Every field of both request bodies, nested ones included, in a body that is valid as it stands:
# (path to the field, the param an error names, its JSON type, whether null is allowed).
FULL_CHAT = {"model": "chat", "messages": [{"role": "user", "name": "Ann",
                                            "content": [{"type": "text", "text": "Who is Hector?"}]}],
             "max_tokens": 1, "max_completion_tokens": 1, "temperature": 0, "top_p": 1, "seed": 1, "stop": ["zz"],
             "stream": False, "stream_options": {"include_usage": False, "include_obfuscation": False}, "n": 1,
             "user": "u", "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {"5": 1}}
FULL_COMPLETION = {**{k: v for k, v in FULL_CHAT.items() if k not in ("messages", "max_completion_tokens")},
                   "prompt": ["Sing, O goddess"], "echo": False}
COMMON_FIELDS = [
    (("model",), "model", "string", True),
    (("max_tokens",), "max_tokens", "integer", True),
    (("temperature",), "temperature", "number", True),
    (("top_p",), "top_p", "number", True),
    (("seed",), "seed", "integer", True),
    (("stop",), "stop", "string or list", True),
    (("stop", 0), "stop[0]", "string", False),
    (("stream",), "stream", "boolean", True),
    (("stream_options",), "stream_options", "object", True),
    (("stream_options", "include_usage"), "stream_options.include_usage", "boolean", True),
    (("stream_options", "include_obfuscation"), "stream_options.include_obfuscation", "boolean", True),
    (("n",), "n", "integer", False),
    (("user",), "user", "string", True),
    (("presence_penalty",), "presence_penalty", "number", False),
    (("frequency_penalty",), "frequency_penalty", "number", False),
    (("logit_bias",), "logit_bias", "object", True),
    (("logit_bias", "5"), "logit_bias", "integer", False),
]
CHAT_FIELDS = COMMON_FIELDS + [
    (("max_completion_tokens",), "max_completion_tokens", "integer", True),
    (("messages",), "messages", "list", False),
    (("messages", 0), "messages[0]", "object", False),
    (("messages", 0, "role"), "messages[0].role", "string", False),
    (("messages", 0, "name"), "messages[0].name", "string", True),
    (("messages", 0, "content"), "messages[0].content", "string or list", False),
    (("messages", 0, "content", 0), "messages[0].content[0]", "object", False),
    (("messages", 0, "content", 0, "type"), "messages[0].content[0].type", "string", False),
    (("messages", 0, "content", 0, "text"), "messages[0].content[0].text", "string", False),
]
COMPLETION_FIELDS = COMMON_FIELDS + [
    (("prompt",), "prompt", "string or list", False),
    (("prompt", 0), "prompt[0]", "string", False),
    (("echo",), "echo", "boolean", False),
]
# The wrong JSON values for each type. Where a lax parser would coerce one ("1", true, 1.0, "false", 0), it
# is one that, coerced, would make a valid body: only a strict parser refuses it.
WRONG = {
    "integer": {"string": "1", "boolean": True, "float": 1.0, "object": {}, "list": []},
    "number": {"string": "1", "boolean": True, "object": {}, "list": []},
    "boolean": {"string": "false", "integer": 0, "float": 0.0, "object": {}, "list": []},
    "string": {"integer": 1, "float": 1.5, "boolean": True, "object": {}, "list": []},
    "string or list": {"integer": 1, "float": 1.5, "boolean": True, "object": {}},
    "list": {"string": "Who is Hector?", "integer": 1, "float": 1.5, "boolean": True, "object": {}},
    "object": {"string": "x", "integer": 1, "float": 1.5, "boolean": True, "list": []},
}
WRONG_TYPES = [(route, full, path, param, wrong, value)
               for route, full, fields in [("/v1/chat/completions", FULL_CHAT, CHAT_FIELDS),
                                           ("/v1/completions", FULL_COMPLETION, COMPLETION_FIELDS)]
               for path, param, kind, nullable in fields
               for wrong, value in [*WRONG[kind].items(), *([] if nullable else [("null", None)])]]


def replaced(body, path, value):
    """A deep copy of the JSON value body with the value at path replaced."""
    body = json.loads(json.dumps(body))
    inner = body
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return body


@pytest.mark.parametrize("route,full,path,param,wrong,value", WRONG_TYPES,
                         ids=[f"{'chat' if 'chat' in c[0] else 'completion'}-{'.'.join(map(str, c[2]))}-{c[4]}"
                              for c in WRONG_TYPES])
def test_every_field_refuses_every_wrong_json_type(chat_url, route, full, path, param, wrong, value):
    code, reply = request(chat_url, "POST", route, replaced(full, path, value))
    assert code == 400, reply
    assert set(reply) == {"error"} and set(reply["error"]) == {"message", "type", "param", "code"}, reply
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["param"] == param, reply
    assert param in reply["error"]["message"], reply


def test_valid_spellings_of_every_field_are_still_taken(chat_url):
    # as sent in full, with integers for the numbers (temperature 0, penalties 0), and with every null allowed
    for route, full, fields in [("/v1/chat/completions", FULL_CHAT, CHAT_FIELDS),
                                ("/v1/completions", FULL_COMPLETION, COMPLETION_FIELDS)]:
        code, reply = request(chat_url, "POST", route, full)
        assert code == 200 and reply["usage"]["completion_tokens"] == 1, reply
        for path, param, kind, nullable in fields:
            if nullable:
                code, reply = request(chat_url, "POST", route, replaced(full, path, None))
                assert code == 200, (param, reply)
    chat = {"messages": [{"role": "user", "content": "Who is Hector?"}], "max_tokens": 1}
    for spelling in [{"temperature": 1, "top_p": 0.5}, {"temperature": 0.7, "top_p": 1, "seed": 0},
                     {"presence_penalty": -2, "frequency_penalty": 1.5}, {"stop": "zz"}, {"stop": []},
                     {"logit_bias": {}}, {"stream_options": {}}, {"stream": True}]:
        code, reply = request(chat_url, "POST", "/v1/chat/completions", {**chat, **spelling})
        assert code == 200, (spelling, reply)
    # what the chat page sends: JavaScript's Number() of its inputs, streamed, the conversation so far
    page = {"model": "chat", "stream": True, "temperature": 0, "top_p": 1, "max_tokens": 2, "seed": 3,
            "messages": [{"role": "user", "content": "Who is Hector?"}, {"role": "assistant", "content": "He"},
                         {"role": "user", "content": "Who is Helen?"}]}
    code, events = request(chat_url, "POST", "/v1/chat/completions", page)
    assert code == 200 and events.endswith("data: [DONE]\n\n"), events
    # the openai client's own spellings: content parts, stream_options, a float temperature
    parts = [{"type": "text", "text": "Who is "}, {"type": "text", "text": "Hector?"}]
    chunks = list(client(chat_url).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": parts}], max_tokens=2, temperature=0.0, top_p=1.0,
        stream=True, stream_options={"include_usage": True}, presence_penalty=0.0, user="u", n=1))
    assert chunks[-1].usage.completion_tokens in (1, 2)  # the usage chunk came


def test_odd_requests_are_answered_sensibly(chat_url, base_url):
    assert request(chat_url, "GET", "/v1/nothing")[0] == 404
    assert request(chat_url, "GET", "/v1/chat/completions")[0] == 405
    assert request(chat_url, "GET", "/v1/models/other")[0] == 404
    code, reply = request(base_url, "POST", "/v1/completions", {"prompt": "日本", "max_tokens": 2})
    assert code == 400 and "日" in reply["error"]["message"]
    assert request(base_url, "POST", "/v1/completions", {"prompt": ["a", "b"]})[0] == 400
    # a chunked body with no length is counted as it arrives
    parts = urllib.parse.urlsplit(chat_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=iter([b"{" + b" " * (1 << 20), b"}"]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    # a question longer than the context keeps its end, as the REPL does
    reply = ask(chat_url, "Who is the father of Achilles? " * 50, max_tokens=4)
    assert reply.usage.prompt_tokens <= 16 and reply.usage.completion_tokens == 4
    assert ask(chat_url, QUESTIONS[0], max_tokens=0).choices[0].message.content == ""
    nulls = {**CHAT, "temperature": None, "top_p": None, "stream": None, "stop": None, "seed": None}
    assert request(chat_url, "POST", "/v1/chat/completions", nulls)[0] == 200  # null means the default


def test_an_api_key_is_required_when_given(tiny_chat_ckpt):
    with serving(tiny_chat_ckpt, "--api-key", "s3cret") as url:
        for key in ("wrong", "s3cre"):
            with pytest.raises(openai.AuthenticationError):
                client(url, key).models.list()
        assert request(url, "POST", "/v1/chat/completions", CHAT)[0] == 401
        assert client(url, "s3cret").models.list().data[0].id == "chat"
        status, page = request(url, "GET", "/")  # the page itself is public: it asks for the key
        assert status == 200 and "API key" in page


def test_bad_command_lines_are_one_line(tmp_path, tiny_ckpt):
    assert_clean_error(run_script("serve.py", "--ckpt", str(tmp_path / "missing.pth"), "--port", "0"), "missing.pth")
    assert_clean_error(run_script("serve.py", "--port", "70000"), "--port")
    assert_clean_error(run_script("serve.py", "--max-batch", "0"), "--max-batch")
    assert_clean_error(run_script("serve.py", "--max-batch", "99999999999999999999"), "--max-batch")
    assert_clean_error(run_script("serve.py", "--threads", "0"), "--threads")
    assert_clean_error(run_script("serve_benchmark.py", "--ckpt", tiny_ckpt, "--clients", "1", "100000"), "--clients")
    assert_clean_error(run_script("serve_benchmark.py", "--ckpt", tiny_ckpt, "--seconds", "nan"), "--seconds")
    assert_clean_error(run_script("nanogpt_benchmark.py", "--nanogpt", str(tmp_path)), "not a nanoGPT checkout")
    checkout = tmp_path / "nanoGPT"  # enough of one to pass its check
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("")
    (checkout / "out").mkdir()
    (checkout / "out" / "ckpt.pt").write_bytes(b"the user's own run")
    assert_clean_error(run_script("nanogpt_benchmark.py", "--nanogpt", str(checkout), "--work", str(checkout)),
                       "is not empty")
    assert (checkout / "out" / "ckpt.pt").read_bytes() == b"the user's own run"
    with serving(tiny_ckpt) as url:
        port = urllib.parse.urlsplit(url).port
        assert_clean_error(run_script("serve.py", "--ckpt", tiny_ckpt, "--port", str(port)), str(port))


def test_the_load_benchmark_runs_text_completions_on_a_base_model(tiny_ckpt, tmp_path, capsys):
    """serve_benchmark.py --text on a base model: its warm-up, too, asks for text, which a base model serves."""
    import serve_benchmark
    record = {"id": "sing/0", "fact_id": "sing", "split": "test", "category": "parentage",
              "question": "Sing, O goddess", "answer": "Achilles", "evidence": "Sing, O goddess"}
    (tmp_path / "qa.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    serve_benchmark.main(["--ckpt", tiny_ckpt, "--qa", str(tmp_path / "qa.jsonl"), "--text", "--clients", "1",
                          "--seconds", "0.5", "--max-tokens", "3"])
    out = capsys.readouterr().out
    assert "text completions of 3 tokens" in out and re.search(r"^ +1 +[1-9]\d* +[\d,]+ +1\.0x ", out, re.M), out


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (BROWSER and DRIVER) and not os.environ.get("B_LM_REQUIRE_BROWSER"),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_the_chat_page_streams_an_answer_in_a_real_browser(chat_url, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,700"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get(chat_url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "context 16 tokens" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "max_tokens").clear()
        browser.find_element(By.ID, "max_tokens").send_keys("30")
        browser.find_element(By.ID, "question").send_keys(QUESTIONS[0])
        browser.find_element(By.ID, "send").click()
        answer = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, ".assistant[data-done='true']"))
        assert answer.text.strip() == ask(chat_url, QUESTIONS[0], max_tokens=30).choices[0].message.content.strip()
        assert browser.find_element(By.CSS_SELECTOR, ".user").text == QUESTIONS[0]
        browser.save_screenshot(str(tmp_path / "page.png"))
        browser.find_element(By.ID, "new").click()
        assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
        requests = [e["name"] for e in browser.execute_script("return performance.getEntriesByType('resource')")]
        assert all(r.startswith(chat_url) for r in requests), requests  # nothing from outside
    finally:
        browser.quit()
