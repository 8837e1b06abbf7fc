#!/usr/bin/env python3
"""Inference for llama2.c checkpoints in Python + Numba: the command line of run.c.

    python run.py [model.bin] [-t temperature] [-p topp] [-s seed] [-n steps]
                  [-i prompt] [-z tokenizer] [-m generate|chat] [-y system_prompt]
                  [--fastmath | --no-fastmath] [--threads N] [--profile] [--eval FILE]
                  [--context-shift] [--keep N]

With --no-fastmath, stdout is byte-identical to llama2.c's run.c (runq.c for
int8 checkpoints) built with gcc -O3.
"""

import os
import signal
import sys


def _interrupted(signum, frame):
    raise SystemExit(130)  # Ctrl-C: quiet exit, no traceback, whatever is running (import, compile, generation)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupted)

import re  # noqa: E402
import time  # noqa: E402

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
              what -funsafe-math-optimizations allows: reassociated sums and FMA, the C library's expf
  --threads <int>
              1 = serial kernels (a plain gcc build); N > 1 = N threads (the
              OpenMP build); default: all cores. Output does not depend on it.
  --no-mmap   read the checkpoint into memory instead of mapping it
  --profile [table|json=FILE]
              after generating, per-kernel times of the prompt and of the
              generated tokens: a table on stderr, or JSON written to FILE
  --eval <file>
              print the model's average negative log-likelihood and perplexity
              on a text file (teacher-forced, windows of seq_len tokens)
  --context-shift
              let -n go beyond seq_len: when the context is full, keep the
              first --keep tokens, drop the oldest half of the rest, re-encode
  --keep <int>
              tokens kept at a context shift (default: BOS and the prompt, or
              the chat's system prompt, at most half the context)
  -h, --help  show this help
Without a checkpoint, the bundled demo model (demo/model.bin) runs.
"""


ROOT = os.path.dirname(os.path.abspath(__file__))
DEMO_MODEL = os.path.join(ROOT, "demo", "model.bin")
DEMO_TOKENIZER = os.path.join(ROOT, "demo", "tok512.bin")
PREFILL_ROWS = 64  # prompt tokens per forward pass


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


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_args(argv):
    """Options as a dict, with run.c's defaults; raises UsageError."""
    o = dict(checkpoint=None, temperature=1.0, topp=0.9, seed=0, steps=256, prompt=None,
             tokenizer=None, mode="generate", system_prompt=None,
             fastmath="on", threads=0, mmap=True, profile=None, profile_file=None, eval=None,
             context_shift=False, keep=None, help=False)
    short = {"-t": ("temperature", _float), "-p": ("topp", _float), "-s": ("seed", _int),
             "-n": ("steps", _int), "-i": ("prompt", None), "-z": ("tokenizer", None),
             "-m": ("mode", None), "-y": ("system_prompt", None)}
    i = 0

    def value(flag):
        nonlocal i
        if "=" in argv[i] and argv[i].startswith("--"):
            return argv[i].split("=", 1)[1]
        i += 1
        if i == len(argv):
            raise UsageError(f"{flag} needs a value")
        return argv[i]

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
        elif a == "--context-shift":
            o["context_shift"] = True
        elif a == "--keep" or a.startswith("--keep="):
            o["keep"] = _int("--keep", value("--keep"))
            if o["keep"] < 1:
                raise UsageError(f"--keep must be at least 1 (BOS), got {o['keep']}")
        elif a == "--eval":
            if i + 1 == len(argv):
                raise UsageError("--eval needs a text file")
            i += 1
            o["eval"] = argv[i]
        elif a == "--profile" or a.startswith("--profile="):
            o["profile"] = "table"
            v = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            if v == "table" or v.startswith("json"):
                if "=" not in a:
                    i += 1
                if v == "json":
                    raise UsageError("--profile json needs a file to write: --profile json=FILE")
                if v.startswith("json="):
                    o["profile"], o["profile_file"] = "json", v[5:]
                    if not o["profile_file"]:
                        raise UsageError("--profile json=FILE: the file name is empty")
            elif "=" in a:
                raise UsageError(f"--profile {v}: expected table or json=FILE")
        elif a == "--threads" or a.startswith("--threads="):
            n = _int("--threads", value("--threads"))
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
    if o["keep"] is not None and not o["context_shift"]:
        raise UsageError("--keep applies to --context-shift, which is not given")
    if 0 < o["temperature"] < 1e-30:
        raise UsageError(f"-t {o['temperature']:g}: a temperature this close to 0 overflows float32 logits; "
                         "-t 0 samples greedily")
    return o


def _set_compile_mode(argv):
    """Pass --fastmath/--threads to jit.py through the environment (before numba is imported)."""
    try:
        o = parse_args(argv)
    except UsageError:
        return  # reported by main()
    cores = available_cores()
    threads = o["threads"] or cores
    if threads > cores:
        print(f"run.py: --threads {threads} is more than the {cores} cores this process may use; using {cores}",
              file=sys.stderr)
        threads = cores
    os.environ["LLAMA2_FASTMATH"] = o["fastmath"]
    os.environ["LLAMA2_THREADS"] = str(threads)


if __name__ == "__main__":
    _set_compile_mode(sys.argv[1:])

import numpy as np  # noqa: E402

import jit  # noqa: E402
import model  # noqa: E402
from jit import kernel  # noqa: E402
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
# the per-kernel profile (the rows are timed inside model.forward itself)

def profile_report(prof, tokens, seconds):
    """The profile of one phase as a dict: rows, totals, tokens per second."""
    rows = prof.rows()
    timed = sum(r[2] for r in rows)
    if seconds > timed:  # the loop's own Python code, and the profile's bookkeeping
        rows.append(("rest of the loop (Python)", 1, seconds - timed, 0.0, 0.0))
    total = sum(r[2] for r in rows)
    return dict(tokens=tokens, measured_ms=seconds * 1e3, rows_ms=total * 1e3, timed_ms=timed * 1e3,
                ms_per_token=seconds / tokens * 1e3 if tokens else 0.0,
                tok_s=tokens / seconds if seconds else 0.0,
                rows=[dict(kernel=name, calls=calls, total_ms=sec * 1e3, share=sec / total if total else 0.0,
                           us_per_call=sec / calls * 1e6 if calls else 0.0,
                           gflops=flops / sec / 1e9 if sec else 0.0, gbytes=nbytes / sec / 1e9 if sec else 0.0)
                      for name, calls, sec, flops, nbytes in rows])


def print_profile(title, r, file=sys.stderr):
    print(f"\n{title}: {r['tokens']} tokens, {r['ms_per_token']:.3f} ms/token, {r['tok_s']:.2f} tok/s", file=file)
    print(f"{'kernel':<24}{'calls':>8}{'total ms':>11}{'share':>8}{'us/call':>10}{'GFLOP/s':>9}{'GB/s':>8}",
          file=file)
    for row in r["rows"]:
        print(f"{row['kernel']:<24}{row['calls']:>8}{row['total_ms']:>11.2f}{row['share']:>8.1%}"
              f"{row['us_per_call']:>10.2f}{row['gflops']:>9.2f}{row['gbytes']:>8.2f}", file=file)
    print(f"{'sum of rows':<24}{'':>8}{r['rows_ms']:>11.2f}   (measured {r['measured_ms']:.2f} ms)", file=file)


# ----------------------------------------------------------------------------
# output

class Output:
    """stdout as bytes, flushed at every piece as run.c's fflush does."""

    def __init__(self, stream=None):
        self.out = stream or sys.stdout.buffer

    def write(self, piece):
        self.out.write(piece)
        self.out.flush()


# ----------------------------------------------------------------------------
# a sequence's context: the tokens at its positions, and shifting when full

class Context:
    """Positions 0..len(tokens)-1 of one sequence of the KV cache, and what was fed at each.

    feed() runs tokens through the model at the next positions. With
    `shift`, a full context keeps its first `keep` tokens, drops the oldest
    half of the rest and re-encodes what is left (a fresh run on the kept
    window: bit-identical state in strict mode), then goes on.
    """

    def __init__(self, transformer, seq=0, shift=False, keep=1):
        self.t, self.seq, self.shift, self.keep = transformer, seq, shift, keep
        self.seq_len = transformer.config.seq_len
        self.tokens = []
        self.shifts = []  # seconds each shift took

    @property
    def pos(self):
        return len(self.tokens)

    def full(self):
        return self.pos == self.seq_len

    def make_room(self):
        keep = min(self.keep, self.seq_len // 2)
        rest = self.tokens[keep:]
        kept = self.tokens[:keep] + rest[len(rest) // 2:]
        t0 = time.perf_counter()
        self.tokens = []
        self.feed(kept, logits=None)
        self.shifts.append(time.perf_counter() - t0)

    def feed(self, tokens, logits="last", on_logits=None):
        """Feed tokens at the next positions (shifting when full); the last logits, or on_logits(i, chunk)."""
        last, i = None, 0
        while i < len(tokens):
            if self.full():
                self.make_room()
            m = min(len(tokens) - i, self.seq_len - self.pos)
            part = tokens[i:i + m]
            want = logits if logits != "last" or i + m == len(tokens) else None
            cb = (lambda j, chunk, i=i: on_logits(i + j, chunk)) if want == "all" else None
            out = self.t.prefill(part, self.pos, self.seq, logits=want, on_logits=cb)
            self.tokens += list(part)
            last = out if out is not None else last
            i += m
        return last

    def step(self, token):
        """Logits of one more token."""
        if self.full():
            self.make_room()
        logits = self.t.forward(token, self.pos, self.seq)
        self.tokens.append(token)
        return logits


# ----------------------------------------------------------------------------
# generation and chat loops

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


def report_speed(transformer, n_prompt, prompt_seconds, generated, gen_seconds, ctx):
    """The stderr lines: prompt speed, run.c's `achieved tok/s` (tokens after the first), bandwidth, shifts."""
    if n_prompt > 1 and prompt_seconds > 0:
        print(f"prompt: {n_prompt} tokens in {prompt_seconds * 1e3:.1f} ms, {n_prompt / prompt_seconds:.2f} tok/s",
              file=sys.stderr)
    if generated > 0 and gen_seconds > 0:
        tok_s = generated / gen_seconds
        print("achieved tok/s: %f" % tok_s, file=sys.stderr)
        print("weights read: %.1f MB/token, %.2f GB/s" % (transformer.bytes_per_token / 1e6,
                                                           transformer.bytes_per_token * tok_s / 1e9), file=sys.stderr)
    if ctx.shifts:
        print(f"context shifts: {len(ctx.shifts)}, {1e3 * float(np.median(ctx.shifts)):.1f} ms each (median), "
              f"keeping {min(ctx.keep, ctx.seq_len // 2)} tokens", file=sys.stderr)


def generate(transformer, tokenizer, sampler, prompt, steps, out, shift=False, keep=None, profiles=None):
    """run.c's generate: feed the prompt (in one pass), then sample until steps or BOS.

    profiles: (prompt Profile, generation Profile) to record into, or None.
    Returns (prompt tokens, prompt seconds, generated tokens after the first, their seconds).
    """
    prompt_tokens = tokenizer.encode(prompt or b"", bos=True, eos=False)
    n_prompt = len(prompt_tokens)
    ctx = Context(transformer, 0, shift, keep if keep is not None else n_prompt)
    # run.c feeds prompt token pos at position pos and samples from position n_prompt - 1 on
    fed = min(n_prompt, steps)
    transformer.profile = profiles[0] if profiles else None
    t0 = time.perf_counter()
    logits = ctx.feed(prompt_tokens[:fed], logits="last" if fed == n_prompt else None)
    prompt_seconds = time.perf_counter() - t0
    transformer.profile = profiles[1] if profiles else None
    for pos in range(min(fed, n_prompt - 1)):
        if prompt_tokens[pos + 1] == BOS:
            out.write(b"\n")
            return n_prompt, prompt_seconds, 0, 0.0
        out.write(printable(tokenizer.decode(prompt_tokens[pos], prompt_tokens[pos + 1])))
    pos, generated, start = fed, 0, None
    timed = profiles[1] if profiles else None
    if fed == n_prompt:
        token = prompt_tokens[-1]
        while True:
            t_s = time.perf_counter()
            next_token = sampler.sample(logits)
            t_d = time.perf_counter()
            if next_token == BOS:
                break
            out.write(printable(tokenizer.decode(token, next_token)))
            if timed and start is not None:
                timed.add("sampling", t_d - t_s)
                timed.add("decoding and output", time.perf_counter() - t_d)
            token = next_token
            if start is None:
                start = time.perf_counter()  # run.c's clock starts after the first step
            if pos >= steps:
                break
            logits = ctx.step(token)
            pos += 1
            generated += 1
    out.write(b"\n")
    gen_seconds = time.perf_counter() - start if start is not None else 0.0
    report_speed(transformer, n_prompt, prompt_seconds, generated, gen_seconds, ctx)
    return n_prompt, prompt_seconds, generated, gen_seconds


def read_stdin(out, guide):
    """Print guide, read one line (at most 511 bytes, like fgets into 512) without its newline.

    None at end of input.
    """
    out.write(guide.encode())
    line = sys.stdin.buffer.readline(511)
    if not line:
        return None
    return line[:-1] if line.endswith(b"\n") else line


def chat(transformer, tokenizer, sampler, cli_user_prompt, cli_system_prompt, steps, out, shift=False, keep=None):
    """run.c's chat loop with the Llama 2 chat template; ends at steps or end of input.

    Each turn's prompt goes through the model in one pass. run.c samples at
    every prompt position too (printing a newline when the sample is EOS), so
    the logits of every prompt position are computed and sampled alike.
    """
    ctx = Context(transformer, 0, shift, keep or 1)
    user_turn = True
    next_token = token = 0
    prompt_tokens, user_idx = [], 0
    system_prompt = b""
    pos = 0
    while pos < steps:
        if user_turn:
            if pos == 0:
                if cli_system_prompt is None:
                    system_prompt = read_stdin(out, "Enter system prompt (optional): ") or b""
                else:
                    system_prompt = cli_system_prompt
            if pos == 0 and cli_user_prompt is not None:
                user_prompt = cli_user_prompt
            else:
                user_prompt = read_stdin(out, "User: ")
                if user_prompt is None:
                    break  # end of input ends the conversation
            if pos == 0 and system_prompt:
                head = b"[INST] <<SYS>>\n" + system_prompt + b"\n<</SYS>>\n\n"
                rendered = head + user_prompt + b" [/INST]"
                if keep is None:
                    ctx.keep = len(tokenizer.encode(head, bos=True, eos=False))
            else:
                rendered = b"[INST] " + user_prompt + b" [/INST]"
            prompt_tokens = tokenizer.encode(rendered, bos=True, eos=False)
            user_idx = 0
            user_turn = False
            out.write(b"Assistant: ")

        if user_idx < len(prompt_tokens):
            chunk = prompt_tokens[user_idx:user_idx + (steps - pos)]
            samples = []

            def each(i, rows):
                for row in rows:
                    samples.append(sampler.sample(row))
            ctx.feed(chunk, logits="all", on_logits=each)
            for token, next_token in zip(chunk, samples):
                user_idx += 1
                if token == EOS:
                    user_turn = True
                pos += 1
                if user_idx >= len(prompt_tokens) and next_token != EOS:
                    out.write(printable(tokenizer.decode(token, next_token)))
                if next_token == EOS:
                    out.write(b"\n")
            continue

        token = next_token
        if token == EOS:
            user_turn = True
        logits = ctx.step(token)
        next_token = sampler.sample(logits)
        pos += 1
        if next_token != EOS:
            out.write(printable(tokenizer.decode(token, next_token)))
        else:
            out.write(b"\n")
    out.write(b"\n")


# ----------------------------------------------------------------------------
# evaluation: teacher-forced negative log-likelihood of a text

@kernel
def log_probs(logits, targets, out):
    """out[r] = log softmax(logits[r])[targets[r]] for every row."""
    for r in range(logits.shape[0]):
        row = logits[r]
        m = row[0]
        for i in range(1, row.shape[0]):
            m = max(m, row[i])
        total = np.float32(0.0)
        for i in range(row.shape[0]):
            total += model.exp(row[i] - m)
        out[r] = (row[targets[r]] - m) - np.log(total)


def evaluate(transformer, tokenizer, text, progress=True, shift=False, keep=1):
    """(targets, average NLL in nats) of text encoded with BOS.

    Without shift the tokens are cut into windows of seq_len inputs: window
    k feeds tokens k*seq_len .. at positions 0, 1, ... and predicts each next
    token, so every token after BOS is predicted exactly once (the way the
    demo model's training loss is computed). With shift the text goes through
    one context that shifts when full (--context-shift), so later tokens keep
    the first `keep` tokens and half a window of history in view.
    """
    tokens = np.asarray(tokenizer.encode(text, bos=True, eos=False), np.int32)
    seq = transformer.config.seq_len
    n = len(tokens) - 1
    total, done, shown = 0.0, 0, -1
    show = progress and (n > 2000 or sys.stderr.isatty())
    lp = np.zeros(transformer.rows, np.float32)
    t0 = time.perf_counter()

    def score(i, rows, start=0):
        nonlocal total, done, shown
        m = len(rows)
        log_probs(rows, tokens[start + i + 1:start + i + 1 + m], lp[:m])
        total -= float(np.sum(lp[:m], dtype=np.float64))
        done += m
        pct = 100 * done // n
        if show and pct != shown:
            shown = pct
            rate = done / (time.perf_counter() - t0)
            print(f"\reval [{'#' * (pct // 4):<25}] {pct:3d}% {done}/{n} tokens, {rate:.0f} tok/s", end="",
                  file=sys.stderr, flush=True)

    if shift:
        Context(transformer, 0, True, keep).feed(tokens[:-1], logits="all", on_logits=score)
    else:
        for start in range(0, n, seq):
            window = tokens[start:start + min(seq, n - start)]
            transformer.prefill(window, 0, 0, logits="all", on_logits=lambda i, rows, s=start: score(i, rows, s))
    if show:
        print(file=sys.stderr)
    return n, (total / n if n else float("nan"))


# ----------------------------------------------------------------------------
# main

def error(msg):
    print(f"run.py: error: {msg}", file=sys.stderr)
    return 1


def _float32(v):
    """v as a float32; beyond float32's range it is inf, as C's (float) cast gives, without numpy's warning."""
    with np.errstate(over="ignore"):
        return np.float32(v)


def main(argv):
    try:
        o = parse_args(argv)
    except UsageError as e:
        return error(f"{e} (see python run.py -h)")
    if o["help"]:
        sys.stdout.write(USAGE)
        return 0
    if sys.stdout is None:
        return error("stdout is closed; the text has nowhere to go")
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
    if jit.CACHE_WARNING:
        print(f"run.py: warning: {jit.CACHE_WARNING}", file=sys.stderr)

    # run.c's clamps
    seed = o["seed"] % 2**64  # atoi's int lands in an unsigned long long: -1 wraps
    if seed == 0:
        seed = int(time.time()) & 0xFFFFFFFF
    temperature = _float32(o["temperature"])
    topp = _float32(o["topp"])
    if temperature < 0:
        temperature = np.float32(0.0)
    if topp < 0 or topp > 1:
        topp = np.float32(0.9)
    steps = max(o["steps"], 0)

    try:
        runner = model.Transformer(o["checkpoint"], mmap=o["mmap"], rows=PREFILL_ROWS)
        p = runner.config
        if steps == 0 or (steps > p.seq_len and not o["context_shift"]):
            steps = p.seq_len
        if o["keep"] is not None and o["keep"] > p.seq_len // 2:
            return error(f"--keep {o['keep']} is more than half the context ({p.seq_len} positions): "
                         "a shift would drop too little to be worth its re-encoding")
        tok = Tokenizer(o["tokenizer"], p.vocab_size)
    except (model.CheckpointError, TokenizerError) as e:
        return error(str(e))
    sampler = Sampler(p.vocab_size, temperature, topp, seed)
    prompt = os.fsencode(o["prompt"]) if o["prompt"] is not None else None
    system_prompt = os.fsencode(o["system_prompt"]) if o["system_prompt"] is not None else None
    out = Output()

    try:
        if o["eval"] is not None:
            try:
                with open(o["eval"], "rb") as f:
                    text = f.read()
            except OSError as e:
                return error(f"cannot read --eval file {o['eval']}: {e.strerror}")
            n, nll = evaluate(runner, tok, text, shift=o["context_shift"], keep=o["keep"] or 1)
            if n == 0:
                return error(f"--eval file {o['eval']} has no text to predict")
            out.write(f"{o['eval']}: {n} tokens, average negative log-likelihood {nll:.6f} nats/token, "
                      f"perplexity {np.exp(nll):.4f}\n".encode())
            return 0

        seconds = warm_up(runner, sampler)
        print(f"compile: {seconds:.2f} s ({jit.describe()})", file=sys.stderr)
        if o["mode"] == "generate":
            profiles = None
            if o["profile"]:
                gs = runner.weights.group_size if runner.quantized else 0
                profiles = (model.Profile(p, gs), model.Profile(p, gs))
            n_prompt, t_prompt, generated, t_gen = generate(runner, tok, sampler, prompt, steps, out,
                                                            o["context_shift"], o["keep"], profiles)
            if profiles:
                reports = {"prompt": profile_report(profiles[0], n_prompt, t_prompt),
                           "generation": profile_report(profiles[1], generated, t_gen)}
                if o["profile"] == "json":
                    import json
                    try:
                        with open(o["profile_file"], "w") as f:
                            json.dump(reports, f, indent=1)
                    except OSError as e:
                        return error(f"cannot write --profile json={o['profile_file']}: {e.strerror}")
                else:
                    print_profile("per-kernel profile of the prompt (one pass)", reports["prompt"])
                    print_profile("per-kernel profile of generation (the first token left out, as in tok/s)",
                                  reports["generation"])
        else:
            chat(runner, tok, sampler, prompt, system_prompt, steps, out, o["context_shift"], o["keep"])
    except TokenizerError as e:
        return error(str(e))
    except BrokenPipeError:
        _quiet_stdout()
        return 0  # the reader went away (e.g. | head): stop quietly
    except OSError as e:
        _quiet_stdout()
        return error(f"cannot write to stdout: {e.strerror or e}")
    return 0


def _quiet_stdout():
    """After a failed write, point stdout at /dev/null so Python's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
