#!/usr/bin/env python3
"""Matmul kernel variants for one token: checked against a reference first, then timed on cold weights.

    python benchmarks/kernels.py [--fastmath off|on] [--threads N] [--offset BYTES]

Each variant computes W (d, n) @ x for one token, the case that decides
generation speed. Fast math: two rows read side by side, each summed as
its 16-lane dot (model.py's choice where the target has AVX2 and the
machine is not an AMD core), against one row at a time and 8 rows side
by side; all three give the same bits.
Every matrix starts --offset bytes into a 64-byte cache line: 28 by
default, where a checkpoint's 28-byte header puts every tensor of a mapped
file (a row's speed can depend on it). Strict: 16 (AVX-512) or 8 rows as the lanes of a vector (model.py's
choice: a block of weights transposed in registers) against 8 interleaved
scalar sums and one sequential sum per row. Each is first compared with a float32
reference, bit for bit when strict (every row one sequential sum), then
timed over many distinct matrices (more bytes than the caches hold, as in
a real forward pass), variants alternating, median of 7 rounds. A kernel
alone is half the story: model.py's choices were made by timing whole
forward passes side by side too.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fastmath", choices=["off", "on"], default="off")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--offset", type=int, default=28, help="bytes from a cache line's start to each matrix (0-60)")
    a = ap.parse_args(argv)
    os.environ["LLAMA2_FASTMATH"] = a.fastmath
    os.environ["LLAMA2_THREADS"] = str(a.threads)
    sys.path.insert(0, ROOT)
    import jit  # first: it settles numba's cache directory for this mode
    import model
    import numba
    import numpy as np

    jitted = numba.njit(parallel=jit.PARALLEL, error_model="numpy")

    @jitted
    def one_row(xout, x, w):
        for i in numba.prange(w.shape[0]):
            xout[i] = model.dot(w[i], x)

    @jitted
    def rows8(xout, x, w):
        for b in numba.prange(w.shape[0] // 8):
            model._rows8(xout, x, w, 8 * b)

    @jitted
    def rows2(xout, x, w):
        for b in numba.prange(w.shape[0] // 2):
            xout[2 * b], xout[2 * b + 1] = model.dot2(w[2 * b], w[2 * b + 1], x)

    @jitted
    def rows8_fast(xout, x, w):  # 8 rows side by side, each summed as its dot
        for b in numba.prange(w.shape[0] // 8):
            for i in range(8 * b, 8 * b + 8):
                xout[i] = model.dot(w[i], x)

    @jitted
    def rows_strict(xout, x, w):
        for b in numba.prange(w.shape[0] // jit.STRICT_ROWS):
            model._rows_strict(xout, x, w, jit.STRICT_ROWS * b)

    if a.fastmath == "off":
        variants = {"1 row": one_row, "8 rows": rows8, f"{jit.STRICT_ROWS} rows (model.py)": rows_strict}
    else:
        pairs = " (model.py)" if jit.ROW_PAIRS else ""
        variants = {"1 row" + ("" if pairs else " (model.py)"): one_row, "2 rows" + pairs: rows2, "8 rows": rows8_fast}
    rng = np.random.default_rng(0)
    print(f"{jit.describe()}; GB/s of weights streamed (median of 7), matrices {a.offset} bytes into a line")

    def at_offset(m):
        """m copied to start a.offset bytes past a 64-byte boundary, read-only as a mapped checkpoint."""
        buf = np.empty(m.nbytes + 128, np.uint8)
        start = (-buf.ctypes.data) % 64 + a.offset
        out = buf[start:start + m.nbytes].view(np.float32).reshape(m.shape)
        out[...] = m
        out.flags.writeable = False
        return out

    print(f"{'shape':>12} " + " ".join(f"{name:>19}" for name in variants))
    for d, n in [(288, 288), (768, 288), (768, 768), (2048, 768), (768, 2048), (32000, 288), (32000, 768)]:
        count = max(2, int(400e6 / (d * n * 4)))  # ~400 MB of distinct matrices
        ws = [at_offset(rng.standard_normal((d, n), dtype=np.float32)) for _ in range(count)]
        x = rng.standard_normal(n, dtype=np.float32)
        ref = np.zeros(64, np.float32)
        for i in range(64):  # the reference: one sequential float32 sum per row (64 rows checked)
            acc = np.float32(0.0)
            for j in range(n):
                acc = np.float32(acc + ws[0][i, j] * x[j])
            ref[i] = acc
        times = {name: [] for name in variants}
        first = None
        for name, f in variants.items():
            out = np.zeros(d, np.float32)
            f(out, x, ws[0])
            got = out[:64]
            if a.fastmath == "off":
                assert np.array_equal(got.view(np.int32), ref.view(np.int32)), f"{name} is not exact"
            else:
                assert np.allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()), f"{name} is wrong"
                first = out if first is None else first
                assert np.array_equal(out.view(np.int32), first.view(np.int32)), f"{name}: not dot's bits"
        for _ in range(7):
            for name, f in variants.items():
                out = np.zeros(d, np.float32)
                t0 = time.perf_counter()
                for w in ws:
                    f(out, x, w)
                times[name].append(time.perf_counter() - t0)
        gbs = {name: count * d * n * 4 / np.median(t) / 1e9 for name, t in times.items()}
        print(f"{f'{d}x{n}':>12} " + " ".join(f"{gbs[name]:>19.1f}" for name in variants))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
