"""int8 (version 2) inference against an independent NumPy model of runq.c's arithmetic."""

import os
import subprocess
import sys

import numpy as np
import pytest

import model
from checkpoints import quantize_groups, random_weights, write_checkpoint, write_tokenizer
from conftest import HANG_TIMEOUT, ROOT, SHARED_MODELS
from reference import Q8NumpyModel, matmul_q8, quantize_q8

F = np.float32


@pytest.mark.parametrize("gs", [8, 16, 64])  # 16 and 64 take the 16-lane path, 8 the scalar loop
def test_quantize_matches_reference_including_ties_and_zero_groups(gs):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4 * gs) * 3).astype(F)
    x[gs:2 * gs] = 0  # an all-zero group: scale 0, values 0
    # max 127 gives scale exactly 1, so these land exactly on halves: C's round() goes away from zero;
    # 0.49999997 + 0.5 rounds up to 1 in float32, yet C's round(0.49999997) is 0
    ties = np.array([127, 2.5, -2.5, 0.5, -0.5, 1.5, -126.5, 3.49999], F)
    x[2 * gs:3 * gs] = np.resize(ties, gs)
    x[3 * gs] = 127
    x[3 * gs + 1:3 * gs + 3] = np.nextafter(F(0.5), F(0)), -np.nextafter(F(0.5), F(0))
    q, s = np.zeros((1, 4 * gs), np.int8), np.zeros((1, 4), F)
    model.quantize(q, s, x[None], gs)
    q, s = q[0], s[0]
    rq, rs = quantize_q8(x, gs)
    assert np.array_equal(s.view(np.int32), rs.view(np.int32))
    assert np.array_equal(q, rq)
    assert list(q[2 * gs:2 * gs + 8]) == [127, 3, -3, 1, -1, 2, -127, 3]  # by hand
    assert list(q[3 * gs:3 * gs + 3]) == [127, 0, 0]
    assert not q[gs:2 * gs].any() and s[1] == 0


@pytest.mark.parametrize("rows, cols, gs", [(32, 64, 16), (48, 96, 32), (7, 128, 64)])
def test_int8_matmul_equals_reference_bit_for_bit(rows, cols, gs):
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((rows, cols)).astype(F)
    x = rng.standard_normal(cols).astype(F)
    wq, ws = quantize_groups(w, gs)
    wq, ws = wq.reshape(rows, cols), ws.reshape(rows, cols // gs)
    xq, xs = quantize_q8(x, gs)
    out = np.zeros((1, rows), F)
    none = (wq[:0], ws[:0])
    model.matvecs_q8(xq[None], xs[None], out, (wq, ws), out, none, out, none, False)
    want = matmul_q8(xq, xs, wq, ws, gs)
    assert np.array_equal(out[0].view(np.int32), want.view(np.int32))


SHAPES = {"gqa": (64, 128, 2, 8, 2, 80, 32), "mha-unshared": (48, 96, 2, 6, 6, 61, 32)}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_int8_forward_matches_numpy_int8_model(tmp_path, shape):
    gs = 16
    w = random_weights(*SHAPES[shape], shared=shape == "gqa", seed=3)
    t = model.Transformer(str(write_checkpoint(tmp_path / "q.bin", w, version=2, group_size=gs)))
    assert t.quantized and t.weights.group_size == gs
    ref = Q8NumpyModel(w, gs, quantize_groups)
    rng = np.random.default_rng(1)
    worst = 0.0
    for pos in range(w["config"]["seq_len"]):
        tok = int(rng.integers(w["config"]["vocab_size"]))
        got, want = t.forward(tok, pos), ref.forward(tok, pos)
        worst = max(worst, float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
    # float64 elsewhere in the reference: an activation a hair from a rounding edge can
    # quantize one step apart, so agreement is close but not exact
    print(f"{shape}: int8 forward maxdiff {worst:.2e}", "OK" if worst < 2e-3 else "NOT OK")
    assert worst < 2e-3


def test_fp32_model_and_its_quantized_export_agree(tmp_path):
    """export.py quantize: logits close to the fp32 model's, greedy text mostly the same."""
    path = os.path.join(SHARED_MODELS, "stories260K.bin")
    if not os.path.exists(path):
        w = random_weights(64, 172, 3, 8, 4, 256, 64, seed=9, scale=0.5)
        path = str(write_checkpoint(tmp_path / "fp32.bin", w))
    qpath = str(tmp_path / "q80.bin")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "quantize", path, qpath,
                        "--group-size", "64"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "max quantization group error" in r.stderr
    fp, q8 = model.Transformer(path), model.Transformer(qpath)
    gs = q8.weights.group_size  # 260K's hidden_dim 172 makes the exporter back off to 4
    assert q8.quantized and ("BACKOFF" in r.stderr) == (gs != 64)
    # one byte per weight plus a float32 scale per group, instead of four bytes
    assert abs(q8.bytes_per_token / fp.bytes_per_token - (1 + 4 / gs) / 4) < 0.02
    # both fed the fp32 model's greedy continuation, so every position compares like with like
    worst, same, token = 0.0, 0, 1
    steps = min(100, fp.config.seq_len)
    for pos in range(steps):
        a, b = fp.forward(token, pos), q8.forward(token, pos)
        worst = max(worst, float(np.max(np.abs(a - b)) / np.max(np.abs(a))))
        same += int(np.argmax(a)) == int(np.argmax(b))
        token = int(np.argmax(a))
    print(f"fp32 vs int8 (activations quantized too, as runq.c): logits maxdiff {worst:.3f} of the "
          f"largest logit; greedy next token equal at {same}/{steps} positions")
    assert worst < 0.25  # measured 0.146 on stories260K (dim 64, the largest logit ~10)
    assert same >= 0.8 * steps


def test_int8_checkpoint_runs_from_the_command_line(tmp_path):
    w = random_weights(32, 64, 2, 4, 2, 300, 48, shared=False, seed=4, scale=0.1)
    path = write_checkpoint(tmp_path / "q.bin", w, version=2, group_size=32)
    tok = write_tokenizer(tmp_path / "tok.bin", 300)
    outs = set()
    for flags in (["--no-fastmath", "--threads", "1"], ["--no-fastmath", "--threads", "2"]):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), str(path), "-z", str(tok), "-s", "5",
                            "-n", "40", "-i", "the dog"] + flags, capture_output=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"the dog")
        outs.add(r.stdout)
    assert len(outs) == 1


def test_truncated_int8_checkpoint_is_refused(tmp_path):
    w = random_weights(32, 64, 2, 4, 2, 300, 48, seed=4)
    path = write_checkpoint(tmp_path / "q.bin", w, version=2, group_size=32)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(model.CheckpointError, match="truncated"):
        model.Transformer(str(path))


_DOT_CHECK = """
import sys
import numpy as np
sys.path[:0] = sys.argv[1:3]
import jit, model
from reference import matmul_q8, quantize_q8
from checkpoints import quantize_groups
assert jit.INT8_PATH == sys.argv[3], jit.INT8_PATH
rng = np.random.default_rng(5)
for rows, cols, gs in [(40, 256, 64), (33, 96, 32), (17, 64, 16), (8, 128, 128), (50, 256, 128)]:
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[0, :gs] = 1.0  # a whole group at +127
    w[1, :gs] = -1.0  # and at -127
    wq, ws = quantize_groups(w, gs)
    wq, ws = wq.reshape(rows, cols), ws.reshape(rows, cols // gs)
    n = 19  # two tiles of 8 tokens (the first prefetches, the second not) and 3 alone
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[0, :gs] = -5.0  # -127 against +-127 weights: the largest products
    x[9, :gs] = 5.0
    x[17, :gs] = 5.0
    xq = np.zeros((n, cols), np.int8)
    xs = np.zeros((n, cols // gs), np.float32)
    model.quantize(xq, xs, x, gs)
    out = np.zeros((n, rows), np.float32)
    none = (wq[:0], ws[:0])
    model.matmuls_q8(xq, xs, np.zeros((cols, n), np.float32), np.zeros((n // 8, 8 * cols), np.int8),
                     np.zeros((cols // gs, n), np.int32), out, (wq, ws), out, none, out, none, False)
    for b in range(n):
        want = matmul_q8(xq[b], xs[b], wq, ws, gs)
        assert np.array_equal(out[b].view(np.int32), want.view(np.int32)), (gs, b)
print(jit.INT8_PATH, "exact")
"""


@pytest.mark.parametrize("path", ["amx", "vnni", "avx2", "sse2", "portable"])
def test_each_int8_dot_path_is_exact(tmp_path, path):
    """Each way of computing the integer group dots, forced in turn, against the exact NumPy reference."""
    import jit
    env = dict(os.environ, LLAMA2_INT8_DOT=path, LLAMA2_CACHE_DIR=str(tmp_path))
    if path == "vnni" and not (("avx512vnni" in jit.FEATURES and "avx512vl" in jit.FEATURES)
                               or "avxvnni" in jit.FEATURES):
        pytest.skip("this CPU has no VNNI")
    if path == "amx" and not ({"amx-tile", "amx-int8"} <= jit.FEATURES and jit.INT8_PATH == "amx"):
        pytest.skip("this CPU has no AMX int8, or the kernel does not let this process use it")
    if path == "avx2" and "avx2" not in jit.FEATURES:
        pytest.skip("this CPU has no AVX2")
    from conftest import TESTS
    r = subprocess.run([sys.executable, "-c", _DOT_CHECK, ROOT, TESTS, path], env=env, capture_output=True,
                       text=True, timeout=HANG_TIMEOUT)
    print(r.stdout)
    assert r.returncode == 0, r.stderr


def test_asking_for_an_int8_path_the_cpu_lacks_is_an_error(tmp_path):
    env = dict(os.environ, LLAMA2_INT8_DOT="vnni", NUMBA_CPU_NAME="generic", LLAMA2_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", "import jit"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "LLAMA2_INT8_DOT=vnni" in r.stderr
