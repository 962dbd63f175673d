"""Serve a model to a browser and to any OpenAI client, several people at once.

    python serve.py --ckpt chat.pth                 # then open http://127.0.0.1:8000
    python serve.py --ckpt chat.pth --port 9000 --api-key secret
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import ipaddress
import os
import socket
import sys

import torch

from checkpoint import load_model
from device import check_fits_in_memory, choose_device
from errors import ArgumentParser, UserError, run_main
from flags import add_flag, ckpt_setting, device_setting
from sampling import supports_cache
from serving import BatchedGenerator


def parse_args(argv=None):
    p = ArgumentParser(description="Serve a b_lm model: a chat page at / and the OpenAI API under /v1.")
    a = p.add_argument
    add_flag(p, "ckpt", ckpt_setting("chat.pth", "checkpoint to serve"))
    a("--host", default="127.0.0.1",
      help="address to listen on; 0.0.0.0 opens the server to your network (default: %(default)s)")
    a("--port", type=int, default=8000, help="port, 0 to 65535; 0 picks a free one (default: %(default)s)")
    a("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every API request (default: none)")
    a("--max-batch", type=int, default=16, help="generations decoded together in one forward pass, in [1, 4096]; "
                                               "more wait their turn (default: %(default)s)")
    a("--threads", type=int, default=1, help="CPU threads for the model, in [1, 256]: one suits small models, whose "
      "decoding steps are too small to share out, and leaves the other cores to the HTTP side (default: %(default)s)")
    a("--name", default=None, help="the model's name in the API (default: the checkpoint's file name, no suffix)")
    add_flag(p, "device", device_setting())
    args = p.parse_args(argv)
    for flag, low, high in [("--port", 0, 65535), ("--threads", 1, 256), ("--max-batch", 1, 4096)]:
        value = getattr(args, flag[2:].replace("-", "_"))
        if not low <= value <= high:
            raise UserError(f"{flag} must be in [{low}, {high}], got {value}")
    if args.api_key is not None and not args.api_key.strip():
        raise UserError("--api-key must not be empty")
    return args


def listening_socket(host, port):
    """Bind the server's socket now, so a taken port or a bad address is one clear line before loading."""
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # clients that connect before the server starts accepting wait in the backlog
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}")
    return sock


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv=None):
    args = parse_args(argv)
    sock = listening_socket(args.host, args.port)
    torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    model, tokenizer, checkpoint = load_model(args.ckpt, device)
    if not supports_cache(model):
        raise UserError(f"{args.ckpt} is a CharRNN: serve.py batches Transformer models only "
                        f"(use generate.py or interactive_generate.py for it)")
    c = model.config  # the shared cache holds keys and values of every slot's whole context
    cache_bytes = 2 * c.n_layer * args.max_batch * c.block_size * c.n_embd * 4
    check_fits_in_memory(0, device, cache_bytes, f"the key/value cache of --max-batch {args.max_batch}")
    import uvicorn  # here, not at the top: --help and bad flags stay fast
    from openai_api import create_app
    model.eval()
    name = args.name or os.path.splitext(os.path.basename(args.ckpt))[0]
    chat_model = bool(checkpoint.get("chat", False))
    app = create_app(BatchedGenerator(model, args.max_batch), tokenizer, name, model.config.block_size, chat_model,
                     args.api_key)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    what = "the chat page and the OpenAI API" if chat_model else "/v1/completions (a base model: no chat)"
    print(f"serving {args.ckpt} as {name!r}: {what} at {url}", flush=True)
    if not is_loopback(args.host) and args.api_key is None:
        print(f"warning: listening on {args.host} with no --api-key: anyone who can reach this machine "
              f"can use the model", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)).run(sockets=[sock])


if __name__ == "__main__":
    run_main(main)
