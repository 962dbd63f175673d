"""The benchmarks behind `python timing.py MODE`, measured with timing.py's meter.

    step       (the default) median forward, backward and optimizer milliseconds
               per optimizer, tokens/s, GFLOP/s and MFU (see timing.py)
    generate   greedy batch-1 generation: ours with and without the KV cache
               against transformers' GPT-2 of the same shape, with the ceiling
               memory bandwidth puts on any batch-1 decoder
    hf         a GPT-2-small-shaped model converted both ways (time, memory),
               then its generation against transformers

transformers is a dev requirement, imported only by the modes that need it.
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

from device import DEVICE_CHOICES, check_fits_in_memory, choose_device
from errors import ArgumentParser, UserError
from optimizers import OPTIMIZER_NAMES, build_optimizer
from sampling import Sampling, generate_ids
from tokenizer import ENDOFTEXT
from timing import (StepTimer, best_seconds, count_flop_params, mfu, model_flops_per_token,
                    peak_flops, tokens_per_second)
from transformer import (ATTENTION_KINDS, DEFAULT_PARTS, GPT2_PARTS, MLP_KINDS, NORM_KINDS, POSITION_KINDS,
                         GPTConfig, Transformer, estimate_parameters)


# ------------------------------------------------------ timing a train step

def time_training_steps(model, optimizer, x, y, steps, warmup=2):
    """Time `warmup + steps` training steps on the batch (x, y).

    model(x, y) must return (logits, loss). Returns StepTimers for
    'forward', 'backward', 'optimizer' (step + zero_grad) and 'total'.
    """
    device = x.device
    fwd, bwd, opt, total = (StepTimer(device, warmup) for _ in range(4))
    model.train()
    for _ in range(warmup + steps):
        fwd.start()
        _, loss = model(x, y)
        seconds = fwd.stop()
        bwd.start()
        loss.backward()
        seconds += bwd.stop()
        opt.start()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += opt.stop()
        total.record(seconds)
    return {"forward": fwd, "backward": bwd, "optimizer": opt, "total": total}


# ------------------------------------------------------- timing generation

def matrix_weights(model):
    """How many weights a batch-1 decoding step reads: every Linear layer's (embeddings are one-row lookups)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def weight_read_seconds(n_weights, repeats):
    """Fastest seconds to read n_weights float32 numbers once, as one matrix-vector product.

    At batch 1 a decoding step multiplies every weight matrix by a single
    vector: it reads each weight once and does 2 FLOPs with it, so memory
    bandwidth, not arithmetic, sets the pace. This is that read alone, with
    no per-layer calls and nothing else to do: a ceiling no decoder beats.
    """
    cols = 1024
    weights = torch.randn(math.ceil(n_weights / cols), cols)
    vector = torch.randn(cols)
    torch.mv(weights, vector)  # warm-up
    return best_seconds(lambda: torch.mv(weights, vector), 20 * repeats)[0]


def generate_ours(model, prompt_ids, new_tokens, use_cache):
    """Greedy ids from our generation loop (sampling.generate_ids)."""
    settings = Sampling(max_new_tokens=new_tokens, temperature=0, use_cache=use_cache)
    return list(generate_ids(model, prompt_ids, settings))


def _transformers(who):
    """The transformers module, imported here: it is a dev requirement that only benchmarks need."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"{who} compares against Hugging Face transformers, which is not installed: "
                        f"pip install -r requirements-dev.txt") from None
    transformers.logging.set_verbosity_error()  # its notes about generation defaults are noise here
    return transformers


def build_hf_gpt2(n_layer, n_embd, n_head, block_size, vocab_size):
    """A randomly initialised transformers GPT2LMHeadModel of our shape, in eval mode.

    bos/eos are unset because GPT-2's defaults
    (50256) lie outside a small vocabulary; with no eos, generation never
    stops early.
    """
    transformers = _transformers("the generate benchmark (or pass --skip-transformers)")
    config = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                     n_positions=block_size, vocab_size=vocab_size,
                                     bos_token_id=None, eos_token_id=None)
    return transformers.GPT2LMHeadModel(config).eval()


def generate_hf(model, prompt_ids, new_tokens):
    """Greedy ids from transformers' generate() with its KV cache; exactly new_tokens of them."""
    x = torch.tensor([prompt_ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, use_cache=True,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    ids = out[0, len(prompt_ids):].tolist()
    if len(ids) != new_tokens:  # a shorter run would flatter its tokens/s
        raise RuntimeError(f"transformers generated {len(ids)} tokens, not {new_tokens}")
    return ids


def time_generation(generate, prompt_ids, new_tokens, long_prompt_ids, repeats):
    """Best seconds for generate(prompt_ids, new_tokens), and for the first token after long_prompt_ids.

    The first token costs a forward pass over the whole prompt (the prefill)
    and one sampling step. Returns (seconds, first_token_seconds, ids).
    """
    generate(prompt_ids, min(new_tokens, 4))  # warm-up: first calls pay for allocation
    seconds, ids = best_seconds(lambda: generate(prompt_ids, new_tokens), repeats)
    first, _ = best_seconds(lambda: generate(long_prompt_ids, 1), repeats)
    return seconds, first, ids


# ---------------------------------------------------------------------- CLI

def check_shape(args, sizes):
    """UserError for a size below 1, a seed out of range, or a model too big for this machine's memory."""
    for flag, value in sizes.items():
        if value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}")
    if not 0 <= args.seed < 2 ** 63:
        raise UserError(f"--seed must be in [0, 2**63), got {args.seed}")
    config = dict(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                  n_head=args.n_head, n_embd=args.n_embd)
    check_fits_in_memory(estimate_parameters("transformer", config), "cpu")


def cmd_step(args):
    """Print one row of step timings per optimizer."""
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZER_NAMES]
    if unknown or not names:
        what = f"unknown {', '.join(unknown)}" if unknown else "no names given"
        raise UserError(f"--optimizers: {what}; choose from {','.join(OPTIMIZER_NAMES)}")
    check_shape(args, dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                           block_size=args.block_size, batch_size=args.batch_size,
                           vocab_size=args.vocab_size, steps=args.steps))
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if not 0 < args.lr < math.inf:
        raise UserError(f"--lr must be a number > 0, got {args.lr}")
    device = choose_device(args.device)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size,
                       n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                       dropout=0.0, bias=False, attention=args.attention)
    g = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, args.block_size)
    x = torch.randint(args.vocab_size, shape, generator=g).to(device)
    y = torch.randint(args.vocab_size, shape, generator=g).to(device)
    tokens = args.batch_size * args.block_size

    peak = peak_flops(device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"measured peak {peak / 1e9:.1f} GFLOP/s (float32 matmul)")
    probe = Transformer(config)  # FLOPs per token do not depend on the optimizer
    fpt = model_flops_per_token(probe)
    print(f"{count_flop_params(probe) / 1e6:.2f}M params (excluding position embedding), "
          f"{fpt / 1e6:.1f} MFLOP/token, {tokens} tokens/step, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'optimizer':<12} {'fwd ms':>8} {'bwd ms':>8} {'opt ms':>8} {'step ms':>8} "
          f"{'p90 ms':>8} {'tok/s':>9} {'GFLOP/s':>8} {'MFU':>6}")
    for name in names:
        torch.manual_seed(args.seed)  # every row starts from the same weights
        model = Transformer(config).to(device)
        opt = build_optimizer(model, name, lr=args.lr, weight_decay=0.1)
        t = time_training_steps(model, opt, x, y, args.steps, args.warmup)
        step_s = t["total"].median_ms() / 1000
        tps = tokens_per_second(tokens, step_s)
        print(f"{name:<12} {t['forward'].median_ms():8.2f} {t['backward'].median_ms():8.2f} "
              f"{t['optimizer'].median_ms():8.2f} {1000 * step_s:8.2f} "
              f"{t['total'].p90_ms():8.2f} {tps:9.0f} {tps * fpt / 1e9:8.2f} "
              f"{mfu(tps, fpt, peak):6.1%}")
    return 0


def cmd_generate(args):
    """Print tokens/s and time to first token: ours with and without the cache, and transformers."""
    check_shape(args, dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                           block_size=args.block_size, vocab_size=args.vocab_size,
                           new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens,
                           repeats=args.repeats))
    # Every run must fit in the context: GPT-2 cannot go past n_positions, and
    # ours would start sliding its window, which is no longer the same work.
    if 1 + args.new_tokens > args.block_size:
        raise UserError(f"--new-tokens {args.new_tokens}: one prompt token plus the new ones "
                        f"must fit in --block-size {args.block_size}")
    if args.prompt_tokens + 1 > args.block_size:
        raise UserError(f"--prompt-tokens {args.prompt_tokens}: the prompt plus its first new "
                        f"token must fit in --block-size {args.block_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    shape = dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                 block_size=args.block_size, vocab_size=args.vocab_size)
    hf = None
    if not args.skip_transformers:
        torch.manual_seed(args.seed)
        hf = build_hf_gpt2(**shape)
    parts = dict(positions=args.positions, norm=args.norm, mlp=args.mlp)
    torch.manual_seed(args.seed)
    ours = Transformer(GPTConfig(**shape, dropout=0.0, bias=False, attention=args.attention, **parts)).eval()

    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(args.vocab_size, (1,), generator=g).tolist()
    long_prompt = torch.randint(args.vocab_size, (args.prompt_tokens,), generator=g).tolist()
    runs = [("ours, KV cache", lambda p, n: generate_ours(ours, p, n, use_cache=True)),
            ("ours, no cache", lambda p, n: generate_ours(ours, p, n, use_cache=False))]
    if parts != GPT2_PARTS:  # the same size with GPT-2's parts, b_lm's model before rotary positions
        torch.manual_seed(args.seed)
        gpt2_parts = Transformer(GPTConfig(**shape, dropout=0.0, bias=False, attention=args.attention)).eval()
        runs.append(("GPT-2 parts, cache", lambda p, n: generate_ours(gpt2_parts, p, n, use_cache=True)))
    if hf is not None:
        runs.append(("transformers GPT-2", lambda p, n: generate_hf(hf, p, n)))

    versions = f"torch {torch.__version__}"
    if hf is not None:
        import transformers
        versions += f", transformers {transformers.__version__}"
    threads = torch.get_num_threads()
    print(f"{args.n_layer} layers, {args.n_embd} wide, {args.n_head} heads, block {args.block_size}, "
          f"vocab {args.vocab_size}, {args.positions}/{args.norm}/{args.mlp}; batch 1, float32 on cpu, "
          f"{threads} thread{'s' * (threads > 1)}, "
          f"{versions}")
    params = f"ours {sum(p.numel() for p in ours.parameters()) / 1e6:.2f}M parameters"
    if hf is not None:
        params += (f", GPT-2 {sum(p.numel() for p in hf.parameters()) / 1e6:.2f}M "
                   f"(it adds biases and ties its embedding to the head)")
    print(params)
    print(f"greedy: {args.new_tokens} new tokens after a 1-token prompt; first token after a "
          f"prompt of {args.prompt_tokens}; best of {args.repeats} run{'s' * (args.repeats > 1)}")
    results = {}
    with torch.inference_mode():  # what generate_ids uses on the CPU; transformers gets it too
        for name, generate in runs:
            results[name] = time_generation(generate, prompt, args.new_tokens, long_prompt, args.repeats)
    base = results["transformers GPT-2"][0] if hf is not None else None
    print(f"{'':20} {'tok/s':>8} {'vs transformers':>16} {'first token ms':>15}")
    for name, (seconds, first, _) in results.items():
        ratio = f"{base / seconds:15.2f}x" if base is not None else f"{'-':>16}"
        print(f"{name:20} {tokens_per_second(args.new_tokens, seconds):8.1f} {ratio} "
              f"{1000 * first:15.1f}")
    same = results["ours, KV cache"][2] == results["ours, no cache"][2]
    print(f"ours with and without the cache gave the same {args.new_tokens} tokens: {same}")
    n_weights = matrix_weights(ours)
    read = weight_read_seconds(n_weights, args.repeats)
    ceiling = f"at most {1 / read:.0f} tokens/s"
    if base is not None:
        ceiling += f", {base / (read * args.new_tokens):.1f}x transformers"
    print(f"ceiling: each step reads all {n_weights / 1e6:.2f}M matrix weights ({4 * n_weights / 1e6:.1f} MB); "
          f"reading them once takes {1000 * read:.3f} ms here ({4 * n_weights / read / 1e9:.0f} GB/s), "
          f"so {ceiling}")
    return 0


def add_shape_flags(p, n_layer, n_embd, n_head, block_size):
    """Model shape flags, with each mode's own defaults."""
    p.add_argument("--n-layer", type=int, default=n_layer, help=f"transformer blocks (default {n_layer})")
    p.add_argument("--n-embd", type=int, default=n_embd, help=f"embedding width (default {n_embd})")
    p.add_argument("--n-head", type=int, default=n_head, help=f"attention heads (default {n_head})")
    p.add_argument("--block-size", type=int, default=block_size,
                   help=f"context length in tokens (default {block_size})")
    p.add_argument("--vocab-size", type=int, default=68,
                   help="vocabulary size; random tokens are drawn from it (default 68)")
    p.add_argument("--attention", default="sdpa", choices=ATTENTION_KINDS,
                   help="sdpa: F.scaled_dot_product_attention; explicit: matmul-softmax, "
                        "for DirectML (default sdpa)")
    p.add_argument("--seed", type=int, default=1337, help="seed for weights and tokens "
                   "(default 1337)")


def gpt2_shaped_folder(folder, seed, vocab_size=50257):
    """A GPT-2-small-shaped Hugging Face folder: random weights built by transformers, and a byte-level
    vocabulary of vocab_size tokens (our BPE trained on data.txt, topped up with merges of byte pairs)."""
    transformers = _transformers("timing.py hf")
    from bpe import train_bpe
    from hf import byte_to_unicode
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "data.txt"), encoding="utf-8") as f:
        merges = train_bpe(f.read(), vocab_size + 3).merges
    tokens = [bytes([b]) for b in range(256)]
    for a, b in merges:
        tokens.append(tokens[a] + tokens[b])
    known, pairs = set(tokens), [(tokens[a], tokens[b]) for a, b in merges]
    for a in range(256):  # more merges than a small corpus has pairs for: two-byte tokens it never made
        for b in range(256):
            if len(tokens) < vocab_size - 1 and bytes([a, b]) not in known:
                tokens.append(bytes([a, b]))
                pairs.append((bytes([a]), bytes([b])))
    alphabet = byte_to_unicode()
    text = ["".join(alphabet[x] for x in t) for t in tokens]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({**{t: i for i, t in enumerate(text)}, ENDOFTEXT: len(text)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(" ".join("".join(alphabet[x] for x in side) for side in pair) + "\n"
                                             for pair in pairs))
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                                     bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    return model


def run_measured(*argv):
    """(seconds, peak RSS in MB) of `python convert.py argv` in a fresh process (Linux: /proc)."""
    here = os.path.dirname(os.path.abspath(__file__))
    # VmHWM, not getrusage's ru_maxrss: Linux carries a parent's peak over into a child's ru_maxrss.
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('peak', [line.split()[1] for line in "
            "open('/proc/self/status') if line.startswith('VmHWM')][0], file=sys.stderr)); sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, os.path.join(here, "convert.py"), *argv],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise UserError(f"convert.py {argv[0]} failed: {done.stderr.strip().splitlines()[-1]}")
    return seconds, int(done.stderr.split("peak")[-1]) / 1024  # VmHWM is in kB


def cmd_hf(args):
    """Convert a GPT-2-small-shaped model both ways, then time batch-1 generation: ours against transformers."""
    from checkpoint import load_model
    from hf import read_tokenizer
    if not 0 <= args.seed < 2 ** 63 or args.new_tokens < 1 or args.prompt_tokens < 1 \
            or args.prompt_tokens + args.new_tokens > 1024:
        raise UserError("--new-tokens and --prompt-tokens must be >= 1 and fit in 1024 together; --seed >= 0")
    with tempfile.TemporaryDirectory() as tmp:
        folder, ckpt = os.path.join(tmp, "gpt2"), os.path.join(tmp, "gpt2.pth")
        os.makedirs(folder)
        theirs = gpt2_shaped_folder(folder, args.seed)
        megabytes = os.path.getsize(os.path.join(folder, "model.safetensors")) / 1e6
        import_s, import_mb = run_measured("from-hf", folder, ckpt)
        export_s, export_mb = run_measured("to-hf", ckpt, os.path.join(tmp, "back"))
        print(f"GPT-2-small shape (12 layers, 768 wide, block 1024, vocab 50257), {megabytes:.0f} MB of weights")
        print(f"from-hf {import_s:.1f} s, peak RSS {import_mb:.0f} MB; to-hf {export_s:.1f} s, peak RSS "
              f"{export_mb:.0f} MB ({max(import_mb, export_mb) / megabytes:.2f}x the weights)")
        ours, _, _ = load_model(ckpt)
        _, to_ours, _ = read_tokenizer(folder)
    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(50256, (args.prompt_tokens,), generator=g).tolist()
    runs = {"ours, KV cache": lambda: generate_ours(ours, [to_ours[i] for i in prompt], args.new_tokens, True),
            "transformers GPT-2": lambda: generate_hf(theirs, prompt, args.new_tokens)}
    with torch.inference_mode():  # best of two: the first run pays for allocation
        results = {name: best_seconds(run, 2) for name, run in runs.items()}
    same = results["ours, KV cache"][1] == [to_ours[i] for i in results["transformers GPT-2"][1]]
    base = results["transformers GPT-2"][0]
    ceiling = 1 / weight_read_seconds(matrix_weights(ours), 1)
    print(f"greedy, batch 1, {args.new_tokens} new tokens after {args.prompt_tokens}, "
          f"{torch.get_num_threads()} threads; the same tokens: {same}")
    for name, (seconds, _) in results.items():
        tps = tokens_per_second(args.new_tokens, seconds)
        print(f"{name:20} {tps:8.1f} tok/s {base / seconds:6.2f}x transformers {tps / ceiling:6.0%} of the "
              f"memory-bandwidth ceiling ({ceiling:.0f} tok/s)")
    return 0


MODES = ("step", "generate", "hf")


def build_parser():
    p = ArgumentParser(
        description="Time the model. Modes: 'step' (the default when no mode is given) times "
                    "training steps per optimizer and reports tokens/s, GFLOP/s and MFU; "
                    "'generate' times greedy generation against Hugging Face transformers. "
                    "See 'python %(prog)s MODE --help' for each mode's flags.")
    modes = p.add_subparsers(dest="mode", metavar="MODE")

    s = modes.add_parser("step", help="time training steps (the default mode)",
                         description="Time training steps (forward, backward, optimizer) for "
                                     "each optimizer and report tokens/s, GFLOP/s and MFU.")
    add_shape_flags(s, n_layer=4, n_embd=128, n_head=4, block_size=64)
    s.add_argument("--batch-size", type=int, default=12, help="sequences per step (default 12)")
    s.add_argument("--steps", type=int, default=10,
                   help="timed steps per optimizer, after warm-up (default 10)")
    s.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first, to pay one-off costs (default 3)")
    s.add_argument("--optimizers", default=",".join(OPTIMIZER_NAMES),
                   help=f"comma-separated names (default {','.join(OPTIMIZER_NAMES)})")
    s.add_argument("--lr", type=float, default=1e-3,
                   help="AdamW/Adam/SGD learning rate; timing does not depend on it "
                        "(default 1e-3)")
    s.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="auto tries cuda, mps, dml, then cpu (default auto)")
    s.set_defaults(func=cmd_step)

    g = modes.add_parser("generate", help="time generation against transformers' GPT-2",
                         description="Time greedy generation at batch 1, float32 on the CPU, "
                                     "random weights: ours with the KV cache, ours without it, "
                                     "and Hugging Face transformers' GPT2LMHeadModel.generate "
                                     "(with its cache) for the same shape. Reports new tokens "
                                     "per second and the time to the first token after a long "
                                     "prompt (the prefill plus one sampling step).")
    add_shape_flags(g, n_layer=6, n_embd=256, n_head=8, block_size=256)
    g.add_argument("--new-tokens", type=int, default=255,
                   help="tokens each run generates after a 1-token prompt; 1 + this must fit "
                        "in --block-size (default 255)")
    g.add_argument("--prompt-tokens", type=int, default=200,
                   help="prompt length for the time-to-first-token column (default 200)")
    g.add_argument("--repeats", type=int, default=3,
                   help="time each run this many times and keep the fastest (default 3)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: PyTorch's own choice)")
    g.add_argument("--skip-transformers", action="store_true",
                   help="time only our model (no transformers needed)")
    g.add_argument("--positions", default=DEFAULT_PARTS["positions"], choices=POSITION_KINDS,
                   help="position encoding of our model, as train.py's flag (default %(default)s)")
    g.add_argument("--norm", default=DEFAULT_PARTS["norm"], choices=NORM_KINDS,
                   help="normalisation of our model (default %(default)s)")
    g.add_argument("--mlp", default=DEFAULT_PARTS["mlp"], choices=MLP_KINDS,
                   help="MLP of our model (default %(default)s)")
    g.set_defaults(func=cmd_generate)

    h = modes.add_parser("hf", help="convert a GPT-2-small-shaped model both ways and time its generation",
                         description="Build a GPT-2-small-shaped model with transformers (random weights), "
                                     "convert it to b_lm and back (time and peak memory of each), and time "
                                     "batch-1 greedy generation: ours with the KV cache against transformers.")
    h.add_argument("--new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    h.add_argument("--prompt-tokens", type=int, default=100, help="prompt length (default 100)")
    h.add_argument("--seed", type=int, default=1337, help="seed for weights and prompt (default 1337)")
    h.set_defaults(func=cmd_hf)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # No mode named: the step table, so 'python benchmark.py --steps 5' keeps working.
    if not argv or argv[0] not in (*MODES, "-h", "--help"):
        argv = ["step", *argv]
    args = build_parser().parse_args(argv)
    return args.func(args)
