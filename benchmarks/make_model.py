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
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoint  # noqa: E402

SHAPES = {  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    "260K": (64, 172, 5, 8, 4, 512, 512),
    "15M": (288, 768, 6, 6, 6, 32000, 256),
    "42M": (512, 1376, 8, 8, 8, 32000, 1024),
    "110M": (768, 2048, 12, 12, 12, 32000, 1024),
}


def write_random(path, shape, seed=0, force=False):
    dim, hidden, layers, heads, kv_heads, vocab, seq = SHAPES[shape]
    p = checkpoint.Config(dim, hidden, layers, heads, kv_heads, vocab, seq)
    rng = np.random.default_rng(seed)

    def normal(*shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    t = {"token_embedding_table": normal(vocab, dim, std=1.0)}
    t["token_embedding_table"][1] *= np.float32(1e-3)  # BOS
    t["rms_att_weight"] = np.ones((layers, dim), np.float32)
    t["rms_ffn_weight"] = np.ones((layers, dim), np.float32)
    t["rms_final_weight"] = np.ones(dim, np.float32)
    for name, shape in checkpoint.fp32_layout(0, p, True):
        if name in checkpoint.LAYER_MATS:
            t[name] = normal(*shape, std=0.5 / np.sqrt(shape[-1]))
    with checkpoint.AtomicWrite(path, force) as f:
        checkpoint.write(f, 0, p, t, shared=True)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite an existing file")
    a = ap.parse_args(argv)
    try:
        write_random(a.out, a.shape, a.seed, a.force)
    except checkpoint.OutputError as e:
        print(f"make_model.py: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 1e6:.1f} MB, shape {a.shape})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
