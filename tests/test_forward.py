"""The forward pass against independent references (tests/reference.py)."""

import mmap
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import model
from checkpoints import random_weights, write_checkpoint
from reference import NumpyModel, ScalarModel

SHAPES = {
    # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    "mha": (48, 128, 3, 6, 6, 97, 40),
    "gqa": (64, 172, 2, 8, 2, 80, 40),
    "mqa": (32, 96, 2, 4, 1, 50, 40),
    "one-head": (16, 40, 1, 1, 1, 33, 40),
}


def _maxdiff(a, ref):
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "unshared"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_logits_match_numpy_reference(tmp_path, shape, shared):
    w = random_weights(*SHAPES[shape], shared=shared, seed=len(shape))
    path = write_checkpoint(tmp_path / "m.bin", w, version=0)
    t = model.Transformer(str(path))
    ref = NumpyModel(w)
    rng = np.random.default_rng(0)
    worst = 0.0
    for pos in range(w["config"]["seq_len"]):
        tok = int(rng.integers(w["config"]["vocab_size"]))
        worst = max(worst, _maxdiff(t.forward(tok, pos), ref.forward(tok, pos)))
    print(f"{shape} shared={shared}: maxdiff {worst:.2e} over 40 positions", "OK" if worst < 1e-4 else "NOT OK")
    assert worst < 1e-4


def test_strict_kernels_equal_scalar_float32_reference_bit_for_bit(tmp_path):
    w = random_weights(16, 24, 2, 4, 2, 32, 8, shared=False, seed=7)
    path = write_checkpoint(tmp_path / "m.bin", w, version=0)
    t = model.Transformer(str(path))
    ref = ScalarModel(w)
    assert model.FASTMATH == "off"
    for pos, tok in enumerate([1, 30, 7, 7, 0, 12, 2, 31]):
        got = t.forward(tok, pos)
        want = ref.forward(tok, pos)
        differ = int(np.sum(got.view(np.int32) != want.view(np.int32)))
        print(f"pos {pos}: {differ} of {got.size} logits differ in any bit")
        assert differ == 0


@pytest.mark.parametrize("shared", [True, False])
def test_v0_and_v1_files_of_the_same_weights_give_identical_logits(tmp_path, shared):
    w = random_weights(*SHAPES["gqa"], shared=shared, seed=11)
    t0 = model.Transformer(str(write_checkpoint(tmp_path / "v0.bin", w, version=0)))
    t1 = model.Transformer(str(write_checkpoint(tmp_path / "v1.bin", w, version=1)))
    assert (t0.version, t1.version) == (0, 1)
    for pos, tok in enumerate([3, 1, 4, 1, 5, 9, 2, 6]):
        assert np.array_equal(t0.forward(tok, pos), t1.forward(tok, pos))


def test_mmap_and_in_memory_loading_agree(tmp_path):
    w = random_weights(*SHAPES["mqa"], seed=5)
    path = str(write_checkpoint(tmp_path / "m.bin", w))
    a = model.Transformer(path, mmap=True)
    b = model.Transformer(path, mmap=False)
    assert not a.weights.wq.flags.writeable  # read-only mapping, never written
    for pos in range(5):
        assert np.array_equal(a.forward(pos, pos), b.forward(pos, pos))


def test_the_mapping_asks_for_huge_pages(tmp_path):
    """The checkpoint's mapping carries MADV_HUGEPAGE ("hg" in its smaps VmFlags, Linux)."""
    if not os.path.exists("/proc/self/smaps") or not hasattr(mmap, "MADV_HUGEPAGE"):
        pytest.skip("needs Linux with transparent huge pages")
    w = random_weights(*SHAPES["mqa"], seed=5)
    path = str(write_checkpoint(tmp_path / "hp.bin", w))
    t = model.Transformer(path, mmap=True)
    start = t.weights.wq.ctypes.data
    flags = None
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.endswith("hp.bin"):
            lo, hi = (int(a, 16) for a in line.split()[0].split("-"))
            if lo <= start < hi:
                flags = next(x for x in lines[i + 1:] if x.startswith("VmFlags:")).split()[1:]
    print("VmFlags:", flags)
    assert flags is not None and "hg" in flags


def test_weights_are_zero_copy_views_of_one_flat_array(tmp_path):
    w = random_weights(*SHAPES["gqa"], shared=False, seed=2)
    t = model.Transformer(str(write_checkpoint(tmp_path / "m.bin", w)))
    bases = {id(a.base if a.base is not None else a) for a in t.weights}
    assert len(bases) == 1
    np.testing.assert_array_equal(t.weights.wk, w["wk"])
    np.testing.assert_array_equal(t.weights.wcls, w["wcls"])
    np.testing.assert_array_equal(t.weights.rms_final_weight, w["rms_final"])


WIDENING = r"fpext float\b.* to double"

_IR_CHECK = """
import re, sys
import numpy as np
sys.path[:0] = sys.argv[1:3]
import model, run
from checkpoints import random_weights, write_checkpoint
w = random_weights(64, 172, 2, 8, 2, 80, 40, seed=1)
t = model.Transformer(str(write_checkpoint(sys.argv[3], w)))
run.warm_up(t, run.Sampler(80, 1.0, 0.9, 42))
t.forward_profiled(3, 1, lambda name: None)
for mod in (model, run):
    for name, disp in sorted(vars(mod).items()):
        for sig in getattr(disp, "signatures", []) if hasattr(disp, "inspect_llvm") else []:
            bad, wrapper = [], False
            for l in disp.inspect_llvm(sig).splitlines():
                if l.startswith("define"):  # skip the CPython wrapper: it boxes floats as doubles
                    wrapper = "cpython" in l
                elif not wrapper and re.search(sys.argv[4], l):
                    bad.append(l.strip())
            print(mod.__name__ + "." + name, len(bad), *bad[:3], sep="\\t")
"""


@pytest.mark.parametrize("mode", [("off", 1), ("on", 2)], ids=["strict-serial", "fast-parallel"])
def test_no_kernel_widens_float32_to_float64(tmp_path, mode):
    """No compiled kernel turns a float32 into a double (fpext): every float op stays float32.

    Cached code cannot be inspected, so the kernels are compiled afresh in a
    subprocess with an empty cache, in the given mode.
    """
    from conftest import ROOT, TESTS
    env = dict(os.environ, LLAMA2_FASTMATH=mode[0], LLAMA2_THREADS=str(mode[1]),
               LLAMA2_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", _IR_CHECK, ROOT, TESTS, str(tmp_path / "m.bin"), WIDENING],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    print("\n".join(f"{r[0]}: {r[1]} widening ops" for r in rows))
    checked = {r[0] for r in rows}
    assert {"model.forward", "model.matmul", "model.matmul_qkv", "model.matmul2", "model.ffn_up",
            "model.rmsnorm", "model.rope", "model.attention", "model.attention_scores",
            "model.attention_softmax", "model.attention_values", "model.softmax", "model.swiglu",
            "model.silu_mul", "run.sample_topp", "run.temperature_softmax"} <= checked
    bad = [r for r in rows if r[1] != "0"]
    assert not bad, bad


def test_the_widening_check_can_fail():
    """The IR pattern above does catch the classic mistakes (a bare float literal)."""
    import numba

    @numba.njit
    def bad(x):
        return x * 1e-5

    bad(np.float32(1.0))
    ir = bad.inspect_llvm(bad.signatures[0])
    assert re.search(WIDENING, ir)


def test_profiled_forward_gives_the_same_logits_bit_for_bit(tmp_path):
    """The profiler's kernel-by-kernel forward must not change the numbers it times."""
    w = random_weights(*SHAPES["gqa"], shared=False, seed=12)
    path = str(write_checkpoint(tmp_path / "m.bin", w))
    a, b = model.Transformer(path), model.Transformer(path)
    names = []
    for pos, tok in enumerate([1, 5, 9, 2, 77, 3]):
        want = a.forward(tok, pos).copy()
        got = b.forward_profiled(tok, pos, names.append)
        assert np.array_equal(got.view(np.int32), want.view(np.int32))
    assert {"embedding", "q/k/v matmul", "attention scores", "attention softmax", "attention weighted sum",
            "w1/w3 matmul", "SwiGLU", "w2 matmul", "classifier"} <= set(names)


_PROFILED_CHECK = """
import sys
import numpy as np
import model
a, b = model.Transformer(sys.argv[1]), model.Transformer(sys.argv[1])
for pos, tok in enumerate([1, 5, 9, 2, 77, 3]):
    want = a.forward(tok, pos).copy()
    got = b.forward_profiled(tok, pos, lambda name: None)
    assert np.array_equal(got.view(np.int32), want.view(np.int32)), (model.FASTMATH, pos)
print(model.FASTMATH, model.THREADS, "bit-identical")
"""


@pytest.mark.parametrize("mode", [("on", 2), ("unsafe", 1)], ids=["fast-parallel", "unsafe-serial"])
def test_profiled_forward_is_bit_identical_with_fast_math_too(tmp_path, mode):
    """With fast math a row's rounding depends on how rows are blocked; the profiler must block alike."""
    from conftest import ROOT
    w = random_weights(*SHAPES["gqa"], shared=False, seed=12)  # hidden_dim 172: a block tail too
    path = str(write_checkpoint(tmp_path / "m.bin", w))
    env = dict(os.environ, LLAMA2_FASTMATH=mode[0], LLAMA2_THREADS=str(mode[1]))
    out = subprocess.run([sys.executable, "-c", _PROFILED_CHECK, path], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    print(out.stdout)
    assert out.returncode == 0, out.stderr
