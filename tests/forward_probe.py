"""Run one checkpoint through every way of feeding the forward pass and save what comes out.

    python tests/forward_probe.py CHECKPOINT OUT.npz

The compile mode comes from the environment (LLAMA2_FASTMATH, LLAMA2_THREADS,
NUMBA_CPU_NAME, LLAMA2_CACHE_DIR), so tests run this in subprocesses to
compare modes, CPU tiers, and cold and warm JIT caches. Saved arrays:

  single       logits of TOKENS fed one at a time at positions 0, 1, ...
  prefill      the same tokens in one pass (chunks of 26 rows, then 4), logits of every row
  kv_single    the key and value caches after `single`
  kv_prefill   the same after `prefill`
  batched      nine sequences decoded in lockstep, one row each per pass
  alone        the same nine sequences, each run by itself
  profiled     `single` again with the per-kernel profile switched on

The sizes reach every kernel shape of every tier: prompt tiles (from 4, 8 or
24 rows by tier), row tiles (below that: the chunk of 4 rows), int8 tiles (8
rows and more, with a tail), strict token lanes (4 rows and more).
"""

import os
import sys

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import numpy as np  # noqa: E402

import model  # noqa: E402

TOKENS = [1, 5, 9, 2, 17, 3, 4, 8, 10, 11, 12, 13, 6, 7, 19, 23, 14, 29, 31, 16, 18, 20, 22, 15, 24, 25, 27, 26,
          30, 21]
SEQS = 9


def probe(path):
    t = model.Transformer(path, rows=26, seqs=SEQS)
    vocab = t.config.vocab_size
    toks = [x % vocab for x in TOKENS]
    out = {}
    out["single"] = np.array([t.forward(tok, pos).copy() for pos, tok in enumerate(toks)])
    out["kv_single"] = np.stack([t.cached_keys(0, len(toks)), t.cached_values(0, len(toks))]).copy()
    rows = []
    t.prefill(toks, 0, 0, logits="all", on_logits=lambda i, chunk: rows.extend(chunk.copy()))
    out["prefill"] = np.array(rows)
    out["kv_prefill"] = np.stack([t.cached_keys(0, len(toks)), t.cached_values(0, len(toks))]).copy()
    # SEQS sequences, different tokens, one row each per pass
    seqs = [[(x * (2 * i + 1) + i) % vocab for x in toks] for i in range(SEQS)]
    batched = []
    for pos in range(len(toks)):
        tok = np.array([s[pos] for s in seqs], np.int32)
        batched.append(t.run(tok, np.full(SEQS, pos, np.int32), np.arange(SEQS, dtype=np.int32),
                             np.ones(SEQS, np.int32)).copy())
    out["batched"] = np.array(batched)
    alone = np.zeros_like(out["batched"])
    for i, sq in enumerate(seqs):
        for pos in range(len(toks)):
            alone[pos, i] = t.forward(sq[pos], pos, 1)
    out["alone"] = alone
    t.profile = model.Profile(t.config, t.weights.group_size if t.quantized else 0)
    out["profiled"] = np.array([t.forward(tok, pos).copy() for pos, tok in enumerate(toks)])
    assert t.profile.ns[:, 1].sum() > 0, "the profile recorded nothing"
    return out


if __name__ == "__main__":
    np.savez(sys.argv[2], **probe(sys.argv[1]))
    import jit
    print(jit.describe())
