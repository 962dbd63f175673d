"""How serve.py holds up under load: aggregate tokens/s and time to first token, 1 to 16 clients.

    python serve_benchmark.py --ckpt chat.pth                  # 1, 4 and 16 clients, 30 s each
    python serve_benchmark.py --ckpt chat.pth --clients 1 8 --seconds 10
    python serve_benchmark.py --ckpt chat.pth --llama-cpp chat.gguf   # then llama-cpp-python's server, same load

Starts serve.py on a free local port, then for each load runs that many clients at once, each streaming greedy chat
answers to qa.jsonl's test questions back to back until the time is up. The answers are short, so that load is mostly
requests and prompts; --text streams completions that run to --max-tokens instead, which is mostly decoding. Tokens
are the server's own usage counts; time to first token runs from sending the request to the first text arriving. Run
it with nothing else busy: the clients share the machine with the server.

--llama-cpp FILE runs the same loads against llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`) on
FILE, the same model written by `convert.py to-gguf`, with one model thread as serve.py has. Its streams carry no
usage, so its tokens are its streamed pieces (one a token); it does not stop a request at the model's context, so
each request's max_tokens is capped to what the context leaves after the prompt, for both servers.
"""
from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import http.client
import importlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from api_schema import MAX_TOKENS_LIMIT
from chat import build_prompt
from checkpoint import checked_tokenizer, load_checkpoint
from errors import ArgumentParser, UserError, run_main, short_reason
from files import check_input_file
from flags import add_flag, ckpt_setting
from qa import load_qa
from sampling import Sampling, text_prompt

ROOT = os.path.dirname(os.path.abspath(__file__))
MAX_CLIENTS = 256  # a thread each, and the server's --max-batch


def parse_args(argv=None):
    p = ArgumentParser(description="Benchmark serve.py: throughput and time to first token under load.")
    a = p.add_argument
    add_flag(p, "ckpt", ckpt_setting("chat.pth", "chat checkpoint to serve"))
    a("--qa", default=os.path.join(ROOT, "qa.jsonl"), help="questions: its test split (default: qa.jsonl)")
    a("--clients", type=int, nargs="+", default=[1, 4, 16],
      help="concurrent clients, one run each, each in [1, 256] (default: 1 4 16)")
    a("--seconds", type=float, default=30.0, help="length of each run, > 0 (default: %(default)s)")
    a("--max-tokens", type=int, default=100, help="max_tokens of each answer, in [1, 100000] (default: %(default)s)")
    a("--text", action="store_true", help="stream text completions that run to --max-tokens (sampled continuations "
      "of the questions) instead of chat answers, which end where the model ends them")
    a("--llama-cpp", metavar="FILE", help="also run the loads against llama_cpp.server on this GGUF file of the same "
      "model (convert.py to-gguf)")
    args = p.parse_args(argv)
    if not all(1 <= n <= MAX_CLIENTS for n in args.clients):
        raise UserError(f"--clients must each be in [1, {MAX_CLIENTS}], got {args.clients}")
    if not 1 <= args.max_tokens <= MAX_TOKENS_LIMIT:
        raise UserError(f"--max-tokens must be in [1, {MAX_TOKENS_LIMIT}], got {args.max_tokens}")
    if not 0 < args.seconds < 1e6:
        raise UserError(f"--seconds must be in (0, 1e6), got {args.seconds}")
    check_input_file(args.ckpt, "checkpoint")
    check_input_file(args.qa, "--qa")
    if args.llama_cpp is not None:
        check_input_file(args.llama_cpp, "--llama-cpp")
        try:
            importlib.import_module("llama_cpp.server")
        except ImportError:
            raise UserError("--llama-cpp needs llama_cpp.server: pip install -r requirements-dev.txt") from None
    return args


def stream_one(host, port, question, max_tokens, text_mode=False):
    """One streamed chat answer (greedy) or text (sampled): (seconds to the first text, in all, completion tokens:
    the usage the server reports, or else its streamed pieces)."""
    body = {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0}
    if text_mode:
        path, body = "/v1/completions", {**body, "prompt": question, "temperature": 0.8, "seed": len(question)}
    else:
        path, body = "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": question}]}
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise UserError(f"the server answered {response.status}: {response.read()[:200]!r}")
    first, tokens, pieces = None, None, 0
    for line in response:
        event = json.loads(line[6:]) if line.startswith(b"data: {") else {}  # not a blank line, nor [DONE]
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        elif event.get("choices") and (event["choices"][0].get("text")
                                       or event["choices"][0].get("delta", {}).get("content")):
            pieces += 1
            first = time.perf_counter() - start if first is None else first
    conn.close()
    total = time.perf_counter() - start
    return (first if first is not None else total), total, tokens if tokens is not None else pieces


def run_load(host, port, questions, clients, seconds, max_tokens, text_mode):
    """clients threads streaming back to back for seconds, each question's max_tokens from the dict max_tokens:
    (tokens/s over all, TTFT list, requests)."""
    deadline = time.perf_counter() + seconds

    def client(k):  # asks questions k, k + clients, k + 2 * clients, ... until the time is up
        results, i = [], k
        while time.perf_counter() < deadline:
            question = questions[i % len(questions)]
            results.append(stream_one(host, port, question, max_tokens[question], text_mode))
            i += clients
        return results

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = [pool.submit(client, k) for k in range(clients)]
    elapsed = time.perf_counter() - start
    try:
        results = [r for run in runs for r in run.result()]
    except Exception as e:  # reported once all clients are done
        raise UserError(f"a client failed: {short_reason(e)}")
    return sum(r[2] for r in results) / elapsed, [r[0] for r in results], len(results)


def start_server(ckpt, max_batch):
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "serve.py"), "--ckpt", ckpt, "--port", "0",
                             "--max-batch", str(max_batch)], stdout=subprocess.PIPE, text=True)  # -u: unbuffered
    match = re.search(r"http://([\d.]+):(\d+)", proc.stdout.readline())
    if not match:
        proc.wait()
        raise UserError(f"serve.py did not start (exit {proc.returncode})")
    return proc, match.group(1), int(match.group(2))


def start_llama_cpp(gguf, context):
    """llama_cpp.server on gguf at a free local port, one model thread, every stream run to its end (its default
    cuts a running stream when the next request comes): (process, host, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", str(context), "--n_threads", "1", "--n_threads_batch",
                             "1", "--interrupt_requests", "False", "--verbose", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):  # up to a minute to load
        if proc.poll() is not None:
            raise UserError(f"llama_cpp.server did not start on {gguf} (exit {proc.returncode})")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/models")
            conn.getresponse().read()
            return proc, "127.0.0.1", port
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise UserError(f"llama_cpp.server did not answer within a minute on {gguf}")


def run_loads(name, host, port, questions, args, max_tokens):
    """Print a row per load of args.clients against one server."""
    stream_one(host, port, questions[0], 8, args.text)  # warm-up: the first pass pays for allocation
    print(f"{name}\n{'clients':>7} {'requests':>8} {'tokens/s':>9} {'vs 1':>6} {'TTFT median':>12} {'TTFT p95':>9}")
    base = None
    for n in args.clients:
        rate, ttft, requests = run_load(host, port, questions, n, args.seconds, max_tokens, args.text)
        base = base or rate
        p95 = statistics.quantiles(ttft, n=20)[-1] if len(ttft) > 1 else ttft[0]
        print(f"{n:>7} {requests:>8} {rate:>9,.0f} {rate / base:>5.1f}x {statistics.median(ttft) * 1000:>9.0f} ms "
              f"{p95 * 1000:>6.0f} ms", flush=True)


def main(argv=None):
    args = parse_args(argv)
    questions = [row["question"] for row in load_qa(args.qa, "test")]
    if not questions:
        raise UserError(f"{args.qa} has no test questions to ask")
    checkpoint = load_checkpoint(args.ckpt)  # its problems are one line here, not two behind serve.py's
    tokenizer = checked_tokenizer(checkpoint, args.ckpt)
    if checkpoint["model_type"] != "transformer":
        raise UserError(f"{args.ckpt} is a CharRNN: serve.py serves Transformer models only")
    if not (checkpoint.get("chat") or args.text):
        raise UserError(f"{args.ckpt} is a base model: the chat load needs a chat model (sft.py), or pass --text")
    context = checkpoint["model_config"]["block_size"]
    del checkpoint
    max_tokens = {q: args.max_tokens for q in questions}  # each question's, in every load
    if args.llama_cpp is not None:  # the answer's room after the question's prompt, as serve.py builds it
        for q in questions:
            ids = text_prompt(tokenizer, q, Sampling())[0] if args.text else build_prompt(tokenizer, [], q, context).ids
            max_tokens[q] = max(1, min(args.max_tokens, context - len(ids)))
    what = (f"text completions of {args.max_tokens} tokens" if args.text else
            f"greedy chat answers of at most {args.max_tokens} tokens")
    print(f"{args.ckpt}: {args.seconds:g} s per load, {what}")
    servers = [("serve.py", lambda: start_server(args.ckpt, max(args.clients)))]
    if args.llama_cpp is not None:
        servers.append((f"llama_cpp.server on {args.llama_cpp}", lambda: start_llama_cpp(args.llama_cpp, context)))
    for name, start in servers:
        proc, host, port = start()
        try:
            run_loads(name, host, port, questions, args, max_tokens)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    run_main(main)
