#!/usr/bin/env python3
"""Matmul kernel variants: checked against a reference first, then timed on cold weights.

    python benchmarks/kernels.py [--fastmath off|on] [--threads N]

The variants compute 1 output row per loop iteration, or 8 (model.matmul;
each row still one sequential sum over j). Each is first compared with the
plain one-row strict kernel, bit for bit when fast math is off, then timed
over many distinct matrices (more bytes than the caches hold, as in a real
forward pass), alternating variants, median of 7 rounds. A kernel alone is
only half the story: model.py's final choices (8-row blocks, one-row fused
w1/w3 with fast math) were made by timing whole forward passes side by side.
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
    a = ap.parse_args(argv)
    os.environ["LLAMA2_FASTMATH"] = a.fastmath
    os.environ["LLAMA2_THREADS"] = str(a.threads)
    sys.path.insert(0, ROOT)
    global model
    import model  # first: it settles numba's cache directory for this mode
    import numba
    import numpy as np
    jit = numba.njit(fastmath=model.FASTMATH_FLAGS[model.FASTMATH], parallel=model.PARALLEL)

    @jit
    def rows1(xout, x, w):
        for i in numba.prange(w.shape[0]):
            model._row(xout, x, w, i)

    variants = {"1 row": rows1, "8 rows": model.matmul}
    rng = np.random.default_rng(0)
    print(f"fast math {a.fastmath}, {a.threads} thread(s); GB/s of weights streamed (median of 7)")
    print(f"{'shape':>12} " + " ".join(f"{name:>10}" for name in variants))
    for d, n in [(288, 288), (768, 288), (768, 768), (2048, 768), (768, 2048), (32000, 288), (32000, 768)]:
        count = max(2, int(400e6 / (d * n * 4)))  # ~400 MB of distinct matrices
        ws = [rng.standard_normal((d, n), dtype=np.float32) for _ in range(count)]
        x = rng.standard_normal(n, dtype=np.float32)
        ref = np.zeros(d, np.float32)
        for i in range(min(d, 64)):  # the reference: one sequential float32 sum per row (64 rows checked)
            acc = np.float32(0.0)
            for j in range(n):
                acc = np.float32(acc + ws[0][i, j] * x[j])
            ref[i] = acc
        times = {name: [] for name in variants}
        for name, f in variants.items():
            out = np.zeros(d, np.float32)
            f(out, x, ws[0])
            got, want = out[:64], ref[:64]
            if a.fastmath == "off":
                assert np.array_equal(got.view(np.int32), want.view(np.int32)), f"{name} is not exact"
            else:
                assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()), f"{name} is wrong"
        for _ in range(7):
            for name, f in variants.items():
                out = np.zeros(d, np.float32)
                t0 = time.perf_counter()
                for w in ws:
                    f(out, x, w)
                times[name].append(time.perf_counter() - t0)
        gbs = {name: count * d * n * 4 / np.median(t) / 1e9 for name, t in times.items()}
        print(f"{f'{d}x{n}':>12} " + " ".join(f"{gbs[name]:>10.1f}" for name in variants))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
