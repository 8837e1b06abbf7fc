#!/usr/bin/env python3
"""Inference for llama2.c checkpoints in Python + Numba: the command line of run.c.

    python run.py [model.bin] [-t temperature] [-p topp] [-s seed] [-n steps]
                  [-i prompt] [-z tokenizer] [-m generate|chat] [-y system_prompt]
                  [--fastmath | --no-fastmath] [--threads N] [--profile] [--eval FILE]
                  [--context-shift[=kshift]] [--keep N]

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

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import namedtuple  # noqa: E402

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
  --context-shift[=reencode|kshift]
              let -n go beyond seq_len: when the context is full, keep the
              first --keep tokens, drop the oldest half of the rest, re-encode
              what is left (exact, the default) or move the cache and rotate
              its keys (kshift: llama.cpp's K-shift, no pause, not exact)
  --keep <int>
              tokens kept at a context shift (default: BOS and the prompt, or
              the chat's system prompt, at most half the context)
  --utf8      print the bytes of byte-fallback tokens as UTF-8 (run.c drops
              them); an invalid sequence prints as U+FFFD
  --samples <int>
              N continuations of the prompt, sample i with seed s + i (the
              same text as -s s+i alone), decoded together: one forward pass
              per step for all of them
  --jsonl     one JSON object per sample on stdout instead of the text
  --prompts <file> --out <file>
              every prompt of a file (one per line, or JSON Lines with
              "prompt" and an optional "seed"), times --samples, into JSONL
              records in --out; run the same command again to resume
  --on-error skip|stop
              a bad --prompts line is skipped, or stops the run before it
              starts (default)
  --batch <int>
              samples decoded at once with --prompts (default 16)
  --ray <auto|ADDRESS|local>
              run a --prompts job on a Ray cluster (pip install ".[ray]")
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
             context_shift=False, keep=None, utf8=False, samples=1, jsonl=False, prompts=None, out=None,
             on_error="stop", batch=16, ray=None, help=False)
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
            o["context_shift"] = "reencode"
        elif a.startswith("--context-shift="):
            v = a.split("=", 1)[1]
            if v not in ("reencode", "kshift"):
                raise UsageError(f"--context-shift={v}: expected reencode or kshift")
            o["context_shift"] = v
        elif a == "--utf8":
            o["utf8"] = True
        elif a == "--jsonl":
            o["jsonl"] = True
        elif a in ("--samples", "--batch") or a.startswith(("--samples=", "--batch=")):
            flag = a.split("=")[0]
            n = _int(flag, value(flag))
            if n < 1:
                raise UsageError(f"{flag} must be at least 1, got {n}")
            o[flag[2:]] = n
        elif a in ("--prompts", "--out", "--ray", "--on-error") or a.startswith(("--prompts=", "--out=", "--ray=",
                                                                                   "--on-error=")):
            flag = a.split("=")[0]
            o[flag[2:].replace("-", "_")] = value(flag)
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
    if o["on_error"] not in ("skip", "stop"):
        raise UsageError(f"--on-error {o['on_error']}: expected skip or stop")
    if (o["prompts"] is None) != (o["out"] is None):
        raise UsageError("--prompts and --out go together: prompts from one file, JSONL records into the other")
    if o["ray"] is not None and o["prompts"] is None:
        raise UsageError("--ray runs a --prompts job")
    many = o["samples"] > 1 or o["jsonl"] or o["prompts"] is not None
    if many and o["mode"] == "chat":
        raise UsageError("--samples, --jsonl and --prompts work in generate mode, not -m chat")
    if many and (o["profile"] or o["eval"]):
        raise UsageError("--profile and --eval run one sample: leave out --samples, --jsonl and --prompts")
    if o["prompts"] is not None and o["prompt"] is not None:
        raise UsageError("-i and --prompts both give prompts: use one")
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

import checkpoint  # noqa: E402
import jit  # noqa: E402
import model  # noqa: E402
from jit import kernel, pkernel  # noqa: E402
from numba import prange  # noqa: E402
from tokenizer import BOS, EOS, TextStream, Tokenizer, TokenizerError  # noqa: E402

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


@kernel
def sample_token(logits, temperature, topp, coin, index, scratch, counts):
    """run.c's sample(): argmax at temperature 0, else softmax(logits / temperature) (in place) sampled with
    coin, among all tokens or, with 0 < topp < 1, top-p."""
    if temperature == 0:
        return sample_argmax(logits)
    temperature_softmax(logits, temperature)
    if topp <= 0 or topp >= 1:
        return sample_mult(logits, coin)
    return sample_topp(logits, topp, coin, index, scratch, counts)


@pkernel
def sample_rows(logits, temperature, topp, coins, index, scratch, counts, tokens):
    """tokens[r] = sample_token of logits[r] with coins[r] and row r of the work buffers, the rows in parallel
    (8 samples of 110M: a step's sampling 0.36 ms one row after the other)."""
    for r in prange(tokens.shape[0]):
        tokens[r] = sample_token(logits[r], temperature, topp, coins[r], index[r], scratch[r], counts[r])


class Sampler:
    """run.c's Sampler: greedy at temperature 0, else multinomial or top-p."""

    def __init__(self, vocab_size, temperature, topp, rng_seed, work=None):
        self.vocab_size = vocab_size
        self.temperature = np.float32(temperature)
        self.topp = np.float32(topp)
        self.rng_state = rng_seed
        # top-p work buffers (run.c's probindex): (index, scratch, counts), given or allocated here
        self.index, self.scratch, self.counts = work or (np.zeros(vocab_size, np.int32),
                                                         np.zeros(vocab_size, np.int32), np.zeros(2048, np.int64))

    def coin(self):
        """The next coin of the sampler's generator (run.c draws none at temperature 0)."""
        if self.temperature == 0:
            return np.float32(0.0)
        self.rng_state, coin = random_f32(self.rng_state)
        return coin

    def sample(self, logits):
        """Next token id from logits (overwritten with probabilities when sampling)."""
        return int(sample_token(logits, self.temperature, self.topp, self.coin(), self.index, self.scratch,
                                self.counts))


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
    window: bit-identical state in strict mode), then goes on. shift="kshift"
    moves the kept part of the cache down instead, rotating its keys by the
    position delta: llama.cpp's K-shift, no forward pass, not exact.
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
        drop = len(rest) // 2
        kept = self.tokens[:keep] + rest[drop:]
        t0 = time.perf_counter()
        if self.shift == "kshift":
            self.t.shift_cache(self.seq, keep, drop, self.pos)
            self.tokens = kept
        else:
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
    sample_token(logits, np.float32(1.0), np.float32(0.9), np.float32(0.5), sampler.index, sampler.scratch,
                 sampler.counts)
    if transformer.seqs > 1:  # samples decoded together sample their rows in one call
        sample_rows(logits[None], np.float32(1.0), np.float32(0.9), np.zeros(1, np.float32), sampler.index[None],
                    sampler.scratch[None], sampler.counts[None], np.zeros(1, np.int32))
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
    chooser = transformer.threads
    if chooser is not None and chooser.used.get(chooser.most, 0) < sum(chooser.used.values()):
        counts = ", ".join(f"{n} for {k}" for n, k in sorted(chooser.used.items()))
        print(f"threads: {counts} forward passes (other processes kept cores busy; --threads N fixes the count)",
              file=sys.stderr)
    if ctx.shifts:
        print(f"context shifts: {len(ctx.shifts)}, {1e3 * float(np.median(ctx.shifts)):.1f} ms each (median), "
              f"keeping {min(ctx.keep, ctx.seq_len // 2)} tokens", file=sys.stderr)


def generate(transformer, tokenizer, sampler, prompt, steps, out, shift=False, keep=None, profiles=None,
             utf8=False):
    """run.c's generate: feed the prompt (in one pass), then sample until steps or BOS.

    profiles: (prompt Profile, generation Profile) to record into, or None.
    Returns (prompt tokens fed, prompt seconds, generated tokens after the first, their seconds):
    with -n below the prompt's length only the first steps prompt tokens are fed, and the
    prompt speed counts those.
    """
    prompt_tokens = tokenizer.encode(prompt or b"", bos=True, eos=False)
    n_prompt = len(prompt_tokens)
    ctx = Context(transformer, 0, shift, keep if keep is not None else n_prompt)
    stream = TextStream(utf8)
    # run.c feeds prompt token pos at position pos and samples from position n_prompt - 1 on
    fed = min(n_prompt, steps)
    transformer.profile = profiles[0] if profiles else None
    t0 = time.perf_counter()
    logits = ctx.feed(prompt_tokens[:fed], logits="last" if fed == n_prompt else None)
    prompt_seconds = time.perf_counter() - t0
    transformer.profile = profiles[1] if profiles else None
    for pos in range(min(fed, n_prompt - 1)):
        if prompt_tokens[pos + 1] == BOS:
            out.write(stream.finish() + b"\n")
            return fed, prompt_seconds, 0, 0.0
        out.write(stream.push(tokenizer.decode(prompt_tokens[pos], prompt_tokens[pos + 1])))
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
            out.write(stream.push(tokenizer.decode(token, next_token)))
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
    out.write(stream.finish() + b"\n")
    gen_seconds = time.perf_counter() - start if start is not None else 0.0
    report_speed(transformer, fed, prompt_seconds, generated, gen_seconds, ctx)
    return fed, prompt_seconds, generated, gen_seconds


def read_stdin(out, guide):
    """Print guide, read one line (at most 511 bytes, like fgets into 512) without its newline.

    None at end of input.
    """
    out.write(guide.encode())
    line = sys.stdin.buffer.readline(511)
    if not line:
        return None
    return line[:-1] if line.endswith(b"\n") else line


def chat(transformer, tokenizer, sampler, cli_user_prompt, cli_system_prompt, steps, out, shift=False, keep=None,
         utf8=False):
    """run.c's chat loop with the Llama 2 chat template; ends at steps or end of input.

    Each turn's prompt goes through the model in one pass. run.c samples at
    every prompt position too (printing a newline when the sample is EOS), so
    the logits of every prompt position are computed and sampled alike.
    """
    ctx = Context(transformer, 0, shift, keep or 1)
    stream = TextStream(utf8)
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
                    out.write(stream.push(tokenizer.decode(token, next_token)))
                if next_token == EOS:
                    out.write(stream.finish() + b"\n")
            continue

        token = next_token
        if token == EOS:
            user_turn = True
        logits = ctx.step(token)
        next_token = sampler.sample(logits)
        pos += 1
        if next_token != EOS:
            out.write(stream.push(tokenizer.decode(token, next_token)))
        else:
            out.write(stream.finish() + b"\n")
    out.write(stream.finish() + b"\n")


# ----------------------------------------------------------------------------
# many samples at once: every live sample is one row of each forward pass

Job = namedtuple("Job", "line sample prompt seed")  # line: the prompt's line in a --prompts file, else None
# out: the bytes run.c would print (prompt and continuation); text: the continuation, decoded
Sample = namedtuple("Sample", "job out text tokens stop seconds")


class Lockstep:
    """Generates many samples with one forward pass per step for all of them (continuous batching).

    Up to transformer.seqs samples run at once, each in its own KV-cache
    sequence; when one ends (BOS, or its steps), the next job takes its
    place. A job's prompt goes through the model in one pass; jobs that
    start together with the same prompt share it (the cache rows are
    copied). Each sample's text is what `run.py -s SEED -i PROMPT` prints
    alone: every output of the forward pass is computed in the same order
    whatever the batch.
    """

    def __init__(self, transformer, tokenizer, steps, temperature, topp, stop_label="steps", shift=False,
                 keep=None, utf8=False, on_finish=None):
        self.t, self.tok = transformer, tokenizer
        self.steps, self.temperature, self.topp = steps, temperature, topp
        self.stop_label, self.shift, self.keep, self.utf8 = stop_label, shift, keep, utf8
        self.generated = 0  # tokens generated after each sample's first, over all samples
        self.decode_seconds = 0.0  # time spent in the batched steps
        n, vocab = transformer.seqs, transformer.config.vocab_size
        # sample_rows' work buffers, a row per sequence; the sequence's Sampler uses the same row
        self.index, self.scratch = np.zeros((n, vocab), np.int32), np.zeros((n, vocab), np.int32)
        self.counts, self.next_tokens = np.zeros((n, 2048), np.int64), np.zeros(n, np.int32)

    def run(self, jobs):
        """Yield a Sample for every job, in job order."""
        jobs = iter(jobs)
        n = self.t.seqs
        slots = [None] * n
        done, order, next_out = {}, [], 0
        exhausted = False
        while True:
            if not exhausted:
                shared = {}  # prompt tokens -> (sequence, logits), for jobs starting in this round
                for s in range(n):
                    if slots[s] is None:
                        job = next(jobs, None)
                        if job is None:
                            exhausted = True
                            break
                        order.append(job)
                        slots[s] = self._start(job, len(order) - 1, s, shared)
                        self._finish_if_done(slots, s, done)
            live = [s for s in range(n) if slots[s] is not None]
            if live:
                self._step(slots, live)
                for s in live:
                    self._finish_if_done(slots, s, done)
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            if exhausted and not live and not done:
                return

    # one sample's state: its job, sampler, context, text stream, current token, position
    def _start(self, job, index, seq, shared):
        work = (self.index[seq], self.scratch[seq], self.counts[seq])
        slot = dict(job=job, index=index, sampler=Sampler(self.t.config.vocab_size, self.temperature, self.topp,
                                                           job.seed, work),
                    stream=TextStream(self.utf8), out=[], stop=None, generated=0, t_first=None)
        tokens = self.tok.encode(job.prompt, bos=True, eos=False)
        slot["ctx"] = ctx = Context(self.t, seq, self.shift, self.keep if self.keep is not None else len(tokens))
        fed = min(len(tokens), self.steps)
        key = tuple(tokens[:fed])
        if key in shared and fed == len(tokens) and fed <= self.t.config.seq_len:  # no shift while feeding
            src, logits = shared[key]
            self.t.copy_sequence(src, seq, fed)
            ctx.tokens = list(key)
            logits = logits.copy()
        else:
            logits = ctx.feed(tokens[:fed], logits="last" if fed == len(tokens) else None)
            logits = logits.copy() if logits is not None else None
            if logits is not None:
                shared[key] = (seq, logits.copy())
        for pos in range(min(fed, len(tokens) - 1)):
            if tokens[pos + 1] == BOS:
                slot["stop"] = "bos"
                return slot
            self._emit(slot, self.tok.decode(tokens[pos], tokens[pos + 1]))
        slot["pos"] = fed
        slot["prompt_chars"] = len(slot["stream"].text)
        if fed < len(tokens):
            slot["stop"] = self.stop_label
            return slot
        slot["token"] = tokens[-1]
        self._advance(slot, slot["sampler"].sample(logits))
        return slot

    def _emit(self, slot, piece):
        slot["out"].append(slot["stream"].push(piece))

    def _advance(self, slot, nxt):
        """Take nxt as the slot's next token; end the sample at BOS or at its last step."""
        if nxt == BOS:
            slot["stop"] = "bos"
            return
        self._emit(slot, self.tok.decode(slot["token"], nxt))
        slot["token"] = nxt
        if slot["t_first"] is None:
            slot["t_first"] = time.perf_counter()
        if slot["pos"] >= self.steps:
            slot["stop"] = self.stop_label

    def _step(self, slots, live):
        """One forward pass with a row for every live sample, then sample each."""
        t0 = time.perf_counter()
        for s in live:
            if slots[s]["ctx"].full():
                slots[s]["ctx"].make_room()
        tokens = np.array([slots[s]["token"] for s in live], np.int32)
        pos = np.array([slots[s]["ctx"].pos for s in live], np.int32)
        logits = self.t.run(tokens, pos, np.array(live, np.int32), np.ones(len(live), np.int32))
        coins = np.array([slots[s]["sampler"].coin() for s in live], np.float32)
        nxt = self.next_tokens[:len(live)]
        sample_rows(logits, np.float32(self.temperature), np.float32(self.topp), coins, self.index, self.scratch,
                    self.counts, nxt)
        for r, s in enumerate(live):
            slot = slots[s]
            slot["ctx"].tokens.append(slot["token"])
            slot["pos"] += 1
            slot["generated"] += 1
            self._advance(slot, int(nxt[r]))
        self.decode_seconds += time.perf_counter() - t0
        self.generated += len(live)

    def _finish_if_done(self, slots, s, done):
        slot = slots[s]
        if slot is None or slot["stop"] is None:
            return
        tail = slot["stream"].finish()
        out = b"".join(slot["out"]) + tail + b"\n"
        seconds = time.perf_counter() - slot["t_first"] if slot["t_first"] else 0.0
        text = slot["stream"].text[slot.get("prompt_chars", 0):]
        tokens = slot["generated"] + (slot["t_first"] is not None)  # the first sampled token too
        done[slot["index"]] = Sample(slot["job"], out, text, tokens, slot["stop"], seconds)
        slots[s] = None


# ----------------------------------------------------------------------------
# bulk prompts: a file of prompts in, one JSONL record per sample out, resumable

class PromptsError(Exception):
    """A --prompts file or --out file that cannot be used; the message names the file and line."""


def read_prompts(path):
    """([(line number, prompt bytes, seed or None)], [(line number, problem)]) of a --prompts file.

    One prompt per line, or JSON Lines with a "prompt" string and an optional
    integer "seed" (the file is JSON Lines when its first non-blank line
    starts with "{"). Blank lines are skipped; a line that is not valid
    UTF-8 or JSON, or lacks "prompt", is a problem.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PromptsError(f"cannot read --prompts file {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    first = next((x.strip() for x in lines if x.strip()), b"")
    jsonl = first.startswith(b"{")
    good, bad = [], []
    for number, raw in enumerate(lines, 1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.append((number, f"not valid UTF-8 (byte 0x{raw[e.start]:02X} at column {e.start + 1})"))
            continue
        if not jsonl:
            good.append((number, raw, None))
            continue
        try:
            record = json.loads(text)
        except ValueError as e:
            bad.append((number, f"invalid JSON ({e})"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            bad.append((number, 'no "prompt" string'))
            continue
        seed = record.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            bad.append((number, f'"seed" {seed!r} is not an integer'))
            continue
        good.append((number, record["prompt"].encode("utf-8", "surrogateescape"), seed))
    return good, bad


def bulk_jobs(prompts, samples, seed):
    """Every (line, sample) job: sample i of a line uses the line's seed (or -s) plus i."""
    return [Job(line, i, prompt, ((own if own is not None else seed) + i) % 2**64 or 1)
            for line, prompt, own in prompts for i in range(samples)]


def record(sample):
    """The JSONL record of a finished sample.

    --prompts records carry the prompt's line and no speed: the same job
    gives the same file, whether it ran at once or was resumed. --jsonl
    records of --samples carry the sample's generation tok/s.
    """
    job = sample.job
    r = {} if job.line is None else {"line": job.line}
    r.update({"sample": job.sample, "prompt": job.prompt.decode("utf-8", "replace"), "seed": job.seed,
              "text": sample.text, "tokens": sample.tokens, "stop": sample.stop})
    if job.line is None:
        r["tok_s"] = round((sample.tokens - 1) / sample.seconds, 2) if sample.seconds > 0 else None
    return json.dumps(r, ensure_ascii=False) + "\n"


def resume_point(path, jobs):
    """(records already complete in path, byte length they take) for a rerun of the same job.

    A last line without its newline (a run killed while writing) is not
    counted: the file is cut back to the complete records. Records that are
    not this job's (another prompt file, other seeds) are an error, so an
    unrelated file is never appended to.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0, 0
    except OSError as e:
        raise PromptsError(f"cannot read --out file {path}: {e.strerror or e}") from None
    end = data.rfind(b"\n") + 1
    if data[end:] and not data[end:].startswith(b'{"line": '[:len(data[end:])]):
        raise PromptsError(f"--out file {path} ends in a line that is not one of this program's records; "
                           "give another --out file")
    count = 0
    for raw in data[:end].split(b"\n")[:-1]:
        try:
            r = json.loads(raw)
            key = (r["line"], r["sample"], r["seed"])
        except (ValueError, KeyError, TypeError):
            raise PromptsError(f"--out file {path} has a line that is not one of this program's records "
                               f"(line {count + 1}); give another --out file") from None
        if count >= len(jobs) or key != (jobs[count].line, jobs[count].sample, jobs[count].seed):
            want = jobs[count] if count < len(jobs) else None
            hint = (f"; its seeds say -s {r['seed'] - r['sample']}" if want and key[:2] == (want.line, want.sample)
                    else "")
            raise PromptsError(f"--out file {path} holds records of another job (record {count + 1}: line "
                               f"{key[0]} sample {key[1]} seed {key[2]}){hint}")
        count += 1
    return count, end


class ProgressBar:
    """One line on stderr (rewritten when it is a terminal): records done, prompts, tokens per second."""

    def __init__(self, total, prompts, done=0):
        self.total, self.prompts, self.done = total, prompts, done
        self.tokens, self.t0, self.shown = 0, time.perf_counter(), -1
        self.tty = sys.stderr.isatty()

    def update(self, tokens):
        self.done += 1
        self.tokens += tokens
        pct = 100 * self.done // self.total if self.total else 100
        if pct == self.shown and self.done < self.total:
            return
        self.shown = pct
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        line = f"[{'#' * (pct // 4):<25}] {self.done}/{self.total} samples of {self.prompts} prompts, {rate:.0f} tok/s"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self):
        if self.tty:
            print(file=sys.stderr)


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
        Context(transformer, 0, shift, keep).feed(tokens[:-1], logits="all", on_logits=score)
    else:
        for start in range(0, n, seq):
            window = tokens[start:start + min(seq, n - start)]
            transformer.prefill(window, 0, 0, logits="all", on_logits=lambda i, rows, s=start: score(i, rows, s))
    if show:
        print(file=sys.stderr)
    return n, (total / n if n else float("nan"))


def print_samples(lockstep, jobs, out, jsonl, transformer):
    """--samples N: each sample whole, in order, separated by a blank line (or one JSON record each)."""
    for i, smp in enumerate(lockstep.run(jobs)):
        if jsonl:
            out.write(record(smp).encode("utf-8"))
        else:
            print(f"sample {i + 1}/{len(jobs)} (seed {smp.job.seed}): {smp.tokens} tokens, stop: {smp.stop}",
                  file=sys.stderr)
            out.write((b"\n" if i else b"") + smp.out)
    if lockstep.generated and lockstep.decode_seconds > 0:
        tok_s = lockstep.generated / lockstep.decode_seconds
        print("achieved tok/s: %f (%d samples decoded together)" % (tok_s, len(jobs)), file=sys.stderr)
        print("weights read: %.1f MB/step, %.2f GB/s" % (transformer.bytes_per_token / 1e6,
                                                          transformer.bytes_per_token * lockstep.generated
                                                          / lockstep.decode_seconds / len(jobs) / 1e9),
              file=sys.stderr)
    return 0


def bulk_plan(o, seed):
    """(jobs, records already done, their byte length) of a --prompts job; bad lines reported or refused first."""
    prompts, bad = read_prompts(o["prompts"])
    if bad and o["on_error"] == "stop":
        line, problem = bad[0]
        more = f"; {len(bad)} bad lines in all" if len(bad) > 1 else ""
        raise PromptsError(f"{o['prompts']}:{line}: {problem}{more} (--on-error skip runs the others)")
    for line, problem in bad:
        print(f"run.py: {o['prompts']}:{line}: skipped: {problem}", file=sys.stderr)
    jobs = bulk_jobs(prompts, o["samples"], seed)
    return jobs, len(prompts), *resume_point(o["out"], jobs)


def write_records(o, plan, records):
    """Append (JSONL record, tokens) pairs to --out as they come, flushing each, after the records already done."""
    jobs, n_prompts, done, end = plan
    try:
        f = open(o["out"], "r+b" if os.path.exists(o["out"]) else "wb")
        f.truncate(end)  # a record cut short by a kill is written again
        f.seek(end)
    except OSError as e:
        return error(f"cannot write --out file {o['out']}: {e.strerror or e}")
    if done:
        print(f"run.py: resuming {o['out']}: {done} of {len(jobs)} records are done", file=sys.stderr)
    progress = ProgressBar(len(jobs), n_prompts, done)
    with f:
        for line, tokens in records:
            f.write(line.encode("utf-8"))
            f.flush()
            progress.update(tokens)
    progress.close()
    return 0


def bulk(lockstep, o, plan):
    """--prompts FILE --out FILE: every prompt's samples as JSONL records, in order, resuming a partial file."""
    jobs, done = plan[0], plan[2]
    return write_records(o, plan, ((record(smp), smp.tokens) for smp in lockstep.run(jobs[done:])))


# ----------------------------------------------------------------------------
# bulk prompts on a Ray cluster

class RayGenerator:
    """A Ray Data actor: loads the checkpoint once, then runs batches of jobs through Lockstep.

    Each batch is a dict of arrays (line, sample, prompt, seed); it returns
    the JSONL records of those jobs, in order. The compile mode comes from
    the environment the driver gives the actor (LLAMA2_FASTMATH,
    LLAMA2_THREADS), so its text is the in-process run's.
    """

    def __init__(self, checkpoint, tokenizer, seqs, mmap, **lockstep):
        t = model.Transformer(checkpoint, mmap=mmap, rows=max(PREFILL_ROWS, seqs), seqs=seqs)
        self.lockstep = Lockstep(t, Tokenizer(tokenizer, t.config.vocab_size), **lockstep)
        warm_up(t, Sampler(t.config.vocab_size, 1.0, 0.9, 1))

    def __call__(self, batch):
        jobs = [Job(int(line), int(sample), bytes(prompt), int(seed))
                for line, sample, prompt, seed in zip(batch["line"], batch["sample"], batch["prompt"], batch["seed"])]
        return {"record": np.array([record(smp) for smp in self.lockstep.run(jobs)], dtype=object)}


def bulk_on_ray(o, plan, lockstep_args, threads):
    """--prompts on Ray: one actor per `threads` CPUs of the cluster, records written here in job order."""
    try:
        import ray
    except ImportError:
        return error("--ray needs Ray: pip install \".[ray]\"")
    jobs, done = plan[0], plan[2]
    env = {"LLAMA2_FASTMATH": o["fastmath"], "LLAMA2_THREADS": str(threads)}
    if os.environ.get("LLAMA2_CACHE_DIR"):
        env["LLAMA2_CACHE_DIR"] = os.environ["LLAMA2_CACHE_DIR"]
    try:
        if ray.is_initialized():  # started by the program that called main(): code from this directory
            actor_env = {"env_vars": dict(env, PYTHONPATH=ROOT)}
        else:  # the job ships the project's code to every worker; checkpoint and tokenizer must be readable there
            actor_env = None
            ray.init(address=None if o["ray"] == "local" else o["ray"], logging_level="ERROR", log_to_driver=False,
                     runtime_env={"env_vars": env, "working_dir": ROOT,
                                  "excludes": [".git", "tests", "benchmarks", "demo", "tools", "*.bin"]})
        cpus = int(ray.cluster_resources().get("CPU", 1))
    except (ConnectionError, RuntimeError, ValueError) as e:
        return error(f"--ray {o['ray']}: cannot reach a Ray cluster ({str(e).splitlines()[0]})")
    actors = max(1, cpus // threads)
    print(f"run.py: Ray: {actors} actor{'s' if actors > 1 else ''} of {threads} CPU{'s' if threads > 1 else ''} "
          f"on {cpus} CPUs", file=sys.stderr)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    todo = jobs[done:]
    ds = ray.data.from_items([{"line": j.line, "sample": j.sample, "prompt": j.prompt, "seed": j.seed}
                              for j in todo], override_num_blocks=max(1, min(len(todo), 4 * actors)))
    records = ds.map_batches(RayGenerator, batch_size=2 * o["batch"], concurrency=actors, num_cpus=threads,
                             runtime_env=actor_env,
                             fn_constructor_kwargs=dict(checkpoint=os.path.abspath(o["checkpoint"]),
                                                        tokenizer=os.path.abspath(o["tokenizer"]),
                                                        seqs=o["batch"], mmap=o["mmap"], **lockstep_args))
    return write_records(o, plan, ((row["record"], json.loads(row["record"])["tokens"])
                                   for row in records.iter_rows()))


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

    many = o["samples"] > 1 or o["jsonl"] or o["prompts"] is not None
    seqs = (o["batch"] if o["prompts"] is not None else o["samples"]) if many else 1
    plan = None
    if o["prompts"] is not None:
        try:
            plan = bulk_plan(o, seed)
        except PromptsError as e:
            return error(str(e))
        if plan[2] == len(plan[0]):
            print(f"run.py: {o['out']} already holds all {plan[2]} records of this job", file=sys.stderr)
            return 0
    try:
        p = checkpoint.check(o["checkpoint"]).config
        stop_label = "steps"
        if steps == 0 or (steps > p.seq_len and not o["context_shift"]):
            steps = p.seq_len
            stop_label = "seq_len"
        if o["keep"] is not None and o["keep"] > p.seq_len // 2:
            return error(f"--keep {o['keep']} is more than half the context ({p.seq_len} positions): "
                         "a shift would drop too little to be worth its re-encoding")
        tok = Tokenizer(o["tokenizer"], p.vocab_size)
        lockstep_args = dict(steps=steps, temperature=temperature, topp=topp, stop_label=stop_label,
                             shift=o["context_shift"], keep=o["keep"], utf8=o["utf8"])
        if plan is not None and o["ray"] is not None:  # the actors load the model, not this process
            return bulk_on_ray(o, plan, lockstep_args, int(os.environ.get("LLAMA2_THREADS") or 1))
        runner = model.Transformer(o["checkpoint"], mmap=o["mmap"], rows=max(PREFILL_ROWS, seqs), seqs=seqs)
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
            ppl = math.exp(nll) if nll < 700 else math.inf  # beyond float range, say inf without a warning
            out.write(f"{o['eval']}: {n} tokens, average negative log-likelihood {nll:.6f} nats/token, "
                      f"perplexity {ppl:.4f}\n".encode())
            return 0

        if not o["threads"] and jit.THREADS > 1:
            runner.threads = model.ThreadChooser(jit.THREADS)  # all cores unless other processes hold some
        seconds = warm_up(runner, sampler)
        print(f"compile: {seconds:.2f} s ({jit.describe()})", file=sys.stderr)
        lockstep = Lockstep(runner, tok, **lockstep_args)
        if plan is not None:
            return bulk(lockstep, o, plan)
        if many:
            jobs = [Job(None, i, prompt or b"", (seed + i) % 2**64 or 1) for i in range(o["samples"])]
            return print_samples(lockstep, jobs, out, o["jsonl"], runner)
        if o["mode"] == "generate":
            profiles = None
            if o["profile"]:
                gs = runner.weights.group_size if runner.quantized else 0
                profiles = (model.Profile(p, gs), model.Profile(p, gs))
            n_prompt, t_prompt, generated, t_gen = generate(runner, tok, sampler, prompt, steps, out,
                                                            o["context_shift"], o["keep"], profiles, o["utf8"])
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
            chat(runner, tok, sampler, prompt, system_prompt, steps, out, o["context_shift"], o["keep"], o["utf8"])
    except (TokenizerError, PromptsError) as e:
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
