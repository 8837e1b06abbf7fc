#!/usr/bin/env python3
"""Side-by-side speed of run.py's configurations (and llama2.c builds, if given).

    python benchmarks/bench.py MODEL.bin [-z tokenizer.bin] [--c path/to/run ...]
                               [--cpu generic|haswell|host] [--runs 5] [--steps 256]
                               [--prompt-tokens 256] [--samples-table] [--flags-table] [--startup]
                               [--json out.json] [--chart out.png]

Every configuration is compiled once (not timed), then the configurations are
run in turn, `--runs` rounds, so drift on a shared machine hits them all
alike. Each run's `achieved tok/s` (stderr; counted from the end of the first
step, as run.c counts it) is collected; the table gives the median, the range
and the ratio to the strict single-thread baseline. Also reported: the
machine's memory read bandwidth (a streaming probe), the bytes of weights one
token reads, and the fraction of the bandwidth each configuration achieves.

--cpu compiles the run.py configurations for an instruction-set tier
(generic: baseline x86-64, as gcc without -march; haswell: AVX2 + FMA, as
gcc -march=haswell; host: this CPU, as -march=native); give it the llama2.c
builds of the same tier with --c. --prompt-tokens N adds a column with the
speed of a prompt of N tokens (run.py feeds it in one pass; run.c one token
per forward pass, so its prompt speed is its generation speed).
--samples-table measures --samples N for N = 1 ... 32: aggregate tok/s, the
weights' GB/s (each step reads them once for all N) and GFLOP/s.
--flags-table reproduces llama2.c's compile-flag comparison with Numba's
equivalents: fast-math off / the -funsafe-math-optimizations subset / all,
each for the host CPU (-march=native) and for NUMBA_CPU_NAME=generic.
--startup measures time to first token with an empty and with a filled JIT
cache, and peak memory.

Before measuring, the checkpoint's pages are dropped from the page cache and
read back through a MADV_HUGEPAGE mapping, so that every program (llama2.c's
included) maps it with 2 MB pages; --keep-page-cache skips this. The share
of the file held in 2 MB folios is reported before and after the runs.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, "run.py")
CORES = os.cpu_count() or 1

# name -> (run.py flags, extra environment)
CONFIGS = {
    "strict, 1 thread": (["--no-fastmath", "--threads", "1"], {}),
    "unsafe-math, 1 thread": (["--fastmath=unsafe", "--threads", "1"], {}),
    "fast-math, 1 thread": (["--threads", "1"], {}),
    f"strict, {CORES} threads": (["--no-fastmath", "--threads", str(CORES)], {}),
    f"fast-math, {CORES} threads": (["--threads", str(CORES)], {}),
    f"fast-math, {CORES} threads, --no-mmap": (["--threads", str(CORES), "--no-mmap"], {}),
}
BASELINE = "strict, 1 thread"

# llama2.c's compile-flag table, in Numba terms (single thread)
FLAG_CONFIGS = {
    "-O3 (generic CPU)": (["--no-fastmath", "--threads", "1"], {"NUMBA_CPU_NAME": "generic"}),
    "-O3 -funsafe-math-optimizations (generic)": (["--fastmath=unsafe", "--threads", "1"],
                                                  {"NUMBA_CPU_NAME": "generic"}),
    "-Ofast (generic)": (["--threads", "1"], {"NUMBA_CPU_NAME": "generic"}),
    "-O3 -march=native": (["--no-fastmath", "--threads", "1"], {}),
    "-O3 -funsafe-math-optimizations -march=native": (["--fastmath=unsafe", "--threads", "1"], {}),
    "-Ofast -march=native": (["--threads", "1"], {}),
    f"-Ofast -march=native -fopenmp ({CORES} threads)": (["--threads", str(CORES)], {}),
}
FLAG_BASELINE = "-O3 (generic CPU)"

TOKS = re.compile(rb"achieved tok/s: ([0-9.]+|inf)")
PROMPT = re.compile(rb"prompt: \d+ tokens in [0-9.]+ ms, ([0-9.]+) tok/s")


def run_once(cmd, env, pattern=TOKS):
    """(tok/s, wall seconds, peak RSS in MB) of one run (tok/s: the stderr line `pattern` finds).

    The run is started by a small Python parent that reports its children's
    peak RSS: a child forked straight from this process would count this
    process's memory in its own peak until it execs.
    """
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(r.returncode)")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", wrapper] + cmd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr.decode(errors='replace')}")
    m = (pattern if cmd[0] == sys.executable else TOKS).search(p.stderr)  # llama2.c reports one speed
    if not m:
        raise RuntimeError(f"no 'achieved tok/s' from {' '.join(cmd)} (did it stop at BOS?):\n{p.stderr.decode()}")
    rss_kb = int(p.stderr.strip().splitlines()[-1])
    return float(m.group(1)), wall, rss_kb / 1024


def command(cfg, args, steps, prompt=None):
    prog = [cfg[2:]] if cfg.startswith("C:") else [sys.executable, RUN_PY]
    return prog + [args.model, "-z", args.tokenizer, "-n", str(steps), "-s", "1"] + (["-i", prompt] if prompt else [])


def threads_of(name, flags):
    """Threads a configuration runs on (llama2.c builds: all cores if built with OpenMP)."""
    if "--threads" in flags:
        return int(flags[flags.index("--threads") + 1])
    return CORES if "omp" in os.path.basename(name) else 1


TIER = {}  # the environment of the --cpu tier, for run.py only


def environment(extra, run_py=True):
    env = dict(os.environ)
    if run_py:
        env.update(TIER)
    env.update(extra)
    env.setdefault("OMP_NUM_THREADS", str(CORES))  # llama2.c's runomp: all cores
    return env


def measure(configs, args, label, prompt=None, steps=None, pattern=TOKS):
    """{name: [tok/s per run]} with the configurations interleaved round by round."""
    plan = {}
    steps = steps or args.steps
    for name, (flags, extra) in configs.items():
        env = environment(extra, not name.startswith("C:"))
        plan[name] = (command(name, args, steps, prompt) + flags, env)
        run_once(command(name, args, 4) + flags, env)  # fill the JIT cache, untimed
    results = {name: [] for name in plan}
    for r in range(args.runs):
        for name, (cmd, env) in plan.items():
            results[name].append(run_once(cmd, env, pattern)[0])
        print(f"  {label}: round {r + 1}/{args.runs} done", file=sys.stderr)
    return results


def layer_params(p):
    """Weights of the layers (what a prompt token multiplies; the classifier runs for the last token only)."""
    return p.n_layers * (2 * p.dim * p.dim + 2 * p.dim * p.kv_dim + 3 * p.dim * p.hidden_dim)


def prompt_of(tokenizer_path, vocab_size, n):
    """A text that encodes to n tokens with BOS (a story sentence repeated, cut to length)."""
    sys.path.insert(0, ROOT)
    from tokenizer import Tokenizer
    tok = Tokenizer(tokenizer_path, vocab_size)
    text = "Once upon a time there was a little girl named Lily who loved to play in the park with her dog. " * 64
    words = text.split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # the longest prefix of words with at most n tokens
        mid = (lo + hi + 1) // 2
        if len(tok.encode(" ".join(words[:mid]))) <= n:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def samples_table(args, nbytes, config, bw):
    """--samples N, N = 1 .. 32 (fast math, all cores): aggregate tok/s, GB/s of weights, GFLOP/s."""
    ns = [1, 2, 4, 8, 16, 32]
    configs = {f"--samples {n}": (["--samples", str(n), "--threads", str(CORES)], {}) for n in ns}
    results = measure(configs, args, "samples table")
    flops = 2 * (layer_params(config) + config.vocab_size * config.dim)  # per generated token
    base = results["--samples 1"]
    lines = ["| samples | aggregate tok/s (median) | x one sample (paired) | GB/s of weights | GFLOP/s |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for n in ns:
        v = results[f"--samples {n}"]
        med = statistics.median(v)
        paired = statistics.median(a / b for a, b in zip(v, base))
        lines.append(f"| {n} | {med:.1f} | {paired:.2f}x | {nbytes * med / n / 1e9:.1f} | {flops * med / 1e9:.1f} |")
    return results, "\n".join(lines)


def bandwidth_probe():
    """Streaming read bandwidth in GB/s (best of 5) with 1 thread and with all cores."""
    import numba
    import numpy as np

    @numba.njit(fastmath=True, cache=False)
    def chunk_sum(a):
        s = np.float32(0.0)
        for i in range(a.size):
            s += a[i]
        return s

    @numba.njit(fastmath=True, parallel=True, cache=False)
    def stream(a, out):
        chunk = a.size // out.size
        for b in numba.prange(out.size):
            out[b] = chunk_sum(a[b * chunk:(b + 1) * chunk])

    a = np.ones(256 * 1024 * 1024, np.float32)  # 1 GiB, far beyond any cache
    out = np.zeros(64, np.float32)
    result = {}
    for threads in sorted({1, CORES}):
        numba.set_num_threads(threads)
        stream(a, out)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            stream(a, out)
            times.append(time.perf_counter() - t0)
        result[threads] = a.nbytes / min(times) / 1e9
    return result


def _map_and_touch(path, huge=False):
    """The file mapped read-only, every page faulted in (asking for 2 MB folios if huge)."""
    import mmap
    import numpy as np
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if huge:
        m.madvise(mmap.MADV_HUGEPAGE)
    a = np.frombuffer(m, np.uint8)
    int(a[::4096].sum())
    start = a.ctypes.data
    del a  # the mmap cannot close while a view exports its buffer
    return m, start


def page_cache_huge_fraction(path):
    """Share of the file's bytes that a plain read-only mapping (llama2.c's) maps with 2 MB pages."""
    try:
        m, start = _map_and_touch(path)
    except OSError:
        return None
    try:
        with open("/proc/self/smaps") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"[0-9a-f]+-", line) and int(line.split("-")[0], 16) == start:
                fields = {}
                for entry in lines[i + 1:i + 40]:
                    k, _, v = entry.partition(":")
                    fields[k] = v.split()[0] if v.split() else ""
                return int(fields.get("FilePmdMapped", 0)) * 1024 / os.path.getsize(path)
        return None
    except OSError:
        return None
    finally:
        m.close()


def refill_page_cache(path):
    """Drop the file's cached pages and read it back through a MADV_HUGEPAGE mapping.

    How the page cache holds a checkpoint (4 KB pages or 2 MB folios) is left
    over from whoever read it first, and it moves tok/s of every program that
    maps it (26% for runomp on the 110M shape here). Refilling it once makes
    runs comparable across sessions; llama2.c's builds map the same page cache.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    _map_and_touch(path, huge=True)[0].close()


def bytes_per_token(model_path):
    sys.path.insert(0, ROOT)
    os.environ.setdefault("LLAMA2_THREADS", "1")
    import model
    t = model.Transformer(model_path)
    return t.bytes_per_token, t.config


def startup(args):
    """Cold (empty JIT cache) and warm start: wall time of a 1-token run, and peak RSS."""
    out = {}
    for name, flags in [("strict, 1 thread", ["--no-fastmath", "--threads", "1"]),
                        (f"fast-math, {CORES} threads", ["--threads", str(CORES)])]:
        cache = tempfile.mkdtemp(prefix="llama2-cache-")
        try:
            env = environment({"LLAMA2_CACHE_DIR": cache})
            cmd = [sys.executable, RUN_PY, args.model, "-z", args.tokenizer, "-n", "2", "-s", "1"] + flags
            _, cold, rss = run_once(cmd, env)
            warm = sorted(run_once(cmd, env)[1] for _ in range(3))[1]
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        out[name] = dict(cold_s=cold, warm_s=warm, peak_rss_mb=rss)
    return out


def table(results, threads, baseline, nbytes, bw, title):
    base = statistics.median(results[baseline]) if baseline in results else None
    lines = [f"### {title}", "",
             "| configuration | tok/s (median) | range | ratio to baseline | GB/s of weights | of measured bandwidth |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in results.items():
        med = statistics.median(v)
        gbs = nbytes * med / 1e9
        peak = bw.get(threads[name]) or max(bw.values())
        ratio = f"{med / base:.2f}x" if base else "-"
        lines.append(f"| {name} | {med:.1f} | {min(v):.1f}-{max(v):.1f} | {ratio} | {gbs:.1f} | {gbs / peak:.0%} |")
    return "\n".join(lines)


def paired_table(results):
    """Each run.py configuration over each llama2.c build, round by round (median of the ratios).

    Runs in the same round are seconds apart, so a ratio within a round is
    less exposed to the machine's drift than a ratio of medians.
    """
    cs = [k for k in results if k.startswith("llama2.c")]
    lines = ["### Paired ratios: run.py / llama2.c in the same round (median, min-max over rounds)", "",
             "| configuration | " + " | ".join(cs) + " |", "| --- |" + " ---: |" * len(cs)]
    for name, v in results.items():
        if name in cs:
            continue
        cells = []
        for c in cs:
            r = [a / b for a, b in zip(v, results[c])]
            cells.append(f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    ap = argparse.ArgumentParser(description="side-by-side tok/s of run.py configurations")
    ap.add_argument("model")
    ap.add_argument("-z", "--tokenizer", default="tokenizer.bin")
    ap.add_argument("--c", action="append", default=[], metavar="BINARY",
                    help="a llama2.c build to run alongside (repeatable); run with OMP_NUM_THREADS=cores")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run only the run.py configurations whose name contains TEXT (repeatable)")
    ap.add_argument("--cpu", choices=["generic", "haswell", "host"], default="host",
                    help="instruction-set tier the run.py configurations are compiled for")
    ap.add_argument("--prompt-tokens", type=int, default=0, metavar="N",
                    help="also measure the speed of an N-token prompt")
    ap.add_argument("--samples-table", action="store_true", help="also --samples N for N = 1 ... 32")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--flags-table", action="store_true", help="also llama2.c's compile-flag table")
    ap.add_argument("--startup", action="store_true", help="also cold/warm start-up and peak memory")
    ap.add_argument("--keep-page-cache", action="store_true",
                    help="measure with the checkpoint cached as it is (default: re-read it into 2 MB folios first)")
    ap.add_argument("--json", metavar="FILE", help="write all figures as JSON")
    ap.add_argument("--chart", metavar="PNG", help="bar chart of tok/s (needs matplotlib)")
    args = ap.parse_args(argv)
    for path, what in [(args.model, "checkpoint"), (args.tokenizer, "tokenizer")]:
        if not os.path.isfile(path):
            print(f"bench.py: error: {what} {path} not found", file=sys.stderr)
            return 1
    for c in args.c:
        if not os.access(c, os.X_OK):
            print(f"bench.py: error: --c {c} is not an executable", file=sys.stderr)
            return 1

    sys.path.insert(0, ROOT)
    import jit
    TIER.update(jit.TIERS[args.cpu])
    if not args.keep_page_cache:
        refill_page_cache(args.model)
    huge = page_cache_huge_fraction(args.model)
    nbytes, config = bytes_per_token(args.model)
    bw = bandwidth_probe()
    report = dict(machine=dict(cpu=_cpu_name(), cores=CORES, python=platform.python_version(), tier=args.cpu),
                  model=args.model, config=dict(config._asdict()), bytes_per_token=nbytes,
                  bandwidth_gbs={str(k): v for k, v in bw.items()}, steps=args.steps, runs=args.runs,
                  page_cache_2mb_fraction=huge)
    configs = {k: v for k, v in CONFIGS.items() if not args.only or any(t in k for t in args.only)}
    for c in args.c:
        configs["C:" + os.path.abspath(c)] = ([], {})
    results = measure(configs, args, "configurations")
    threads = {k: threads_of(k, flags) for k, (flags, _) in list(configs.items()) + list(FLAG_CONFIGS.items())}
    pretty = {k: (f"llama2.c {os.path.basename(k[2:])}" if k.startswith("C:") else k) for k in threads}
    threads = {pretty[k]: v for k, v in threads.items()}
    results = {pretty[k]: v for k, v in results.items()}
    report["configurations"] = results
    report["page_cache_2mb_fraction_after"] = after = page_cache_huge_fraction(args.model)
    md = [f"Machine: {report['machine']['cpu']}, {CORES} cores; run.py compiled for the {args.cpu} tier. "
          f"Model: {os.path.basename(args.model)} "
          f"({', '.join(f'{k} {v}' for k, v in report['config'].items())}), {nbytes / 1e6:.1f} MB of weights "
          f"per token. Memory read bandwidth: " + ", ".join(f"{v:.1f} GB/s with {k} thread{'s' if k > 1 else ''}"
                                                           for k, v in bw.items()) + ". "
          + (f"Checkpoint in the page cache as 2 MB folios: {huge:.0%} before the runs, {after:.0%} after."
             if huge is not None and after is not None else ""),
          "", table(results, threads, BASELINE, nbytes, bw, f"run.py configurations, {args.steps} steps, "
                                                     f"median of {args.runs} alternating runs")]
    if args.c:
        md += ["", paired_table(results)]
    if args.prompt_tokens:
        text = prompt_of(args.tokenizer, config.vocab_size, args.prompt_tokens)
        pp = measure(configs, args, "prompt", prompt=text, steps=args.prompt_tokens, pattern=PROMPT)
        pp = {pretty[k]: v for k, v in pp.items()}
        report["prompt"] = pp
        flops = 2 * layer_params(config)  # per prompt token
        md += ["", f"### A {args.prompt_tokens}-token prompt: tok/s of the prompt (pp) and of generation (tg)", "",
               "| configuration | pp tok/s (median) | tg tok/s (median) | pp / tg | pp GFLOP/s |",
               "| --- | ---: | ---: | ---: | ---: |"]
        for name, v in pp.items():
            med, tg = statistics.median(v), statistics.median(results[name])
            md.append(f"| {name} | {med:.1f} | {tg:.1f} | {med / tg:.1f}x | "
                      f"{'-' if name.startswith('llama2.c') else f'{flops * med / 1e9:.1f}'} |")
    if args.samples_table:
        report["samples"], text = samples_table(args, nbytes, config, bw)
        md += ["", f"### --samples N, fast math, {CORES} threads: one forward pass per step for all N", "", text]
    if args.flags_table:
        flags = measure(FLAG_CONFIGS, args, "flags table")
        report["flags_table"] = flags
        md += ["", table(flags, threads, FLAG_BASELINE, nbytes, bw, "llama2.c's compile-flag table, Numba equivalents")]
    if args.startup:
        st = startup(args)
        report["startup"] = st
        md += ["", "### Start-up (time to first token) and peak memory", "",
               "| configuration | cold (empty JIT cache) | warm (cache filled) | peak RSS |",
               "| --- | ---: | ---: | ---: |"]
        md += [f"| {k} | {v['cold_s']:.2f} s | {v['warm_s']:.2f} s | {v['peak_rss_mb']:.0f} MB |"
               for k, v in st.items()]
    print("\n".join(md))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.chart:
        _chart(report, args.chart)
    return 0


def _cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return re.search(r"Model name:\s*(.+)", out).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or "unknown CPU"


def _chart(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench.py: no chart: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return
    rows = dict(report["configurations"])
    rows.update(report.get("flags_table", {}))
    names = list(rows)
    meds = [statistics.median(rows[n]) for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.2))
    ax.barh(names[::-1], meds[::-1], color=["#c44" if n.startswith("llama2.c") else "#48a" for n in names[::-1]])
    ax.set_xlabel("tok/s (median)")
    ax.set_title(f"{os.path.basename(report['model'])} on {report['machine']['cpu']}, {CORES} cores")
    for i, v in enumerate(meds[::-1]):
        ax.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
