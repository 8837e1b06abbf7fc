#!/usr/bin/env python3
"""Inference for llama2.c checkpoints in Python + Numba: the command line of run.c.

    python run.py [model.bin] [-t temperature] [-p topp] [-s seed] [-n steps]
                  [-i prompt] [-z tokenizer] [-m generate|chat] [-y system_prompt]
                  [--fastmath | --no-fastmath] [--threads N] [--profile] [--eval FILE]

With --no-fastmath, stdout is byte-identical to llama2.c's run.c (runq.c for
int8 checkpoints) built with gcc -O3.
"""

import os
import re
import sys
import time

USAGE = """\
Usage:   python run.py [checkpoint] [options]
Example: python run.py model.bin -n 256 -i "Once upon a time"
Options:
  -t <float>  temperature in [0,inf], default 1.0
  -p <float>  p value in top-p (nucleus) sampling in [0,1] default 0.9
  -s <int>    random seed, default time(NULL)
  -n <int>    number of steps to run for, default 256. 0 = max_seq_len
  -i <string> input prompt
  -z <string> optional path to custom tokenizer
  -m <string> mode: generate|chat, default: generate
  -y <string> (optional) system prompt in chat mode
  --fastmath, --no-fastmath
              fast math on (default; like gcc -Ofast) or off (bit-exact with gcc -O3)
  --fastmath=unsafe
              only the flags of -funsafe-math-optimizations
  --threads <int>
              1 = serial kernels (a plain gcc build); N > 1 = N threads (the
              OpenMP build); default: all cores. Output does not depend on it.
  --no-mmap   read the checkpoint into memory instead of mapping it
  --profile [table|json]
              after generating, print per-kernel times to stderr
  --eval <file>
              print the model's average negative log-likelihood and perplexity
              on a text file (teacher-forced, windows of seq_len tokens)
  -h, --help  show this help
Without a checkpoint, the bundled demo model (demo/model.bin) runs.
"""


ROOT = os.path.dirname(os.path.abspath(__file__))
DEMO_MODEL = os.path.join(ROOT, "demo", "model.bin")
DEMO_TOKENIZER = os.path.join(ROOT, "demo", "tok512.bin")


class UsageError(Exception):
    """Bad command line; the message names the flag."""


# ----------------------------------------------------------------------------
# command line (parsed before numba is imported: it decides the compile mode)

_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity)\Z", re.I)


def _int(flag, s):
    if not _INT.match(s.strip()):
        raise UsageError(f"{flag} expects an integer, got {s!r}")
    v = int(s)
    if not -2**31 <= v < 2**31:
        raise UsageError(f"{flag} {s} is out of range for an int")
    return v


def _float(flag, s):
    if not _FLOAT.match(s.strip()):
        raise UsageError(f"{flag} expects a number, got {s!r}")
    return float(s)


def parse_args(argv):
    """Options as a dict, with run.c's defaults; raises UsageError."""
    o = dict(checkpoint=None, temperature=1.0, topp=0.9, seed=0, steps=256, prompt=None,
             tokenizer=None, mode="generate", system_prompt=None,
             fastmath="on", threads=0, mmap=True, profile=None, eval=None, help=False)
    short = {"-t": ("temperature", _float), "-p": ("topp", _float), "-s": ("seed", _int),
             "-n": ("steps", _int), "-i": ("prompt", None), "-z": ("tokenizer", None),
             "-m": ("mode", None), "-y": ("system_prompt", None)}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            o["help"] = True
        elif a == "--fastmath":
            o["fastmath"] = "on"
        elif a == "--no-fastmath":
            o["fastmath"] = "off"
        elif a.startswith("--fastmath="):
            v = a.split("=", 1)[1]
            if v not in ("off", "unsafe", "on"):
                raise UsageError(f"--fastmath={v}: expected off, unsafe or on")
            o["fastmath"] = v
        elif a == "--no-mmap":
            o["mmap"] = False
        elif a == "--eval":
            if i + 1 == len(argv):
                raise UsageError("--eval needs a text file")
            i += 1
            o["eval"] = argv[i]
        elif a == "--profile":
            o["profile"] = "table"
            if i + 1 < len(argv) and argv[i + 1] in ("table", "json"):
                i += 1
                o["profile"] = argv[i]
        elif a == "--threads" or a.startswith("--threads="):
            if "=" in a:
                v = a.split("=", 1)[1]
            else:
                i += 1
                if i == len(argv):
                    raise UsageError("--threads needs a value")
                v = argv[i]
            n = _int("--threads", v)
            if n < 1:
                raise UsageError(f"--threads must be at least 1, got {n}")
            o["threads"] = n
        elif a in short:
            if i + 1 == len(argv):
                raise UsageError(f"{a} needs a value")
            key, conv = short[a]
            i += 1
            o[key] = conv(a, argv[i]) if conv else argv[i]
        elif a.startswith("-") and a != "-":
            raise UsageError(f"unknown option {a}")
        elif o["checkpoint"] is None:
            o["checkpoint"] = a
        else:
            raise UsageError(f"unexpected argument {a!r} (the checkpoint is {o['checkpoint']!r})")
        i += 1
    if o["mode"] not in ("generate", "chat"):
        raise UsageError(f"unknown mode: {o['mode']} (-m generate|chat)")
    if o["profile"] and o["mode"] == "chat":
        raise UsageError("--profile works in generate mode only")
    return o


def _set_compile_mode(argv):
    """Pass --fastmath/--threads to model.py through the environment (before it is imported)."""
    try:
        o = parse_args(argv)
    except UsageError:
        return  # reported by main()
    os.environ["LLAMA2_FASTMATH"] = o["fastmath"]
    os.environ["LLAMA2_THREADS"] = str(o["threads"] or os.cpu_count() or 1)


if __name__ == "__main__":
    _set_compile_mode(sys.argv[1:])

import numpy as np  # noqa: E402

import model  # noqa: E402
from model import kernel  # noqa: E402
from tokenizer import BOS, EOS, Tokenizer, TokenizerError, printable  # noqa: E402

# ----------------------------------------------------------------------------
# the xorshift* random number generator (64-bit state)

_M64 = (1 << 64) - 1


def random_u32(state):
    """(new state, output): xorshift then the high 32 bits of state * 0x2545F4914F6CDD1D."""
    state ^= state >> 12
    state ^= (state << 25) & _M64
    state ^= state >> 27
    return state, ((state * 0x2545F4914F6CDD1D) & _M64) >> 32


def random_f32(state):
    """(new state, a float32 in [0, 1)) from the top 24 bits of random_u32."""
    state, u = random_u32(state)
    return state, np.float32((u >> 8) / 16777216.0)  # exact: 24 bits over 2^24


# ----------------------------------------------------------------------------
# sampling kernels (probabilities in float32, sums sequential as in run.c)

@kernel
def sample_argmax(probabilities):
    """Index of the largest value; the first one on ties."""
    max_i = 0
    max_p = probabilities[0]
    for i in range(1, probabilities.shape[0]):
        if probabilities[i] > max_p:
            max_i = i
            max_p = probabilities[i]
    return max_i


@kernel
def temperature_softmax(logits, temperature):
    """logits = softmax(logits / temperature), in place."""
    for i in range(logits.shape[0]):
        logits[i] /= temperature
    model.softmax(logits)


@kernel
def sample_mult(probabilities, coin):
    """First index whose running sum exceeds coin in [0, 1); the last on rounding."""
    cdf = np.float32(0.0)
    n = probabilities.shape[0]
    for i in range(n):
        cdf += probabilities[i]
        if coin < cdf:
            return i
    return n - 1


@kernel
def sort_by_prob_desc(index, n, probabilities, scratch, counts):
    """Sort index[:n] by probabilities[index] descending, stably (equal ones keep index order).

    A least-significant-digit radix sort over the float bits, three 11-bit
    digits: for positive floats bit order is value order, and each pass is
    stable, so this orders exactly like run.c's qsort (glibc's merge sort),
    in linear time. The result is left in index.
    """
    bits = probabilities.view(np.uint32)
    src, dst = index, scratch
    for shift in (0, 11, 22):
        counts[:] = 0
        for r in range(n):
            counts[0x7FF - ((bits[src[r]] >> shift) & 0x7FF)] += 1  # 0x7FF - d: descending
        total = 0
        for d in range(2048):
            c = counts[d]
            counts[d] = total
            total += c
        for r in range(n):
            d = 0x7FF - ((bits[src[r]] >> shift) & 0x7FF)
            dst[counts[d]] = src[r]
            counts[d] += 1
        src, dst = dst, src
    index[:n] = src[:n]  # three passes leave the result in scratch


@kernel
def sample_topp(probabilities, topp, coin, index, scratch, counts):
    """Sample among the smallest set of most likely tokens whose mass exceeds topp.

    Tokens under (1 - topp) / (n - 1) cannot be in that set and are dropped
    before sorting. index, scratch (int32, n) and counts (int64, 2048) are
    preallocated work buffers.
    """
    n = probabilities.shape[0]
    cutoff = (np.float32(1.0) - topp) / np.float32(n - 1)
    n0 = 0
    for i in range(n):
        if probabilities[i] >= cutoff:
            index[n0] = i
            n0 += 1
    sort_by_prob_desc(index, n0, probabilities, scratch, counts)
    cumulative = np.float32(0.0)
    last = n0 - 1
    for r in range(n0):
        cumulative += probabilities[index[r]]
        if cumulative > topp:
            last = r
            break
    target = coin * cumulative
    cdf = np.float32(0.0)
    for r in range(last + 1):
        cdf += probabilities[index[r]]
        if target < cdf:
            return index[r]
    return index[last]


class Sampler:
    """run.c's Sampler: greedy at temperature 0, else multinomial or top-p."""

    def __init__(self, vocab_size, temperature, topp, rng_seed):
        self.vocab_size = vocab_size
        self.temperature = np.float32(temperature)
        self.topp = np.float32(topp)
        self.rng_state = rng_seed
        self.index = np.zeros(vocab_size, np.int32)  # top-p work buffers (run.c's probindex)
        self.scratch = np.zeros(vocab_size, np.int32)
        self.counts = np.zeros(2048, np.int64)

    def sample(self, logits):
        """Next token id from logits (overwritten with probabilities when sampling)."""
        if self.temperature == 0:
            return int(sample_argmax(logits))
        temperature_softmax(logits, self.temperature)
        self.rng_state, coin = random_f32(self.rng_state)
        if self.topp <= 0 or self.topp >= 1:
            return int(sample_mult(logits, coin))
        return int(sample_topp(logits, self.topp, coin, self.index, self.scratch, self.counts))


# ----------------------------------------------------------------------------
# per-kernel profiler

class Profiler:
    """Charges wall time between tick() calls to named rows, with FLOPs and bytes per call."""

    def __init__(self, p, group_size=0):
        self.p = p
        # bytes per weight: float32, or int8 plus a float32 scale per group
        self.wb = 1 + 4 / group_size if group_size else 4
        self.rows = {}  # name -> [calls, seconds, flops, bytes]
        self.pos = 0
        self.last = time.perf_counter()

    def start(self, pos):
        self.pos = pos
        self.last = time.perf_counter()

    def tick(self, name):
        now = time.perf_counter()
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = [0, 0.0, 0, 0]
        flops, nbytes = self.cost(name)
        row[0] += 1
        row[1] += now - self.last
        row[2] += flops
        row[3] += nbytes
        self.last = now

    def cost(self, name):
        """(floating-point operations, bytes of weights or KV cache read) of one call."""
        p, t, wb = self.p, self.pos + 1, self.wb
        dim, hid, kv = p.dim, p.hidden_dim, p.kv_dim
        return {
            "embedding": (0, dim * 4),
            "rmsnorm": (3 * dim, dim * 4),
            "quantize": (0, 0),
            "q/k/v matmul": (2 * dim * (dim + 2 * kv), wb * dim * (dim + 2 * kv)),
            "RoPE": (6 * (dim + kv), 0),
            "attention scores": (2 * t * dim, 4 * t * kv),
            "attention softmax": (3 * t * p.n_heads, 0),
            "attention weighted sum": (2 * t * dim, 4 * t * kv),
            "output projection": (2 * dim * dim, wb * dim * dim),
            "residual": (dim, 0),
            "w1/w3 matmul": (4 * dim * hid, 2 * wb * dim * hid),
            "SwiGLU": (5 * hid, 0),
            "w2 matmul": (2 * dim * hid, wb * dim * hid),
            "classifier": (2 * dim * p.vocab_size, wb * dim * p.vocab_size),
        }.get(name, (0, 0))

    def report(self, tokens, seconds, plain_tok_s):
        """The table (or its JSON) as a dict: rows, totals and the profiling overhead."""
        total = sum(r[1] for r in self.rows.values())
        rows = []
        for name, (calls, sec, flops, nbytes) in sorted(self.rows.items(), key=lambda kv: -kv[1][1]):
            rows.append(dict(kernel=name, calls=calls, total_ms=sec * 1e3, share=sec / total,
                             us_per_call=sec / calls * 1e6,
                             gflops=flops / sec / 1e9 if sec else 0.0,
                             gbytes=nbytes / sec / 1e9 if sec else 0.0))
        return dict(tokens=tokens, measured_ms=seconds * 1e3, rows_ms=total * 1e3,
                    ms_per_token=seconds / tokens * 1e3 if tokens else 0.0,
                    tok_s_profiled=tokens / seconds if seconds else 0.0,
                    tok_s_plain=plain_tok_s, rows=rows)


def print_profile(r, fmt, file=sys.stderr):
    if fmt == "json":
        import json
        print(json.dumps(r, indent=1), file=file)
        return
    print(f"\nper-kernel profile over {r['tokens']} tokens (the first, with JIT warm-up, left out)", file=file)
    print(f"{'kernel':<24}{'calls':>8}{'total ms':>11}{'share':>8}{'us/call':>10}{'GFLOP/s':>9}{'GB/s':>8}",
          file=file)
    for row in r["rows"]:
        print(f"{row['kernel']:<24}{row['calls']:>8}{row['total_ms']:>11.2f}{row['share']:>8.1%}"
              f"{row['us_per_call']:>10.2f}{row['gflops']:>9.2f}{row['gbytes']:>8.2f}", file=file)
    overhead = r["tok_s_plain"] / r["tok_s_profiled"] - 1 if r["tok_s_profiled"] else 0.0
    print(f"{'sum of rows':<24}{'':>8}{r['rows_ms']:>11.2f}   (measured {r['measured_ms']:.2f} ms, "
          f"{r['ms_per_token']:.3f} ms/token)", file=file)
    print(f"tok/s: {r['tok_s_profiled']:.2f} profiled, {r['tok_s_plain']:.2f} without profiling "
          f"(overhead {overhead:+.1%})", file=file)


# ----------------------------------------------------------------------------
# generation and chat loops

def write(piece):
    out = sys.stdout.buffer
    out.write(printable(piece))
    out.flush()


def warm_up(transformer, sampler):
    """Compile (or load from the disk cache) every kernel; returns seconds taken.

    The throwaway forward writes the cache row of position 0, which the real
    position 0 overwrites before reading it.
    """
    t0 = time.perf_counter()
    logits = transformer.forward(0, 0).copy()
    sample_argmax(logits)
    temperature_softmax(logits, np.float32(1.0))
    sample_mult(logits, np.float32(0.5))
    sample_topp(logits, np.float32(0.9), np.float32(0.5), sampler.index, sampler.scratch, sampler.counts)
    return time.perf_counter() - t0


def generate(transformer, tokenizer, sampler, prompt, steps, profiler=None):
    """run.c's generate: feed the prompt, then sample until steps or BOS.

    Returns the tokens fed at positions 0, 1, ... (for the profiler's replay).
    """
    prompt_tokens = tokenizer.encode(prompt or b"", bos=True, eos=False)
    forward = transformer.forward
    tick = lambda name: None  # noqa: E731
    if profiler is not None:
        tick = profiler.tick
        forward = lambda token, pos: transformer.forward_profiled(token, pos, tick)  # noqa: E731
    fed = []
    start = None
    token = prompt_tokens[0]
    pos = 0
    while pos < steps:
        if profiler is not None:
            profiler.start(pos)
        logits = forward(token, pos)
        fed.append(token)
        if pos < len(prompt_tokens) - 1:
            next_token = prompt_tokens[pos + 1]
        else:
            next_token = sampler.sample(logits)
        tick("sampling")
        pos += 1
        if next_token == BOS:
            break
        write(tokenizer.decode(token, next_token))
        tick("decoding")
        token = next_token
        if start is None:
            start = time.perf_counter()
            if profiler is not None:
                profiler.rows.clear()  # the first step is left out, as in tok/s
    write(b"\n")
    if pos > 1 and start is not None:
        seconds = time.perf_counter() - start
        tok_s = (pos - 1) / seconds if seconds > 0 else float("inf")
        print("achieved tok/s: %f" % tok_s, file=sys.stderr)
        gb = transformer.bytes_per_token * tok_s / 1e9
        print("weights read: %.1f MB/token, %.2f GB/s" % (transformer.bytes_per_token / 1e6, gb),
              file=sys.stderr)
        if profiler is not None:
            profiler.seconds = seconds
    return fed


def replay(transformer, tokenizer, sampler, fed):
    """Tokens per second of the plain forward on the same tokens (the profiler's baseline)."""
    start = None
    for pos, token in enumerate(fed):
        logits = transformer.forward(token, pos)
        nxt = sampler.sample(logits)
        tokenizer.decode(token, nxt)
        if start is None:
            start = time.perf_counter()
    return (len(fed) - 1) / (time.perf_counter() - start) if len(fed) > 1 else 0.0


def read_stdin(guide):
    """Print guide, read one line (at most 511 bytes, like fgets into 512) without its newline.

    None at end of input.
    """
    write(guide.encode())
    line = sys.stdin.buffer.readline(511)
    if not line:
        return None
    return line[:-1] if line.endswith(b"\n") else line


def chat(transformer, tokenizer, sampler, cli_user_prompt, cli_system_prompt, steps):
    """run.c's chat loop with the Llama 2 chat template; ends at steps or end of input."""
    user_turn = True
    next_token = token = 0
    prompt_tokens, user_idx = [], 0
    system_prompt = b""
    pos = 0
    while pos < steps:
        if user_turn:
            if pos == 0:
                if cli_system_prompt is None:
                    system_prompt = read_stdin("Enter system prompt (optional): ") or b""
                else:
                    system_prompt = cli_system_prompt
            if pos == 0 and cli_user_prompt is not None:
                user_prompt = cli_user_prompt
            else:
                user_prompt = read_stdin("User: ")
                if user_prompt is None:
                    break  # end of input ends the conversation
            if pos == 0 and system_prompt:
                rendered = (b"[INST] <<SYS>>\n" + system_prompt + b"\n<</SYS>>\n\n"
                            + user_prompt + b" [/INST]")
            else:
                rendered = b"[INST] " + user_prompt + b" [/INST]"
            prompt_tokens = tokenizer.encode(rendered, bos=True, eos=False)
            user_idx = 0
            user_turn = False
            write(b"Assistant: ")

        if user_idx < len(prompt_tokens):
            token = prompt_tokens[user_idx]
            user_idx += 1
        else:
            token = next_token
        if token == EOS:
            user_turn = True

        logits = transformer.forward(token, pos)
        next_token = sampler.sample(logits)
        pos += 1

        if user_idx >= len(prompt_tokens) and next_token != EOS:
            write(tokenizer.decode(token, next_token))
        if next_token == EOS:
            write(b"\n")
    write(b"\n")


# ----------------------------------------------------------------------------
# evaluation: teacher-forced negative log-likelihood of a text

@kernel
def log_prob(logits, target):
    """log softmax(logits)[target]."""
    m = logits[0]
    for i in range(1, logits.shape[0]):
        m = max(m, logits[i])
    total = np.float32(0.0)
    for i in range(logits.shape[0]):
        total += model.exp(logits[i] - m)
    return (logits[target] - m) - np.log(total)


def evaluate(transformer, tokenizer, text, progress=True):
    """(targets, average NLL in nats) of text encoded with BOS.

    The tokens are cut into windows of seq_len inputs: window k feeds tokens
    k*seq_len .. at positions 0, 1, ... and predicts each next token, so every
    token after BOS is predicted exactly once (the way the demo model's
    training loss is computed).
    """
    tokens = tokenizer.encode(text, bos=True, eos=False)
    seq = transformer.config.seq_len
    n = len(tokens) - 1
    total, done, shown = 0.0, 0, -1
    show = progress and (n > 2000 or sys.stderr.isatty())
    t0 = time.perf_counter()
    for start in range(0, n, seq):
        for pos in range(min(seq, n - start)):
            logits = transformer.forward(tokens[start + pos], pos)
            total -= float(log_prob(logits, tokens[start + pos + 1]))
            done += 1
        pct = 100 * done // n
        if show and pct != shown:
            shown = pct
            bar = "#" * (pct // 4)
            rate = done / (time.perf_counter() - t0)
            print(f"\reval [{bar:<25}] {pct:3d}% {done}/{n} tokens, {rate:.0f} tok/s", end="", file=sys.stderr,
                  flush=True)
    if show:
        print(file=sys.stderr)
    return n, (total / n if n else float("nan"))


# ----------------------------------------------------------------------------
# main

def error(msg):
    print(f"run.py: error: {msg}", file=sys.stderr)
    return 1


def main(argv):
    try:
        o = parse_args(argv)
    except UsageError as e:
        return error(f"{e} (see python run.py -h)")
    if o["help"]:
        sys.stdout.write(USAGE)
        return 0
    if o["checkpoint"] is None:
        if not os.path.exists(DEMO_MODEL):
            sys.stderr.write(USAGE)
            return 1
        o["checkpoint"] = DEMO_MODEL
        if o["tokenizer"] is None:
            o["tokenizer"] = DEMO_TOKENIZER
        print("run.py: no checkpoint given, running the bundled demo model (demo/model.bin, trained on this "
              "project's story grammar); for the real TinyStories models see README, 'Models'", file=sys.stderr)
    if o["tokenizer"] is None:
        o["tokenizer"] = "tokenizer.bin"  # run.c's default: in the current directory

    # run.c's clamps
    seed = o["seed"] % 2**64  # atoi's int lands in an unsigned long long: -1 wraps
    if seed == 0:
        seed = int(time.time()) & 0xFFFFFFFF
    temperature = np.float32(o["temperature"])
    topp = np.float32(o["topp"])
    if temperature < 0:
        temperature = np.float32(0.0)
    if topp < 0 or topp > 1:
        topp = np.float32(0.9)
    steps = max(o["steps"], 0)

    try:
        runner = model.Transformer(o["checkpoint"], mmap=o["mmap"])
        p = runner.config
        if steps == 0 or steps > p.seq_len:
            steps = p.seq_len
        tok = Tokenizer(o["tokenizer"], p.vocab_size)
    except (model.CheckpointError, TokenizerError) as e:
        return error(str(e))
    sampler = Sampler(p.vocab_size, temperature, topp, seed)
    prompt = os.fsencode(o["prompt"]) if o["prompt"] is not None else None
    system_prompt = os.fsencode(o["system_prompt"]) if o["system_prompt"] is not None else None

    if o["eval"] is not None:
        try:
            with open(o["eval"], "rb") as f:
                text = f.read()
        except OSError as e:
            return error(f"cannot read --eval file {o['eval']}: {e.strerror}")
        try:
            n, nll = evaluate(runner, tok, text)
        except TokenizerError as e:
            return error(str(e))
        if n == 0:
            return error(f"--eval file {o['eval']} has no text to predict")
        print(f"{o['eval']}: {n} tokens, average negative log-likelihood {nll:.6f} nats/token, "
              f"perplexity {np.exp(nll):.4f}")
        return 0

    seconds = warm_up(runner, sampler)
    print(f"compile: {seconds:.2f} s (fastmath {model.FASTMATH}, {model.THREADS} "
          f"thread{'s' if model.THREADS > 1 else ''}, cache {model.CACHE_DIR})", file=sys.stderr)
    try:
        if o["mode"] == "generate" and o["profile"]:
            profiler = Profiler(p, runner.weights.group_size if runner.quantized else 0)
            fed = generate(runner, tok, sampler, prompt, steps, profiler)
            if len(fed) > 1:
                plain = replay(runner, tok, Sampler(p.vocab_size, temperature, topp, seed), fed)
                print_profile(profiler.report(len(fed) - 1, profiler.seconds, plain), o["profile"])
        elif o["mode"] == "generate":
            generate(runner, tok, sampler, prompt, steps)
        else:
            chat(runner, tok, sampler, prompt, system_prompt, steps)
    except TokenizerError as e:
        return error(str(e))
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. | head): stop quietly
        return 0
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
