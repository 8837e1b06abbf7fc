"""Byte-for-byte against llama2.c itself, when a build of it is at hand.

Set LLAMA2C_DIR to a directory holding `run` (gcc -O3 build of run.c) to run
these; they are skipped otherwise (CI has no llama2.c: its code is never
committed here). See README "Checking against llama2.c".
"""

import os
import subprocess
import sys

import pytest

from checkpoints import random_weights, write_checkpoint, write_tokenizer
from conftest import HANG_TIMEOUT, ROOT, SHARED_MODELS

C_DIR = os.environ.get("LLAMA2C_DIR", "")
RUN_C = os.path.join(C_DIR, "run")
pytestmark = pytest.mark.skipif(not os.access(RUN_C, os.X_OK), reason="set LLAMA2C_DIR to a llama2.c build")

LLAMA_TOKENIZER = os.path.join(SHARED_MODELS, "tokenizer.bin")
STORIES260K = os.path.join(SHARED_MODELS, "stories260K.bin")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("vs_c")
    tok512 = write_tokenizer(d / "tok512.bin", 512)
    out = {
        "r512-gqa-unshared-flat": (write_checkpoint(d / "a.bin", random_weights(64, 172, 3, 8, 4, 512, 256,
                                                                                shared=False, seed=5, scale=0.05)),
                                   tok512),
        "r512-unshared-v0": (write_checkpoint(d / "b.bin", random_weights(48, 128, 2, 6, 2, 512, 128, shared=False,
                                                                          seed=6, scale=0.1)), tok512),
        "r512-mqa-sharp": (write_checkpoint(d / "c.bin", random_weights(32, 80, 2, 4, 1, 512, 96, seed=8, scale=0.6)),
                           tok512),
    }
    if os.path.exists(STORIES260K):
        out["stories260K"] = (STORIES260K, tok512)
    if os.path.exists(LLAMA_TOKENIZER):
        out["r32000"] = (write_checkpoint(d / "d.bin", random_weights(64, 172, 2, 8, 4, 32000, 128, seed=9, scale=0.1)),
                         LLAMA_TOKENIZER)
    return out


CASES = [
    ["-t", "0", "-n", "0"],
    ["-s", "42", "-n", "200", "-i", "Once upon a time, the little dog"],
    ["-t", "0.8", "-p", "0.95", "-s", "7", "-n", "120", "-i", "Hello  world\u00e9 \u65e5\u672c \U0001f999 123"],
    ["-t", "1.0", "-p", "1.0", "-s", "3", "-n", "90"],
    ["-t", "1.3", "-p", "0.5", "-s", "99", "-n", "128", "-i", "the ball"],
    ["-t", "0.5", "-p", "0", "-s", "12345", "-n", "64"],
    ["-t", "-2", "-p", "7", "-s", "-5", "-n", "-3"],  # clamps
    ["-s", "2", "-n", "5", "-i", "a much longer prompt than the five steps allowed here"],
]


def _run(cmd, stdin=None):
    r = subprocess.run(cmd, capture_output=True, input=stdin, timeout=HANG_TIMEOUT)
    return r.returncode, r.stdout


def assert_same_output(binary, models, name, args, stdin=None):
    """(exit code, stdout) of the C binary and of run.py --no-fastmath --threads 1 are equal."""
    if name not in models:
        pytest.skip(f"{name} needs ../shared/models")
    ckpt, tok = models[name]
    args = [str(ckpt), "-z", str(tok)] + args
    want = _run([binary] + args, stdin)
    got = _run([sys.executable, os.path.join(ROOT, "run.py")] + args + ["--no-fastmath", "--threads", "1"], stdin)
    assert got == want


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("name", ["r512-gqa-unshared-flat", "r512-unshared-v0", "r512-mqa-sharp", "stories260K",
                                  "r32000"])
def test_generate_matches_c(models, name, case):
    assert_same_output(RUN_C, models, name, CASES[case])


@pytest.mark.parametrize("name", ["r512-gqa-unshared-flat", "stories260K", "r32000"])
def test_chat_matches_c(models, name):
    # run.c loops on its last line when stdin ends, so give it enough turns to use every step
    stdin = ("You are a dog.\nhello there\n" + "tell me more\n" * 40).encode()
    assert_same_output(RUN_C, models, name, ["-m", "chat", "-s", "5", "-n", "256", "-t", "0.9"], stdin)


RUNQ_C = os.path.join(C_DIR, "runq")


@pytest.fixture(scope="module")
def q8_models(tmp_path_factory, models):
    d = tmp_path_factory.mktemp("vs_runq")
    tok512 = models["r512-mqa-sharp"][1]
    out = {
        "q8-gqa-gs16": (write_checkpoint(d / "a.bin", random_weights(64, 128, 3, 8, 4, 512, 256, seed=15, scale=0.5),
                                         version=2, group_size=16), tok512),
        "q8-unshared-gs32": (write_checkpoint(d / "b.bin", random_weights(64, 96, 2, 4, 4, 512, 128, shared=False,
                                                                          seed=16, scale=0.1),
                                              version=2, group_size=32), tok512),
    }
    if os.path.exists(STORIES260K):
        q = d / "stories260K_q80.bin"
        subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "quantize", STORIES260K, str(q)],
                       check=True, capture_output=True)
        out["stories260K-q80"] = (q, tok512)
    return out


@pytest.mark.skipif(not os.access(RUNQ_C, os.X_OK), reason="set LLAMA2C_DIR to a llama2.c build with runq")
@pytest.mark.parametrize("case", [1, 2, 4, 5, 7])
@pytest.mark.parametrize("name", ["q8-gqa-gs16", "q8-unshared-gs32", "stories260K-q80"])
def test_int8_generate_matches_runq(q8_models, name, case):
    assert_same_output(RUNQ_C, q8_models, name, CASES[case])
