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
from conftest import HANG_TIMEOUT
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
    import jit
    assert jit.FASTMATH == "off"
    for pos, tok in enumerate([1, 30, 7, 7, 0, 12, 2, 31]):
        got = t.forward(tok, pos)
        want = ref.forward(tok, pos)
        differ = int(np.sum(got.view(np.int32) != want.view(np.int32)))
        print(f"pos {pos}: {differ} of {got.size} logits differ in any bit")
        assert differ == 0


@pytest.mark.parametrize("head_size", [8, 16, 40, 48, 144, 272])
def test_attention_value_sum_is_each_elements_sum_over_positions(head_size):
    """Every path of attention's weighted sum of values (tail only, a few vectors carried in registers,
    more vectors than one register tile holds) against C's loop xh[i] += a[t] * v[t, i]."""
    import jit
    import numba

    @numba.njit
    def weighted_sum(xh, a, values):
        model._weighted_sum(xh, a, values)

    rng = np.random.default_rng(head_size)
    n = 37
    a = rng.random(n).astype(np.float32)
    values = rng.standard_normal((n, head_size)).astype(np.float32)  # one kv head's cached values
    xh = np.full(head_size, np.nan, np.float32)
    weighted_sum(xh, a, values)
    want = np.zeros(head_size, np.float32)
    for t in range(n):  # float32 arrays: each product and each sum rounded, as C's loop
        want = want + a[t] * values[t]
    if jit.STRICT:
        differ = int(np.sum(xh.view(np.int32) != want.view(np.int32)))
        print(f"head_size {head_size}: {differ} of {head_size} sums differ in any bit")
        assert differ == 0
    else:  # fused multiply-adds round once per step
        worst = float(np.max(np.abs(xh - want)) / np.max(np.abs(want)))
        print(f"head_size {head_size}: maxdiff {worst:.2e}", "OK" if worst < 1e-5 else "NOT OK")
        assert worst < 1e-5


@pytest.mark.parametrize("head_size", [8, 48, 64])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 200])
def test_attention_scores_are_cs_dot_of_the_query_with_each_cached_key(head_size, n):
    """_scores over n positions (part of a block, whole blocks, more blocks than one register tile) against
    C's score loop, with the keys written by store_kv into the cache's blocks of 16 positions."""
    import jit
    import numba

    @numba.njit
    def scores(a, qh, blocks, n, scale):
        model._scores(a, qh, blocks, n, scale)

    rng = np.random.default_rng(n + head_size)
    keys = rng.standard_normal((n, 2 * head_size)).astype(np.float32)  # two kv heads; the scores read head 1
    cache = np.full((1, 2, model.seq_blocks(n), head_size, jit.LANES), np.nan, np.float32)
    values = np.zeros((1, 2, n, head_size), np.float32)
    for t in range(n):
        model.store_kv(cache, values, keys[t:t + 1], keys[t:t + 1], np.array([t], np.int32), np.zeros(1, np.int32))
    qh = rng.standard_normal(head_size).astype(np.float32)
    scale = np.sqrt(np.float32(head_size))
    a = np.zeros(model.seq_blocks(n) * jit.LANES, np.float32)
    scores(a, qh, cache[0, 1], n, scale)
    want = np.zeros(n, np.float32)
    for t in range(n):
        val = np.float32(0.0)
        for i in range(head_size):  # C's loop: each product and each sum rounded
            val = np.float32(val + qh[i] * keys[t, head_size + i])
        want[t] = val / scale
    if jit.STRICT:
        differ = int(np.sum(a[:n].view(np.int32) != want.view(np.int32)))
        print(f"head_size {head_size}, {n} positions: {differ} scores differ in any bit")
        assert differ == 0
    else:
        worst = float(np.max(np.abs(a[:n] - want)))
        print(f"head_size {head_size}, {n} positions: maxdiff {worst:.2e}", "OK" if worst < 1e-5 else "NOT OK")
        assert worst < 1e-5


@pytest.mark.parametrize("head_size,kv_mul", [(16, 1), (48, 2), (72, 1)])
def test_attention_of_a_prompts_rows_together_gives_each_rows_bits_alone(head_size, kv_mul):
    """Rows of one sequence share their key and value loads (attention's row groups); each row's scores,
    weights and sums must be the bits it gets when it is the only row, in every mode. Mixed batches too:
    a group holding rows of two sequences, positions out of order, a group of one row at the end."""
    rng = np.random.default_rng(head_size)
    n_kv, seq_len = 2, 70
    n_heads, length = n_kv * kv_mul, 64
    cache = rng.standard_normal((2, n_kv, model.seq_blocks(seq_len), head_size, model.LANES)).astype(np.float32)
    values = rng.standard_normal((2, n_kv, seq_len, head_size)).astype(np.float32)
    batches = [(np.arange(length - 13, length, dtype=np.int32), np.zeros(13, np.int32)),
               (np.array([5, 40, 2, 3, 60, 61, 62], np.int32), np.array([0, 0, 0, 1, 1, 1, 0], np.int32)),
               (np.array([10, 11, 12], np.int32), np.array([0, 1, 0], np.int32))]
    for pos, seq in batches:
        n = pos.shape[0]
        q = rng.standard_normal((n, n_heads * head_size)).astype(np.float32)
        att = np.full((n, n_heads, model.seq_blocks(seq_len) * model.LANES), np.nan, np.float32)
        xb = np.full((n, n_heads * head_size), np.nan, np.float32)
        model.attention(xb, att, q, cache, values, pos, seq)
        for b in range(n):
            att1 = np.full((1,) + att.shape[1:], np.nan, np.float32)
            xb1 = np.full((1, xb.shape[1]), np.nan, np.float32)
            model.attention(xb1, att1, q[b:b + 1], cache, values, pos[b:b + 1], seq[b:b + 1])
            differ = int(np.sum(xb[b].view(np.int32) != xb1[0].view(np.int32)))
            weights = att[b, :, :pos[b] + 1], att1[0, :, :pos[b] + 1]
            differ += int(np.sum(weights[0].view(np.int32) != weights[1].view(np.int32)))
            assert differ == 0, f"row {b} (position {pos[b]}, sequence {seq[b]}): {differ} values differ"
    print(f"head_size {head_size}, kv_mul {kv_mul}: rows together = rows alone, bit for bit")


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


@pytest.mark.parametrize("version", [0, 1])
def test_activations_and_weights_read_into_memory_start_on_cache_lines(tmp_path, version):
    """Every run-state buffer, and (with mmap=False) every tensor of a file whose header is 28 bytes (v0) or 256
    (v1), starts on a 64-byte line, where vector loads do not straddle two lines; the values are the file's."""
    w = random_weights(*SHAPES["gqa"], shared=False, seed=2)
    path = str(write_checkpoint(tmp_path / "m.bin", w, version=version))
    t = model.Transformer(path, mmap=False, rows=5, seqs=3)
    mapped = model.Transformer(path, mmap=True)
    for name in t.state._fields:
        a = getattr(t.state, name)
        assert a.size == 0 or a.ctypes.data % 64 == 0, name  # (an fp32 model has no int8 buffers)
    for name in ("wq", "wk", "w1", "w2", "wcls"):
        a = getattr(t.weights, name)
        assert a.ctypes.data % 64 == 0 and not a.flags.writeable, name
        assert np.array_equal(a, getattr(mapped.weights, name)), name
    assert np.array_equal(t.state.key_cache, np.zeros_like(t.state.key_cache))


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
# LLVM fast-math flags on an instruction: with any of them LLVM may change a
# result differently in each compiled copy of a function (jit.py)
FAST_FLAGS = r"\b(fadd|fsub|fmul|fdiv|frem|fcmp|fneg|call)\b.*\b(fast|reassoc|contract|arcp|afn|nnan|ninf|nsz)\b"

_IR_CHECK = """
import re, sys
import numpy as np
sys.path[:0] = sys.argv[1:3]
import model, run
from checkpoints import random_weights, write_checkpoint
w = random_weights(64, 172, 2, 8, 2, 80, 40, seed=1)
t = model.Transformer(str(write_checkpoint(sys.argv[3], w)), rows=8)
run.warm_up(t, run.Sampler(80, 1.0, 0.9, 42))
t.prefill([1, 2, 3, 4, 5, 6], 0)
t.shift_cache(0, 1, 2, 6)
patterns = sys.argv[4:]
for mod in (model, run):
    for name, disp in sorted(vars(mod).items()):
        for sig in getattr(disp, "signatures", []) if hasattr(disp, "inspect_llvm") else []:
            bad, wrapper = [[] for _ in patterns], False
            for l in disp.inspect_llvm(sig).splitlines():
                if l.startswith("define"):  # skip the CPython wrapper: it boxes floats as doubles
                    wrapper = "cpython" in l
                elif not wrapper:
                    for k, pat in enumerate(patterns):
                        if re.search(pat, l):
                            bad[k].append(l.strip())
            print(mod.__name__ + "." + name, *[len(b) for b in bad], *[b[0] for b in bad if b][:2], sep="\\t")
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", [("off", 1), ("on", 2), ("unsafe", 1)], ids=["strict-serial", "fast-parallel",
                                                                          "unsafe-serial"])
def test_no_kernel_widens_to_float64_or_carries_fast_math_flags(tmp_path, mode):
    """Every float op stays float32 (no fpext), and no instruction carries an LLVM fast-math flag.

    Cached code cannot be inspected, so the kernels are compiled afresh in a
    subprocess with an empty cache, in the given mode.
    """
    from conftest import ROOT, TESTS
    env = dict(os.environ, LLAMA2_FASTMATH=mode[0], LLAMA2_THREADS=str(mode[1]),
               LLAMA2_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", _IR_CHECK, ROOT, TESTS, str(tmp_path / "m.bin"), WIDENING,
                          FAST_FLAGS], env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    print("\n".join(f"{r[0]}: {r[1]} widening ops, {r[2]} fast-math flags" for r in rows))
    checked = {r[0] for r in rows}
    assert {"model.forward", "model.matmuls", "model.rmsnorm", "model.rope", "model.attention", "model.softmax",
            "model.swiglu", "model.shift_cache", "run.sample_topp", "run.temperature_softmax"} <= checked
    bad = [r for r in rows if r[1] != "0" or r[2] != "0"]
    assert not bad, bad


def test_the_ir_checks_can_fail():
    """The IR patterns above do catch a bare float literal and a fastmath=True function."""
    import numba

    @numba.njit
    def bad(x):
        return x * 1e-5

    @numba.njit(fastmath=True)
    def fast(a):
        s = np.float32(0.0)
        for v in a:
            s += v
        return s

    bad(np.float32(1.0))
    fast(np.ones(4, np.float32))
    assert re.search(WIDENING, bad.inspect_llvm(bad.signatures[0]))
    assert any(re.search(FAST_FLAGS, line) for line in fast.inspect_llvm(fast.signatures[0]).splitlines())


# ---- one forward for every batch: prefill, batched decoding, the profile ----------------

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forward_probe.py")


def _same_bits(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.int32), b.view(np.int32))


def check_probe(r, label):
    """Within one run: prefill == one at a time (logits and KV cache), batched == alone, profiled == plain."""
    for a, b in [("prefill", "single"), ("kv_prefill", "kv_single"), ("batched", "alone"), ("profiled", "single")]:
        differ = int(np.sum(r[a].view(np.int32) != r[b].view(np.int32)))
        print(f"{label}: {a} vs {b}: {differ} of {r[a].size} values differ in any bit")
        assert _same_bits(r[a], r[b]), (label, a, b)


# the gqa shape with hidden_dim 171 and 79 words: tails after the blocks of 48 rows, the vector tiles and
# the two-row pairs of one-token matmuls, and columns past the last 16-float vector
PROBE_SHAPE = (64, 171, 2, 8, 2, 79, 40)


@pytest.fixture(scope="module")
def probe_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    w = random_weights(*PROBE_SHAPE, shared=False, seed=12)
    w8 = random_weights(64, 192, 2, 8, 2, 80, 40, shared=False, seed=13)  # int8 groups of 32
    return {"fp32": str(write_checkpoint(d / "m.bin", w)),
            "int8": str(write_checkpoint(d / "q.bin", w8, version=2, group_size=32))}


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_prefill_batches_and_profile_give_the_same_bits_as_one_token_at_a_time(probe_models, kind):
    from forward_probe import probe
    check_probe(probe(probe_models[kind]), f"strict serial {kind}")


def run_probe(path, out, **env):
    r = subprocess.run([sys.executable, PROBE, path, str(out)], env=dict(os.environ, **env),
                       capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert r.returncode == 0, r.stderr
    return dict(np.load(out))


MODES = [dict(LLAMA2_FASTMATH="on", LLAMA2_THREADS="2"), dict(LLAMA2_FASTMATH="unsafe", LLAMA2_THREADS="1"),
         dict(LLAMA2_FASTMATH="off", LLAMA2_THREADS="2")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES, ids=["fast-2", "unsafe-1", "strict-2"])
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_compiled_and_cached_code_give_the_same_bits_in_every_mode(probe_models, tmp_path, mode, kind):
    """A cold run (compiling into an empty cache) and a warm one (loading it) print the same logits.

    Also within each run: prefill, batched decoding and the profile change no bit.
    """
    env = dict(mode, LLAMA2_CACHE_DIR=str(tmp_path / "cache"))
    cold = run_probe(probe_models[kind], tmp_path / "cold.npz", **env)
    warm = run_probe(probe_models[kind], tmp_path / "warm.npz", **env)
    check_probe(cold, f"{mode} {kind} cold")
    for key in cold:
        assert _same_bits(cold[key], warm[key]), f"{key}: the cached code rounds differently"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_an_avx2_target_compiled_and_cached_gives_the_same_bits(probe_models, tmp_path, kind):
    """The AVX2 tier (where LLVM's own reassociation made cached code round differently), fast math."""
    import jit
    env = dict(jit.TIERS["haswell"], LLAMA2_FASTMATH="on", LLAMA2_THREADS="2", LLAMA2_CACHE_DIR=str(tmp_path))
    cold = run_probe(probe_models[kind], tmp_path / "cold.npz", **env)
    warm = run_probe(probe_models[kind], tmp_path / "warm.npz", **env)
    check_probe(cold, f"haswell {kind}")
    for key in cold:
        assert _same_bits(cold[key], warm[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_every_cpu_tier_gives_the_strict_bits(probe_models, tmp_path, kind):
    """Strict logits compiled for baseline x86-64, AVX2 and the host are bit-identical to each other.

    fp32 is also checked against the scalar float32 reference; int8 against
    the in-process strict build.
    """
    import jit
    from forward_probe import probe
    want = probe(probe_models[kind])["single"]
    for tier, env in jit.TIERS.items():
        got = run_probe(probe_models[kind], tmp_path / f"{tier}.npz", **env, LLAMA2_FASTMATH="off",
                        LLAMA2_THREADS="1", LLAMA2_CACHE_DIR=str(tmp_path / tier))
        check_probe(got, f"strict {tier} {kind}")
        assert _same_bits(got["single"], want), tier
    if kind == "fp32":
        w = random_weights(*PROBE_SHAPE, shared=False, seed=12)
        ref = ScalarModel(w)
        from forward_probe import TOKENS
        for pos, tok in enumerate(TOKENS[:4]):
            assert _same_bits(want[pos], ref.forward(tok % PROBE_SHAPE[5], pos)), pos


# ---- the thread count follows the machine's load -------------------------------------

def test_the_chooser_gives_up_a_core_that_others_keep_busy(monkeypatch):
    others = [0.0, 1.0, 2.5, 0.4, 0.1, 0.7]  # cores other processes used in each 0.2 s window
    samples, wall, machine, own = [(0.0, 0.0, 0.0)], 0.0, 0.0, 0.0
    for busy in others:
        wall, own = wall + 0.2, own + 0.15  # this process: 0.75 of a core meanwhile
        machine += 0.2 * busy + 0.15
        samples.append((wall, machine, own))
    monkeypatch.setattr(model.ThreadChooser, "_sample", staticmethod(lambda: samples.pop(0)))
    c = model.ThreadChooser(4)
    picks = []
    for k in range(len(others)):
        monkeypatch.setattr(model.time, "monotonic", lambda k=k: 0.2 * (k + 1))
        picks.append(c.pick())
    # over 0.6 of a core takes off as many threads as others use; back to all only under 0.3
    assert picks == [4, 3, 2, 2, 4, 3]


_SWITCHING = """
import sys
sys.path[:0] = sys.argv[1:2]
import itertools
import model, run
from tokenizer import Tokenizer
t = model.Transformer(sys.argv[2], rows=8)
tok = Tokenizer(sys.argv[3], t.config.vocab_size)
texts = []
for flip in (False, True):
    counts = itertools.cycle([1, 2])
    t.threads = type("Flip", (), {"pick": lambda self: next(counts), "used": {}, "most": 2})() if flip else None
    out = run.Output(open(sys.argv[4] + str(flip), "wb"))
    run.generate(t, tok, run.Sampler(t.config.vocab_size, 1.0, 0.9, 7), b"the dog", 60, out)
    out.out.close()
"""


@pytest.mark.slow
def test_switching_threads_between_passes_does_not_change_the_text(tmp_path):
    from checkpoints import write_tokenizer
    from conftest import ROOT
    w = random_weights(32, 64, 2, 4, 2, 400, 64, shared=False, seed=4, scale=0.1)
    path = write_checkpoint(tmp_path / "m.bin", w)
    tok = write_tokenizer(tmp_path / "tok.bin", 400)
    env = dict(os.environ, LLAMA2_FASTMATH="on", LLAMA2_THREADS="2")
    r = subprocess.run([sys.executable, "-c", _SWITCHING, ROOT, str(path), str(tok), str(tmp_path / "out")],
                       env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert r.returncode == 0, r.stderr
    fixed, flipping = (tmp_path / "outFalse").read_bytes(), (tmp_path / "outTrue").read_bytes()
    assert len(set(fixed)) > 10 and fixed == flipping


_DOT2_CHECK = r"""
import sys
sys.path.insert(0, sys.argv[1])
import jit  # before numba: it settles the cache directory of this mode
import model
import numpy as np
from numba import njit

@njit
def both(a0, a1, b):
    p0, p1 = model.dot2(a0, a1, b)
    return p0, p1, model.dot(a0, b), model.dot(a1, b)

rng = np.random.default_rng(3)
for n in (7, 16, 288, 290, 768, 1000):
    a = rng.standard_normal((2, n), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    p0, p1, d0, d1 = both(a[0], a[1], b)
    assert np.float32(p0).view(np.int32) == np.float32(d0).view(np.int32), (n, p0, d0)
    assert np.float32(p1).view(np.int32) == np.float32(d1).view(np.int32), (n, p1, d1)
    assert abs(d0 - float(a[0].astype(np.float64) @ b)) <= 1e-4 * (np.abs(a[0]) @ np.abs(b)), n
print("OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["host", "haswell", "generic"])
def test_two_rows_side_by_side_give_each_rows_dot_bits(tmp_path, tier):
    """model.dot2 (one-token rows of AVX2 and AVX-512 builds off AMD cores) sums each row exactly as dot does:
    fast-math text does not depend on whether rows are read in pairs. Called directly, so checked on any host."""
    import jit
    from conftest import ROOT
    env = dict(os.environ, LLAMA2_FASTMATH="on", LLAMA2_THREADS="1", LLAMA2_CACHE_DIR=str(tmp_path / "cache"),
               **jit.TIERS[tier])
    out = subprocess.run([sys.executable, "-c", _DOT2_CHECK, ROOT], env=env, capture_output=True, text=True,
                         timeout=HANG_TIMEOUT)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
