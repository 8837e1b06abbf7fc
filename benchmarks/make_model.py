#!/usr/bin/env python3
"""Write a random-weight llama2.c checkpoint (format version 0) of a public model's shape.

    python benchmarks/make_model.py 15M stories15M_random.bin
    python benchmarks/make_model.py 110M stories110M_random.bin

Speed depends on shape only, so random weights stand in for the real
TinyStories checkpoints. The classifier is shared with the embedding, as in
the real ones; the BOS row is damped so sampling never picks BOS, which would
end generation early (llama2.c stops at BOS) and shorten the timed run.
"""

import argparse
import os
import struct
import sys

import numpy as np

SHAPES = {  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    "260K": (64, 172, 5, 8, 4, 512, 512),
    "15M": (288, 768, 6, 6, 6, 32000, 256),
    "42M": (512, 1376, 8, 8, 8, 32000, 1024),
    "110M": (768, 2048, 12, 12, 12, 32000, 1024),
}


def write_random(path, shape, seed=0):
    dim, hidden, layers, heads, kv_heads, vocab, seq = SHAPES[shape]
    head = dim // heads
    kv = head * kv_heads
    rng = np.random.default_rng(seed)

    def normal(*shape, std):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    emb = normal(vocab, dim, std=1.0)
    emb[1] *= np.float32(1e-3)  # BOS
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq))
        f.write(emb.tobytes())
        f.write(np.ones((layers, dim), np.float32).tobytes())  # rms_att
        for rows, cols in [(dim, dim), (kv, dim), (kv, dim), (dim, dim)]:  # wq wk wv wo
            f.write(normal(layers, rows, cols, std=0.5 / np.sqrt(cols)).tobytes())
        f.write(np.ones((layers, dim), np.float32).tobytes())  # rms_ffn
        for rows, cols in [(hidden, dim), (dim, hidden), (hidden, dim)]:  # w1 w2 w3
            f.write(normal(layers, rows, cols, std=0.5 / np.sqrt(cols)).tobytes())
        f.write(np.ones(dim, np.float32).tobytes())  # rms_final
        f.write(np.zeros(seq * head, np.float32).tobytes())  # the two unused RoPE tables
    os.replace(tmp, path)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite an existing file")
    a = ap.parse_args(argv)
    if os.path.exists(a.out) and not a.force:
        print(f"make_model.py: error: {a.out} exists (--force to overwrite)", file=sys.stderr)
        return 1
    write_random(a.out, a.shape, a.seed)
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 1e6:.1f} MB, shape {a.shape})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
