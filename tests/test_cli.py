"""run.py end to end in subprocesses: generate, chat, modes, and every kind of bad input."""

import os
import struct
import subprocess
import sys

import pytest

from checkpoints import MAGIC, random_weights, write_checkpoint, write_tokenizer
from conftest import HANG_TIMEOUT, ROOT

RUN = os.path.join(ROOT, "run.py")
VOCAB = 400


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    w = random_weights(32, 64, 2, 4, 2, VOCAB, 64, shared=False, seed=4, scale=0.1)
    return {
        "dir": d,
        "model": str(write_checkpoint(d / "model.bin", w)),
        "model_v1": str(write_checkpoint(d / "model_v1.bin", w, version=1)),
        "tok": str(write_tokenizer(d / "tok.bin", VOCAB)),
        "tok_small": str(write_tokenizer(d / "tok_small.bin", VOCAB - 50)),
    }


def run_py(*args, stdin=b"", env=None, cwd=None):
    r = subprocess.run([sys.executable, RUN, *map(str, args)], input=stdin, capture_output=True,
                       timeout=HANG_TIMEOUT, env=dict(os.environ, **(env or {})), cwd=cwd)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def strict(f, *args, **kw):
    return run_py(f["model"], "-z", f["tok"], *args, "--no-fastmath", "--threads", "1", **kw)


# ---- generate ----------------------------------------------------------------

def test_generate_echoes_the_prompt_and_reports_speed(files):
    rc, out, err = strict(files, "-s", "7", "-n", "40", "-i", "Once upon a time")
    assert rc == 0, err
    assert out.startswith(b"Once upon a time") and out.endswith(b"\n")
    assert "achieved tok/s: " in err


def test_same_seed_same_text_and_shorter_runs_are_prefixes(files):
    _, long_out, _ = strict(files, "-s", "11", "-n", "60", "-t", "0.9")
    _, again, _ = strict(files, "-s", "11", "-n", "60", "-t", "0.9")
    _, short, _ = strict(files, "-s", "11", "-n", "20", "-t", "0.9")
    _, other, _ = strict(files, "-s", "12", "-n", "60", "-t", "0.9")
    assert long_out == again
    assert long_out.startswith(short[:-1])
    assert other != long_out


def test_v0_and_v1_checkpoints_print_the_same_text(files):
    a = run_py(files["model"], "-z", files["tok"], "-s", "3", "-n", "50", "--no-fastmath", "--threads", "1")
    b = run_py(files["model_v1"], "-z", files["tok"], "-s", "3", "-n", "50", "--no-fastmath", "--threads", "1")
    assert a[0] == b[0] == 0 and a[1] == b[1]


@pytest.mark.parametrize("fastmath", ["--no-fastmath", "--fastmath"])
def test_output_does_not_depend_on_thread_count(files, fastmath):
    outs = set()
    for threads in (1, 2, 3):
        rc, out, err = run_py(files["model"], "-z", files["tok"], "-s", "5", "-n", "64", "-t", "1.0",
                              fastmath, "--threads", threads)
        assert rc == 0, err
        outs.add(out)
    assert len(outs) == 1


def test_prompt_longer_than_the_context_is_cut_at_steps(files):
    prompt = "the little dog saw a big red ball " * 20  # far more tokens than seq_len 64
    rc, out, err = strict(files, "-i", prompt, "-n", "0")
    assert rc == 0, err
    from tokenizer import Tokenizer
    ids = Tokenizer(files["tok"], VOCAB).encode(prompt)[:65]  # seq_len positions print ids[1:65]
    assert len(ids) == 65
    assert out == b"".join(Tokenizer(files["tok"], VOCAB).decode(a, b) for a, b in zip(ids, ids[1:])) + b"\n"


def test_prompt_speed_counts_the_prompt_tokens_fed(files):
    prompt = "the little dog saw a big red ball"
    from tokenizer import Tokenizer
    n = len(Tokenizer(files["tok"], VOCAB).encode(prompt))
    assert 12 < n < 64 - 5  # within the test model's seq_len
    _, _, whole = strict(files, "-i", prompt, "-n", str(n + 5))
    _, _, cut = strict(files, "-i", prompt, "-n", "12")  # run.c feeds the first 12 prompt tokens only
    assert f"prompt: {n} tokens in " in whole
    assert "prompt: 12 tokens in " in cut, cut


def test_help_prints_usage(files):
    rc, out, _ = run_py("-h")
    assert rc == 0 and b"Usage:" in out and b"--no-fastmath" in out


SOURCES = ("jit.py", "checkpoint.py", "model.py", "run.py", "tokenizer.py")


def test_no_arguments_and_no_demo_model_prints_usage_and_fails(tmp_path):
    for name in SOURCES:  # a checkout without demo/
        (tmp_path / name).write_bytes(open(os.path.join(ROOT, name), "rb").read())
    r = subprocess.run([sys.executable, str(tmp_path / "run.py")], capture_output=True, text=True,
                       timeout=HANG_TIMEOUT)
    assert r.returncode != 0 and "Usage:" in r.stderr and "Traceback" not in r.stderr


def test_second_start_loads_every_kernel_from_the_disk_cache(files, tmp_path):
    env = {"LLAMA2_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}
    rc, out1, _ = strict(files, "-n", "8", env=env)  # numba prints its cache log on stdout
    assert rc == 0 and b"data saved" in out1
    rc, out2, _ = strict(files, "-n", "8", env=env)
    assert rc == 0 and b"data loaded" in out2 and b"data saved" not in out2
    dirs = os.listdir(tmp_path)
    assert len(dirs) == 1 and dirs[0].startswith("off-serial-")  # one cache per mode


def test_no_mmap_uses_the_kernels_compiled_for_a_mapping(files, tmp_path):
    """The in-memory checkpoint is read-only like the mapping: the same array types, the same cached code."""
    env = {"LLAMA2_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}
    rc, out1, _ = strict(files, "-n", "8", env=env)
    assert rc == 0 and b"data saved" in out1
    rc, out2, _ = strict(files, "-n", "8", "--no-mmap", env=env)
    assert rc == 0 and b"data loaded" in out2 and b"data saved" not in out2


def test_every_mode_and_target_has_its_own_cache_directory(monkeypatch, tmp_path):
    import jit
    monkeypatch.setenv("LLAMA2_CACHE_DIR", str(tmp_path))
    dirs = {(fm, par): jit.cache_dir(fm, par)[0] for fm in jit.MODES for par in (False, True)}
    assert len(set(dirs.values())) == 6 and all(os.path.isdir(d) for d in dirs.values())
    monkeypatch.setattr(jit, "FEATURES", jit.FEATURES - {"avx512f"} | {"made-up-feature"})
    assert jit.cache_dir("off", False)[0] != dirs[("off", False)]  # another CPU: another directory


def test_an_unwritable_cache_falls_back_to_a_directory_of_this_mode(files, tmp_path):
    """A cache path that cannot be created (its parent is a file) is replaced, with a warning and the real path."""
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")
    bad = {"LLAMA2_CACHE_DIR": str(blocker / "cache")}
    rc, good_out, _ = strict(files, "-s", "3", "-n", "30")
    assert rc == 0
    for flags in (["--fastmath", "--threads", "1"], ["--no-fastmath", "--threads", "1"]):
        rc, out, err = run_py(files["model"], "-z", files["tok"], "-s", "3", "-n", "30", *flags, env=bad)
        assert rc == 0, err
        assert "warning: JIT cache" in err and "not writable" in err
        line = next(x for x in err.splitlines() if x.startswith("compile:"))
        path = line.split("cache ")[-1].rstrip(")")
        assert os.path.isdir(path) and ("off-" if "--no-fastmath" in flags else "on-") in path
    assert out == good_out  # strict stays strict after a fast-math run with the same broken setting
    assert not os.path.exists(os.path.join(ROOT, "__pycache__", "model.forward-1.py311.nbi"))


def test_unusable_home_falls_back_too(files, tmp_path):
    blocker = tmp_path / "home_is_a_file"
    blocker.write_bytes(b"")
    env = {"HOME": str(blocker), "XDG_CACHE_HOME": "", "LLAMA2_CACHE_DIR": ""}
    rc, out, err = strict(files, "-n", "8", env=env)
    assert rc == 0, err
    assert "not writable" in err


# ---- chat --------------------------------------------------------------------

def test_chat_reads_system_and_user_prompts_from_stdin_and_ends_at_end_of_input(files):
    rc, out, err = strict(files, "-m", "chat", "-s", "9", "-n", "64", stdin=b"be kind\nhello dog\n")
    assert rc == 0, err
    assert out.startswith(b"Enter system prompt (optional): User: Assistant: ")
    assert "Traceback" not in err


def test_chat_with_prompts_on_the_command_line(files):
    rc, out, err = strict(files, "-m", "chat", "-y", "be kind", "-i", "hello", "-n", "64", "-s", "2")
    assert rc == 0, err
    assert out.startswith(b"Assistant: ")
    assert b"Enter system prompt" not in out


# ---- bad input: one line on stderr, non-zero exit, no traceback ---------------

def _bad(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def one_line_error(rc, err, *needles):
    assert rc != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("args, needle", [
    (["-q", "1"], "-q"),
    (["-t", "hot"], "-t"),
    (["-t", "nan"], "-t"),
    (["-n", "1.5"], "-n"),
    (["-s", "abc"], "-s"),
    (["-p", ""], "-p"),
    (["--threads", "0"], "--threads"),
    (["--threads", "two"], "--threads"),
    (["-m", "poem"], "poem"),
    (["-n"], "-n"),
    (["--fastmath=maybe"], "--fastmath"),
])
def test_bad_flags(files, args, needle):
    rc, _, err = run_py(files["model"], "-z", files["tok"], *args)
    one_line_error(rc, err, needle)


def test_missing_checkpoint(files, tmp_path):
    rc, _, err = run_py(tmp_path / "nope.bin", "-z", files["tok"])
    one_line_error(rc, err, "nope.bin")


def test_checkpoint_is_a_directory(files, tmp_path):
    rc, _, err = run_py(tmp_path, "-z", files["tok"])
    one_line_error(rc, err, str(tmp_path))


def test_truncated_checkpoint(files, tmp_path):
    data = open(files["model"], "rb").read()
    rc, _, err = run_py(_bad(tmp_path, "cut.bin", data[:-100]), "-z", files["tok"])
    one_line_error(rc, err, "cut.bin", "truncated")


def test_checkpoint_with_trailing_garbage(files, tmp_path):
    data = open(files["model"], "rb").read()
    rc, _, err = run_py(_bad(tmp_path, "long.bin", data + b"\0" * 8), "-z", files["tok"])
    one_line_error(rc, err, "long.bin")


@pytest.mark.parametrize("header, needle", [
    (b"", "too short"),
    (b"\x01\x02", "too short"),
    (struct.pack("<7i", 0, 0, 0, 0, 0, 0, 0), "dim"),
    (struct.pack("<7i", 30, 64, 2, 4, 4, 100, 64), "multiple of n_heads"),
    (struct.pack("<7i", 32, 64, 2, 4, 3, 100, 64), "n_kv_heads"),
    (struct.pack("<7i", 32, 64, -2, 4, 4, 100, 64), "n_layers"),
    (struct.pack("<7i", 2**30, 2**30, 2**30, 1, 1, 2**30, 2**30), "truncated"),  # no overflow
    (struct.pack("<Ii", MAGIC, 7) + bytes(248), "version 7"),
    (struct.pack("<Ii", MAGIC, 1) + bytes(8), "too short"),
])
def test_nonsensical_headers(files, tmp_path, header, needle):
    rc, _, err = run_py(_bad(tmp_path, "bad.bin", header), "-z", files["tok"])
    one_line_error(rc, err, "bad.bin", needle)


def test_truncated_int8_checkpoint_is_one_line(files, tmp_path):
    hdr = struct.pack("<Ii7iBi", MAGIC, 2, 32, 64, 2, 4, 4, VOCAB, 64, 1, 32)
    path = _bad(tmp_path, "q80.bin", hdr + bytes(256 - len(hdr)) + bytes(1000))
    rc, _, err = run_py(path, "-z", files["tok"])
    one_line_error(rc, err, "q80.bin", "group size 32", "truncated")


def test_tokenizer_shorter_than_the_vocabulary(files):
    rc, _, err = run_py(files["model"], "-z", files["tok_small"])
    one_line_error(rc, err, "tok_small.bin", str(VOCAB))


def test_missing_tokenizer(files, tmp_path):
    rc, _, err = run_py(files["model"], cwd=tmp_path)  # default tokenizer.bin is not there
    one_line_error(rc, err, "tokenizer.bin")


def test_garbage_tokenizer(files, tmp_path):
    path = _bad(tmp_path, "tok.bin", struct.pack("<ifi", 10, 0.0, 2**30) + b"ab")
    rc, _, err = run_py(files["model"], "-z", path)
    one_line_error(rc, err, "tok.bin")


# ---- profiler ------------------------------------------------------------------

def test_profile_prints_the_same_text_and_rows_that_add_up(files, tmp_path):
    import json
    args = ("-s", "3", "-n", "48", "-t", "0.9", "-i", "the little dog saw a big red ball")
    _, plain, _ = strict(files, *args)
    out_json = tmp_path / "profile.json"
    rc, out, err = strict(files, *args, f"--profile=json={out_json}")
    assert rc == 0, err
    assert out == plain  # profiling does not change the text
    r = json.loads(out_json.read_text())
    layers = 2
    prompt, gen = r["prompt"], r["generation"]
    n_prompt = prompt["tokens"]
    assert n_prompt > 5
    rows = {row["kernel"]: row for row in prompt["rows"]}
    assert rows["q/k/v matmul"]["calls"] == layers  # the whole prompt in one pass
    assert rows["classifier"]["calls"] == 1
    rows = {row["kernel"]: row for row in gen["rows"]}
    tokens = gen["tokens"]
    assert 10 < tokens <= 48 - n_prompt
    for name in ["embedding", "rmsnorm", "q/k/v matmul", "RoPE + KV store", "attention", "output projection",
                 "w1/w3 + SwiGLU", "w2 matmul", "classifier", "sampling", "decoding and output", "call from Python"]:
        assert name in rows, name
    assert rows["classifier"]["calls"] == tokens
    assert rows["q/k/v matmul"]["calls"] == tokens * layers
    assert rows["rmsnorm"]["calls"] == tokens * (2 * layers + 1)
    assert abs(sum(row["share"] for row in gen["rows"]) - 1) < 1e-6
    # the timed rows never add up to more than the measured time (nothing counted twice); the rest is the loop's
    assert gen["timed_ms"] <= gen["measured_ms"] * 1.001
    assert abs(gen["rows_ms"] - gen["measured_ms"]) <= 1e-6 * gen["measured_ms"]
    # the classifier reads vocab x dim float32 weights per call
    c = rows["classifier"]
    assert abs(c["gbytes"] * c["total_ms"] / 1e3 * 1e9 - 4 * VOCAB * 32 * tokens) < 1e-3 * 4 * VOCAB * 32 * tokens


def test_profile_table(files):
    rc, out, err = strict(files, "-n", "20", "--profile")
    assert rc == 0, err
    assert "kernel" in err and "GFLOP/s" in err and "sum of rows" in err and "profile of generation" in err


def test_profile_in_chat_mode_is_refused(files):
    rc, _, err = strict(files, "-m", "chat", "--profile")
    one_line_error(rc, err, "--profile")


def test_profile_json_needs_a_file(files):
    rc, _, err = strict(files, "--profile", "json")
    one_line_error(rc, err, "json=FILE")


def test_changing_either_kernel_file_selects_a_fresh_jit_cache(tmp_path):
    """run.py's cached kernels embed model.py's and jit.py's; an edit to any must not reuse stale code."""
    for name in SOURCES:
        (tmp_path / name).write_bytes(open(os.path.join(ROOT, name), "rb").read())

    def cache_dir():
        r = subprocess.run([sys.executable, "-c", "import jit; print(jit.CACHE_DIR)"], cwd=tmp_path,
                           capture_output=True, text=True, env=dict(os.environ, LLAMA2_FASTMATH="off",
                                                                    LLAMA2_THREADS="1"))
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    first = cache_dir()
    with open(tmp_path / "run.py", "a") as f:
        f.write("\n# an edit\n")
    second = cache_dir()
    with open(tmp_path / "model.py", "a") as f:
        f.write("\n# an edit\n")
    third = cache_dir()
    assert len({first, second, third}) == 3
    assert os.path.dirname(first) == os.path.dirname(third)  # same mode directory


# ---- the last tracebacks: each one line on stderr, a non-zero exit ----------------

def test_subnormal_temperature_is_refused(files):
    rc, _, err = run_py(files["model"], "-z", files["tok"], "-t", "1e-45")
    one_line_error(rc, err, "-t", "-t 0")


def test_temperature_beyond_float32_runs_without_a_warning(files):
    """1e39 is inf as a float32, as C's cast gives: every logit / inf is 0, a uniform distribution."""
    rc, out, err = strict(files, "-t", "1e39", "-s", "5", "-n", "20")
    assert rc == 0, err
    assert "Warning" not in err and "overflow" not in err


@pytest.mark.parametrize("seq_len", [2**31 - 1, 2**24])
def test_a_kv_cache_too_big_for_memory_says_how_big(files, tmp_path, seq_len):
    w = random_weights(32, 64, 2, 4, 2, VOCAB, 64, shared=False, seed=4, scale=0.1)
    path = tmp_path / "long.bin"
    write_checkpoint(path, w, version=1)
    data = bytearray(path.read_bytes())
    data[8 + 6 * 4:8 + 7 * 4] = struct.pack("<i", seq_len)  # v1 files do not grow with seq_len
    path.write_bytes(bytes(data))
    rc, _, err = run_py(path, "-z", files["tok"], "-n", "16")
    if seq_len == 2**31 - 1 or rc != 0:  # 2^24 fits in a large machine's memory (pages are touched lazily)
        one_line_error(rc, err, "long.bin", "KV cache", "GB")


def test_a_fifo_is_not_a_checkpoint(files, tmp_path):
    fifo = tmp_path / "pipe.bin"
    os.mkfifo(fifo)
    rc, _, err = run_py(fifo, "-z", files["tok"])
    one_line_error(rc, err, "pipe.bin", "regular file")


def test_closed_stdout_is_one_line(files):
    r = subprocess.run([sys.executable, RUN, files["model"], "-z", files["tok"], "-n", "8"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=HANG_TIMEOUT,
                       preexec_fn=lambda: os.close(1))
    one_line_error(r.returncode, r.stderr.decode(), "stdout")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_stdout_is_one_line(files):
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, RUN, files["model"], "-z", files["tok"], "-n", "8"],
                           stdout=full, stderr=subprocess.PIPE, timeout=HANG_TIMEOUT)
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err
    assert "No space left" in err and len([x for x in err.splitlines() if x.startswith("run.py: error")]) == 1


def test_more_threads_than_cores_are_clamped_with_a_message(files):
    cores = len(os.sched_getaffinity(0))
    rc, out, err = strict(files, "-n", "8")
    rc2, out2, err2 = run_py(files["model"], "-z", files["tok"], "-n", "8", "--no-fastmath",
                             "--threads", str(cores + 3))
    assert rc2 == 0, err2
    assert f"--threads {cores + 3} is more than the {cores} cores" in err2


@pytest.mark.slow
def test_ctrl_c_while_compiling_exits_quietly(files, tmp_path):
    import signal
    import time
    p = subprocess.Popen([sys.executable, RUN, files["model"], "-z", files["tok"]], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=dict(os.environ, LLAMA2_CACHE_DIR=str(tmp_path)))
    time.sleep(3)  # past the imports, into the compile of an empty cache
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err


@pytest.mark.slow
@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_the_same_command_prints_the_same_bytes_cold_and_warm(files, tmp_path, threads, kind):
    path = files["model"]
    if kind == "int8":
        w = random_weights(32, 64, 2, 4, 2, VOCAB, 64, shared=False, seed=4, scale=0.1)
        path = str(write_checkpoint(tmp_path / "q.bin", w, version=2, group_size=32))
    env = {"LLAMA2_CACHE_DIR": str(tmp_path / "cache")}
    args = (path, "-z", files["tok"], "-s", "9", "-n", "64", "-i", "the dog and the cat", "--threads", threads)
    cold = run_py(*args, env=env)
    warm = run_py(*args, env=env)
    assert cold[0] == warm[0] == 0, cold[2]
    assert cold[1] == warm[1]
