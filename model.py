"""Llama 2 transformer inference in Numba: llama2.c's run.c (and runq.c's int8 forward), kernel for kernel.

Read alongside run.c: the same structs (Config, TransformerWeights, RunState),
the same kernels in the same order, one `forward` with the layer loop inline.
Where run.c's forward runs one token, this one runs a batch of rows, each a
token of some sequence at some position: a prompt is many rows of one
sequence, generating is one row, decoding several samples is one row per
sequence. Every output of every kernel is computed in one fixed order,
whatever the batch and the thread count: a prompt fed in one pass gives the
same bits as one token at a time, and a sample decoded beside others the
same bits as alone.

The compile mode (fast math, threads, target CPU, cache) is settled by jit.py
before numba loads; see there what each fast-math mode computes.
"""

import os
import time
from collections import namedtuple

import numpy as np

import checkpoint
import jit
from checkpoint import CheckpointError, Config  # noqa: F401  (part of this module's interface)
from jit import (AMX_ROWS, AVX2, AVX512, EXP_POLY, INT8_AMX, INT8_CHUNK, INT8_DOT, LANES, PARALLEL, ROW_PAIRS, ROW_TILE,
                 STRICT, STRICT_ROWS, TILE, amx_configure, amx_q8_group, amx_q8_group2, amx_release, clock_ns, flane8,
                 fma, fzero8, iadd, idot32, idot32u, idot_tokens, iflip, ihsum, ihsum8, iload8, inline, isub,
                 isub_total, iwsum32, izero, kernel, pkernel, prefetch, q8_accumulate, q8_lanes, q8_rows,
                 q8tile16_store, q8tile16_zero, row_tile_zero, rows_strict, tile_fma, tile_get, tile_muladd, tile_sums,
                 tile_zero, vadd, vdiv, vdot2_halves, vdot_halves, vfma, vlane, vabs, vload, vmax, vmax_total,
                 vquantize, vsplat, vstore, vsum, vzero)
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

# ----------------------------------------------------------------------------
# Transformer, TransformerWeights and RunState

TransformerWeights = namedtuple("TransformerWeights", [
    "token_embedding_table",  # (vocab_size, dim)
    "rms_att_weight",  # (n_layers, dim)
    "rms_ffn_weight",  # (n_layers, dim)
    "wq",  # (n_layers, dim, dim)          rows: n_heads * head_size outputs
    "wk",  # (n_layers, kv_dim, dim)
    "wv",  # (n_layers, kv_dim, dim)
    "wo",  # (n_layers, dim, dim)
    "w1",  # (n_layers, hidden_dim, dim)
    "w2",  # (n_layers, dim, hidden_dim)
    "w3",  # (n_layers, hidden_dim, dim)
    "rms_final_weight",  # (dim,)
    "wcls",  # (vocab_size, dim)   the token embedding itself when shared
])

TransformerWeightsQ8 = namedtuple("TransformerWeightsQ8", [
    # runq.c's layout: every matrix a pair (q int8 (rows, cols), s float32 (rows, cols // group_size)),
    # value q[r, c] * s[r, c // group_size]; the per-layer ones are tuples over layers
    "token_embedding_table",  # (vocab_size, dim) float32, dequantized at load
    "rms_att_weight",  # (n_layers, dim)
    "rms_ffn_weight",  # (n_layers, dim)
    "wq",  # n_layers x ((dim, dim), (dim, dim // gs))
    "wk",  # n_layers x ((kv_dim, dim), ...)
    "wv",  # n_layers x ((kv_dim, dim), ...)
    "wo",  # n_layers x ((dim, dim), ...)
    "w1",  # n_layers x ((hidden_dim, dim), ...)
    "w2",  # n_layers x ((dim, hidden_dim), ...)
    "w3",  # n_layers x ((hidden_dim, dim), ...)
    "rms_final_weight",  # (dim,)
    "wcls",  # ((vocab_size, dim), (vocab_size, dim // gs)), the token table's when shared
    "group_size",  # int
])

RunState = namedtuple("RunState", [
    # one row per token of the batch (at most `rows`), one KV cache per sequence (`seqs`)
    "x",  # (rows, dim) activation of each row
    "xb",  # (rows, dim) same, inside a residual branch
    "xb2",  # (rows, dim) scratch
    "hb",  # (rows, hidden_dim) ffn hidden
    "hb2",  # (rows, hidden_dim) ffn hidden
    "q",  # (rows, dim) queries
    "k",  # (rows, kv_dim) keys of the batch, before they are stored in the cache
    "v",  # (rows, kv_dim) values, likewise
    "att",  # (rows, n_heads, seq_blocks * 16) attention scores, then weights
    "logits",  # (rows, vocab_size) output of the rows that ask for it, in row order
    "key_cache",  # (n_layers, seqs, n_kv_heads, seq_blocks, head_size, 16) keys of 16 positions by component
    "value_cache",  # (n_layers, seqs, n_kv_heads, seq_len, head_size)
    "rope_cos",  # (seq_len, head_size // 2) cos(pos * freq) of every position
    "rope_sin",  # (seq_len, head_size // 2) and sin
    "xt",  # (max(dim, hidden_dim), rows padded) a matmul's input transposed (strict mode, many rows)
    "xq",  # (rows, max(dim, hidden_dim)) int8: the activations entering an int8 matmul
    "xs",  # (rows, max(dim, hidden_dim) // group_size) their scales (int8 models only; else empty)
    "xqt",  # (rows // 8, max(dim, hidden_dim) * 8) int8: xq of each 8 rows interleaved by 4 columns (int8 tiles)
    "xqsum",  # (max(dim, hidden_dim) // group_size, rows) int32: 128 * each group's sum of xq (VNNI tiles)
])


def run_state_bytes(p, rows, seqs, group_size=0):
    """Bytes malloc_run_state allocates (the KV cache is most of it for long seq_len)."""
    width = max(p.dim, p.hidden_dim)
    padded = seq_blocks(p.seq_len) * LANES
    floats = (rows * (5 * p.dim + 2 * p.kv_dim + 2 * p.hidden_dim + p.n_heads * padded + p.vocab_size)
              + p.n_layers * seqs * (padded + p.seq_len) * p.kv_dim + p.seq_len * p.head_size
              + width * _padded(rows) + (rows * width // group_size if group_size else 0))
    return 4 * floats + (2 * rows * width + 4 * rows * width // group_size if group_size else 0)


def seq_blocks(seq_len):
    """Blocks of 16 positions the key cache has per sequence and head."""
    return -(-seq_len // LANES)


def _padded(rows):
    return -(-rows // (LANES * TILE[1])) * LANES * TILE[1]


def _zeros(shape, dtype):
    """np.zeros whose data starts on a 64-byte cache line.

    numpy's own buffers start 16 bytes into a line, so every 64-byte vector
    load of an activation row straddled two lines: the prompt tile, which
    reads four activation rows per three weight rows, ran 1.36-1.42x faster
    with the rows aligned (Intel Xeon, AVX-512, one thread; benchmarks/RESULTS.md).
    """
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    # calloc underneath: a large KV cache is still touched only when used
    return checkpoint.line_aligned(np.zeros(n + 64, np.uint8), n).view(dtype).reshape(shape)


def malloc_run_state(p, rows=1, seqs=1, group_size=0):
    """Every activation buffer, allocated once; forward() allocates nothing."""
    f32 = np.float32
    width = max(p.dim, p.hidden_dim)
    nq = width if group_size else 0
    s = RunState(
        x=_zeros((rows, p.dim), f32), xb=_zeros((rows, p.dim), f32), xb2=_zeros((rows, p.dim), f32),
        hb=_zeros((rows, p.hidden_dim), f32), hb2=_zeros((rows, p.hidden_dim), f32),
        q=_zeros((rows, p.dim), f32), k=_zeros((rows, p.kv_dim), f32), v=_zeros((rows, p.kv_dim), f32),
        att=_zeros((rows, p.n_heads, seq_blocks(p.seq_len) * LANES), f32), logits=_zeros((rows, p.vocab_size), f32),
        key_cache=_zeros((p.n_layers, seqs, p.n_kv_heads, seq_blocks(p.seq_len), p.head_size, LANES), f32),
        value_cache=_zeros((p.n_layers, seqs, p.n_kv_heads, p.seq_len, p.head_size), f32),
        rope_cos=_zeros((p.seq_len, p.head_size // 2), f32), rope_sin=_zeros((p.seq_len, p.head_size // 2), f32),
        xt=_zeros((width, _padded(rows)), f32),
        xq=_zeros((rows, nq), np.int8), xs=_zeros((rows, nq // group_size if group_size else 0), f32),
        xqt=_zeros((rows // Q8_TOKENS, nq * Q8_TOKENS), np.int8),
        xqsum=_zeros((nq // group_size if group_size else 0, rows), np.int32))
    rope_table(s.rope_cos, s.rope_sin)
    return s


# ----------------------------------------------------------------------------
# reading a checkpoint (the format itself is in checkpoint.py)

def read_checkpoint(path, mmap=True):
    """Config, weights (views into one flat array) and the format version.

    Versions 0 and 1 give TransformerWeights, version 2 TransformerWeightsQ8.
    """
    h, t = checkpoint.read(path, mmap)
    if h.version < 2:
        return h.config, TransformerWeights(**{k: t[k] for k in TransformerWeights._fields}), h.version
    p, gs = h.config, h.group_size
    q, sc = t["token_embedding_table"]
    # dequantized once for the row lookup: float32(int8) * scale, one rounding, as runq.c
    table = (q.reshape(p.vocab_size, p.dim // gs, gs).astype(np.float32) * sc[:, :, None]).reshape(p.vocab_size, p.dim)
    fields = {k: t[k] for k in TransformerWeightsQ8._fields if k not in ("token_embedding_table", "group_size")}
    return p, TransformerWeightsQ8(token_embedding_table=table, group_size=gs, **fields), h.version


def weight_bytes_per_token(p, w):
    """Bytes of weights one token's forward pass reads: every matrix once, one embedding row."""
    arrays = []
    for name, a in w._asdict().items():
        if name not in ("token_embedding_table", "group_size"):
            arrays += _leaves(a)
    return sum(a.nbytes for a in arrays) + p.dim * 4


def _leaves(a):
    return [a] if isinstance(a, np.ndarray) else [x for item in a for x in _leaves(item)]


# ----------------------------------------------------------------------------
# the two reductions whose order fast math changes; every sum in the model is one of them

@inline
def dot(a, b):
    """sum_j a[j] * b[j] of two contiguous float32 vectors of one length.

    Strict: one sequential sum, each product rounded (C's loop). Fast: lane
    k of a 16-float vector sums the products j = k, k + 16, ... (fused
    multiply-add), the lanes are added in vsum's fixed tree, and the last
    len % 16 products follow one by one. With AVX-512 the 16 lanes are kept
    as two 8-lane halves (vdot_halves: the same sums, two FMA chains instead
    of one; one token of the 110M shape 1.14x at one thread, 1.18x at two).
    """
    n = a.shape[0]
    if STRICT:
        val = np.float32(0.0)
        for j in range(n):
            val += a[j] * b[j]
        return val
    body = n - n % LANES
    if AVX512:
        val = vdot_halves(a, b)
    else:
        acc = vzero()
        for j in range(0, body, LANES):
            acc = vfma(acc, vload(a, j), vload(b, j))
        val = vsum(acc)
    for j in range(body, n):
        val = fma(a[j], b[j], val)
    return val


@inline
def dot2(a0, a1, b):
    """(dot(a0, b), dot(a1, b)), each summed exactly as dot sums it, the two rows read side by side."""
    n = b.shape[0]
    body = n - n % LANES
    if AVX512:
        v0, v1 = vdot2_halves(a0, a1, b)
    else:
        acc0 = vzero()
        acc1 = vzero()
        for j in range(0, body, LANES):
            bv = vload(b, j)
            acc0 = vfma(acc0, vload(a0, j), bv)
            acc1 = vfma(acc1, vload(a1, j), bv)
        v0 = vsum(acc0)
        v1 = vsum(acc1)
    for j in range(body, n):
        v0 = fma(a0[j], b[j], v0)
        v1 = fma(a1[j], b[j], v1)
    return v0, v1


@inline
def total(a):
    """sum_j a[j]: sequential when strict; 16 lanes, vsum's tree, then the tail when fast."""
    n = a.shape[0]
    if STRICT:
        val = np.float32(0.0)
        for j in range(n):
            val += a[j]
        return val
    body = n - n % LANES
    acc = vzero()
    for j in range(0, body, LANES):
        acc = vadd(acc, vload(a, j))
    val = vsum(acc)
    for j in range(body, n):
        val += a[j]
    return val


# ----------------------------------------------------------------------------
# neural net blocks; each writes into its first argument and allocates nothing

@kernel
def rmsnorm(o, x, weight):
    """o[b] = weight * (x[b] / sqrt(mean(x[b]^2) + 1e-5)) for every row b."""
    for b in range(x.shape[0]):
        xr, orow = x[b], o[b]
        ss = dot(xr, xr)
        ss /= np.float32(xr.shape[0])
        ss += np.float32(1e-5)  # a bare 1e-5 would widen ss to float64
        ss = np.float32(1.0) / np.sqrt(ss)
        for j in range(xr.shape[0]):
            orow[j] = weight[j] * (ss * xr[j])


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 bits."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@inline
def exp(x):
    """exp(x) for float32 x: the C library's expf, except with --fastmath=on a vectorizable polynomial.

    Strict and unsafe modes call expf (gcc calls it too). The polynomial
    (range reduction by ln 2, degree 6 in fused multiply-adds, 2^n built in
    the exponent bits) is within 1 ulp of expf (90% of 4 million points in
    [-87, 88] exact); loops of it vectorize, as libmvec's vector expf does
    for gcc -Ofast.
    """
    if not EXP_POLY:
        return np.exp(x)
    x = min(max(x, np.float32(-87.3)), np.float32(88.7))
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = fma(p, r, np.float32(1.3981999507e-3))
    p = fma(p, r, np.float32(8.3334519073e-3))
    p = fma(p, r, np.float32(4.1665795894e-2))
    p = fma(p, r, np.float32(1.6666665459e-1))
    p = fma(p, r, np.float32(5.0000001201e-1))
    y = fma(p * r, r, r) + np.float32(1.0)
    return y * _f32_from_bits(np.int32((np.int32(n) + np.int32(127)) << 23))


@kernel
def softmax(x):
    """x = exp(x - max x) / sum exp(x - max x), in place."""
    max_val = x[0]
    tail = 1
    if max_val == max_val:  # 16 lanes at a time (32000 logits: 31 us -> 2); a NaN first stays the max, as in C
        m = vsplat(max_val)
        for i in range(0, x.shape[0] - LANES + 1, LANES):
            m = vmax(m, vload(x, i))
        max_val = vmax_total(m)
        tail = x.shape[0] - x.shape[0] % LANES
    for i in range(tail, x.shape[0]):
        if x[i] > max_val:
            max_val = x[i]
    for i in range(x.shape[0]):
        x[i] = exp(x[i] - max_val)
    s = total(x)
    for i in range(x.shape[0]):
        x[i] /= s


# Matmuls. Work is split over threads by blocks of BLOCK output rows, each
# block computed for every row of the batch. Each output is one dot (above):
#  - fast modes: one weight row at a time, one output per token (a single
#    stream through memory measured fastest: 2x multi-row on this Zen 4 from
#    DRAM, as it was on an AVX2 Zen 3); with at least TILE[1] tokens, tiles of
#    TILE[0] rows x TILE[1] tokens keep 16-float accumulators in registers and
#    read each weight vector once per tile, with each output summed exactly as
#    its dot would.
#  - strict: a sequential sum per output. A few tokens: STRICT_ROWS rows are
#    the lanes of a vector (a block of weights transposed in registers), each
#    lane its own row's sequential sum. Several tokens: the tokens are the
#    vector lanes (the input transposed into s.xt), TILE[0] rows x TILE[1]
#    vectors of 16 tokens per tile.

BLOCK = 48  # rows per parallel work item: a multiple of STRICT_ROWS and of TILE[0]
ATT_ROWS = TILE[0]  # a prompt's rows whose attention is computed together (one row: each alone)
STRICT_LANES_FROM = 4  # strict mode vectorizes across tokens from this many rows on
# fast modes use the TILE[0]-row tiles from this many tokens on (with the next rows prefetched, below). One
# thread, Zen 4, every 15M and 110M matrix from DRAM: AVX-512 3 x 4 tile at 8 tokens 1.5-1.9x what ran
# before (the one-row tile on 288-wide inputs, the tile without prefetch on 768-wide), at 4 tokens
# 1.25-1.4x a dot per token; AVX2 3 x 2 tile at 8 tokens 1.1-1.4x, while at 2 and 4 its 1 x 4 row tile
# streams as fast or faster
PROMPT_TILES_FROM = TILE[1] if AVX512 else 8 if AVX2 else 24
# ...and sooner when the tokens' inputs (n * cols floats) pass 16 KB: a row tile then re-reads them from
# L2 for every weight row (8 samples of the 110M shape: prompt tiles 1.31x row tiles)
ROW_TILE_FLOATS = 4096
# rows read side by side are short streams the hardware prefetcher does not follow: the first pass of an
# fp32 or int8 tile asks for the rows this many tiles on (fp32, 8 tokens, 32000 x 288 from DRAM, AVX-512:
# 28 GFLOP/s without, 57 one tile on, 82 three tiles on, 81 six; int8 in _q8_tile)
PREFETCH_TILES = 3


@inline
def _rows_strict(xout, x, w, i):
    """xout[i:i+STRICT_ROWS] = w[i:i+STRICT_ROWS] @ x: one sequential sum per row, the rows side by side.

    rows_strict carries them STRICT_ROWS columns at a time; the last columns
    continue each row's sum in place, in column order.
    """
    body = rows_strict(xout, w, i, x)
    for j in range(body, w.shape[1]):
        xj = x[j]
        for r in range(i, i + STRICT_ROWS):
            xout[r] += w[r, j] * xj


@inline
def _rows8(xout, x, w, i):
    """xout[i:i+8] = w[i:i+8] @ x, eight interleaved sequential sums."""
    v0 = v1 = v2 = v3 = v4 = v5 = v6 = v7 = np.float32(0.0)
    for j in range(w.shape[1]):
        xj = x[j]
        v0 += w[i, j] * xj
        v1 += w[i + 1, j] * xj
        v2 += w[i + 2, j] * xj
        v3 += w[i + 3, j] * xj
        v4 += w[i + 4, j] * xj
        v5 += w[i + 5, j] * xj
        v6 += w[i + 6, j] * xj
        v7 += w[i + 7, j] * xj
    xout[i] = v0
    xout[i + 1] = v1
    xout[i + 2] = v2
    xout[i + 3] = v3
    xout[i + 4] = v4
    xout[i + 5] = v5
    xout[i + 6] = v6
    xout[i + 7] = v7


@inline
def _tile_fast(xout, x, w, i, t, ahead):
    """xout[t:t+C, i:i+R] (R, C = TILE) with each output summed as dot(w[i + r], x[t + c]).

    ahead (the first token tile of these rows) prefetches the rows PREFETCH_TILES tiles on into L2, line by
    line as it reads its own; past the last row a hint, never a fault.
    """
    R, C = TILE
    n = w.shape[1]
    body = n - n % LANES
    acc = tile_zero()
    for j in range(0, body, LANES):
        if ahead and R > 1:  # R a constant: one row is one stream, which the hardware follows
            for k in range(R):
                prefetch(w, (i + R * PREFETCH_TILES + k) * n + j)
        for r in range(R):
            wv = vload(w[i + r], j)
            for c in range(C):
                acc = tile_fma(acc, r * C + c, wv, vload(x[t + c], j))
    sums = tile_sums(acc)
    for r in range(R):
        wr = w[i + r]
        for c in range(C):
            xc = x[t + c]
            val = vlane(sums, r * C + c)
            for j in range(body, n):
                val = fma(wr[j], xc[j], val)
            xout[t + c, i + r] = val


@inline
def _row_tile(xout, x, w, i, t):
    """xout[t:t+ROW_TILE, i] with each output summed as dot(w[i], x[t + c]): one weight row, read once."""
    n = w.shape[1]
    body = n - n % LANES
    wi = w[i]
    acc = row_tile_zero()
    for j in range(0, body, LANES):
        wv = vload(wi, j)
        for c in range(ROW_TILE):
            acc = tile_fma(acc, c, wv, vload(x[t + c], j))
    sums = tile_sums(acc)
    for c in range(ROW_TILE):
        xc = x[t + c]
        val = vlane(sums, c)
        for j in range(body, n):
            val = fma(wi[j], xc[j], val)
        xout[t + c, i] = val


@inline
def _tile_strict(xout, xt, w, i, t, ntok):
    """xout[t:t+16C, i:i+R] (R, C = TILE): lane l of vector c sums w[i + r, j] * x[t + 16c + l, j] over j in order."""
    R, C = TILE
    acc = tile_zero()
    for j in range(w.shape[1]):
        xj = xt[j]
        for r in range(R):
            wv = vsplat(w[i + r, j])
            for c in range(C):
                acc = tile_muladd(acc, r * C + c, wv, vload(xj, t + LANES * c))
    for r in range(R):
        for c in range(C):
            v = tile_get(acc, r * C + c)
            for lane in range(min(LANES, ntok - t - LANES * c)):
                xout[t + LANES * c + lane, i + r] = vlane(v, lane)


@inline
def _block(xout, x, w, xt, i0, i1):
    """Rows i0 <= i < i1 of xout = x @ w.T, for every row of the batch x."""
    n = x.shape[0]
    R, C = TILE
    i_tiled = i0 + (i1 - i0) // R * R
    if STRICT and n >= STRICT_LANES_FROM:
        for i in range(i0, i_tiled, R):
            for t in range(0, n, LANES * C):
                _tile_strict(xout, xt, w, i, t, n)
        for i in range(i_tiled, i1):
            for b in range(n):
                xout[b, i] = dot(w[i], x[b])
    elif STRICT:
        i_blocks = i0 + (i1 - i0) // STRICT_ROWS * STRICT_ROWS
        i8 = i_blocks + (i1 - i_blocks) // 8 * 8
        for b in range(n):
            for i in range(i0, i_blocks, STRICT_ROWS):
                _rows_strict(xout[b], x[b], w, i)
            for i in range(i_blocks, i8, 8):
                _rows8(xout[b], x[b], w, i)
            for i in range(i8, i1):
                xout[b, i] = dot(w[i], x[b])
    elif n < PROMPT_TILES_FROM and n * x.shape[1] <= ROW_TILE_FLOATS:  # memory-bound: two weight rows at a time
        t_tiled = n - n % ROW_TILE
        i_pairs = i0 + (i1 - i0) // 2 * 2 if ROW_PAIRS else i0
        for i in range(i0, i1):
            for t in range(0, t_tiled, ROW_TILE):
                _row_tile(xout, x, w, i, t)
            if i >= i_pairs:
                for b in range(t_tiled, n):
                    xout[b, i] = dot(w[i], x[b])
            elif (i - i0) % 2 == 1:  # the tokens left over, against this row and the one before it
                for b in range(t_tiled, n):
                    xout[b, i - 1], xout[b, i] = dot2(w[i - 1], w[i], x[b])
    else:
        t_tiled = n - n % C
        for i in range(i0, i_tiled, R):
            for t in range(0, t_tiled, C):
                _tile_fast(xout, x, w, i, t, t == 0)
        for i in range(i0, i1):
            wi = w[i]
            for b in range(t_tiled if i < i_tiled else 0, n):
                xout[b, i] = dot(wi, x[b])


@inline
def _transpose(xt, x):
    """xt[j, b] = x[b, j], before strict matmuls over several tokens."""
    if STRICT and x.shape[0] >= STRICT_LANES_FROM:
        for b in range(x.shape[0]):
            for j in range(x.shape[1]):
                xt[j, b] = x[b, j]


@pkernel
def matmuls(x, xt, o1, w1, o2, w2, o3, w3, serial):
    """o1 = x @ w1.T, o2 = x @ w2.T, o3 = x @ w3.T: W (d, n) applied to every row of x (rows, n) -> o (rows, d).

    One parallel loop over blocks of rows of all three (one fork/join, not
    three), or a serial one when `serial`; a weight with no rows adds no
    work. All of the model's fp32 matmuls go through this one kernel, so its
    code is compiled once.
    """
    _transpose(xt, x)
    n1 = (w1.shape[0] + BLOCK - 1) // BLOCK
    n2 = (w2.shape[0] + BLOCK - 1) // BLOCK
    n3 = (w3.shape[0] + BLOCK - 1) // BLOCK
    if PARALLEL and not serial:  # PARALLEL a constant: a one-thread build compiles the loop below alone
        for b in prange(n1 + n2 + n3):
            # one call site: the block's code is inlined once, not once per matrix
            out, w, c = o1, w1, b
            if b >= n1 + n2:
                out, w, c = o3, w3, b - n1 - n2
            elif b >= n1:
                out, w, c = o2, w2, b - n1
            _block(out, x, w, xt, c * BLOCK, min(c * BLOCK + BLOCK, w.shape[0]))
        return
    for b in range(n1 + n2 + n3):  # one thread: a plain loop streams the weights a few % faster than prange
        out, w, c = o1, w1, b
        if b >= n1 + n2:
            out, w, c = o3, w3, b - n1 - n2
        elif b >= n1:
            out, w, c = o2, w2, b - n1
        _block(out, x, w, xt, c * BLOCK, min(c * BLOCK + BLOCK, w.shape[0]))


@inline
def silu_mul(a, b):
    """silu(a) * b, silu(a) = a * (1 / (1 + exp(-a)))."""
    one = np.float32(1.0)
    return a * (one / (one + exp(-a))) * b


@pkernel
def swiglu(hb, hb2):
    """hb = silu(hb) * hb2, rows in parallel."""
    for r in prange(hb.shape[0]):
        h, h2 = hb[r], hb2[r]
        for i in range(h.shape[0]):
            h[i] = silu_mul(h[i], h2[i])


@kernel
def rope_table(fcr, fci):
    """fcr[pos, j], fci[pos, j] = cos, sin(pos * freq) with freq = 1 / 10000^(2j / head_size).

    Rotation pair (i, i+1) uses j = (i % head_size) / 2. run.c computes these
    in every layer of every token; the values are the same bits.
    """
    head_size = 2 * fcr.shape[1]
    for j in range(fcr.shape[1]):
        freq = np.float32(1.0) / np.float32(10000.0) ** (np.float32(2 * j) / np.float32(head_size))
        for pos in range(fcr.shape[0]):
            val = np.float32(pos) * freq
            fcr[pos, j] = np.cos(val)
            fci[pos, j] = np.sin(val)


@inline
def rotate_pair(dst, src, i, c, sn):
    """(dst[i], dst[i+1]) = (src[i] c - src[i+1] sn, src[i] sn + src[i+1] c): run.c's RoPE step."""
    v0 = src[i]
    v1 = src[i + 1]
    dst[i] = v0 * c - v1 * sn
    dst[i + 1] = v0 * sn + v1 * c


@kernel
def rope(q, k, fcr, fci, pos):
    """Rotate each pair (i, i+1) of q[b], and of k[b] while i < kv_dim, by the angles of position pos[b]."""
    half = fcr.shape[1]
    for b in range(q.shape[0]):
        c_row, s_row = fcr[pos[b]], fci[pos[b]]
        for x in (q[b], k[b]):
            for h in range(x.shape[0] // (2 * half)):
                # one head's pairs with no index arithmetic in the loop: LLVM vectorizes it
                xh = x[2 * half * h:2 * half * (h + 1)]
                for j in range(half):
                    rotate_pair(xh, xh, 2 * j, c_row[j], s_row[j])


@pkernel
def store_kv(key_cache, value_cache, k, v, pos, seq):
    """The batch's keys and values into the cache of their sequence at their position.

    Key component i of head h at position t goes to key_cache[seq, h, t // 16,
    i, t % 16]: the scores of 16 positions are then vectors (_scores). Its
    value goes to value_cache[seq, h, t]: each head's values one stream for
    the weighted sums. A key is head_size cache lines that the last step's
    traffic has mostly evicted: with several rows the kv heads are stored in
    parallel (8 samples of the 110M shape: 8 x 12 x 768 lines a step). One
    row stays a plain loop: a parallel loop over its heads took 1.2 us to
    the plain loop's 0.12 (12 heads of 64, 2 threads).
    """
    if k.shape[0] == 1:
        for h in range(key_cache.shape[1]):
            _store_head(key_cache, value_cache, k, v, pos, seq, h)
        return
    for h in prange(key_cache.shape[1]):
        _store_head(key_cache, value_cache, k, v, pos, seq, h)


@inline
def _store_head(key_cache, value_cache, k, v, pos, seq, h):
    """Kv head h of every row into its sequence's cache."""
    head_size = key_cache.shape[3]
    ko = h * head_size
    b = 0
    while b < k.shape[0]:
        block, lane = pos[b] // LANES, pos[b] % LANES
        keys, values = key_cache[seq[b], h], value_cache[seq[b], h]
        if lane == 0 and _whole_block(pos, seq, b):
            # a prompt's 16 positions of one block: each line of the block written whole, once
            for i in range(head_size):
                line = keys[block, i]
                for t in range(LANES):
                    line[t] = k[b + t, ko + i]
            for t in range(LANES):
                _copy(values[pos[b] + t], v[b + t, ko:ko + head_size])
            b += LANES
            continue
        for i in range(head_size):
            keys[block, i, lane] = k[b, ko + i]
        _copy(values[pos[b]], v[b, ko:ko + head_size])
        b += 1


@inline
def _copy(dst, src):
    """dst[:] = src (1-D, one length) without the run-time shape and overlap checks of a slice assignment.

    A row's values, 6 heads of 48: 20 ns against 111 as slices (12 of 64: 129 against 278).
    """
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@inline
def _whole_block(pos, seq, b):
    """Rows b..b+15 are positions pos[b]..pos[b]+15 of one sequence."""
    if b + LANES > pos.shape[0]:
        return False
    for t in range(1, LANES):
        if seq[b + t] != seq[b] or pos[b + t] != pos[b] + t:
            return False
    return True


@pkernel
def attention(xb, att, q, key_cache, value_cache, pos, seq):
    """Multi-head attention: per row b and head h (kv head h // kv_mul), over positions 0..pos[b] of seq[b].

    Scores (q_h . k_t) / sqrt(head_size) (_scores), softmax, then the
    weighted sum of the values accumulated t by t from zero (_weighted_sum);
    rows and heads in parallel. A prompt's rows go in groups of ATT_ROWS
    (_attention_rows): the same sums, with each key and value vector loaded
    once for the group.
    """
    n_heads = att.shape[1]
    head_size = key_cache.shape[3]
    kv_mul = n_heads // key_cache.shape[1]
    scale = np.sqrt(np.float32(head_size))
    for bh in prange(q.shape[0] * n_heads):
        b = bh // n_heads
        h = bh % n_heads
        b0 = b - b % ATT_ROWS
        nr = _rows_of_one_sequence(seq, b0)
        keys, values = key_cache[seq[b], h // kv_mul], value_cache[seq[b], h // kv_mul]
        if nr > 1:  # a prompt's rows: the group's first task does them all, sharing each key and value load
            if b == b0:
                _attention_rows(xb, att, q, keys, values, pos, b0, nr, h, scale)
            continue
        p = pos[b]
        # slices rather than offset indexing: numba then knows every index is in
        # range from zero and the loops vectorize (2-5x measured)
        qh = q[b, h * head_size:(h + 1) * head_size]
        _scores(att[b, h], qh, keys, p + 1, scale)
        a = att[b, h, :p + 1]
        softmax(a)
        _weighted_sum(xb[b, h * head_size:(h + 1) * head_size], a, values)


@inline
def _rows_of_one_sequence(seq, b0):
    """The rows in the group of ATT_ROWS from b0 if they all belong to one sequence, else 1."""
    n = min(ATT_ROWS, seq.shape[0] - b0)
    for r in range(1, n):
        if seq[b0 + r] != seq[b0]:
            return 1
    return n


@inline
def _attention_rows(xb, att, q, blocks, values, pos, b0, nr, h, scale):
    """attention() of rows b0..b0+nr-1 (nr <= ATT_ROWS, one sequence) for head h: the same sums, row by row.

    Scores are taken for every row up to the last row's position (the extra
    ones are not read); the weighted sums run over the positions every row
    has together, then each row finishes its own.
    """
    hs = blocks.shape[1]
    pmin = pmax = pos[b0]
    for r in range(1, nr):
        pmin, pmax = min(pmin, pos[b0 + r]), max(pmax, pos[b0 + r])
    _scores_rows(att, q, blocks, b0, nr, h, (pmax + LANES) // LANES, scale)
    for r in range(nr):
        softmax(att[b0 + r, h, :pos[b0 + r] + 1])
    _weighted_sum_rows(xb, att, values, b0, nr, h, hs, pmin + 1)
    for r in range(nr):
        xh, a = xb[b0 + r, h * hs:(h + 1) * hs], att[b0 + r, h]
        for t in range(pmin + 1, pos[b0 + r] + 1):  # the row's own positions: its sums go on in order
            vt = values[t]
            for i in range(hs):
                if STRICT:
                    xh[i] += a[t] * vt[i]
                else:
                    xh[i] = fma(a[t], vt[i], xh[i])


@inline
def _scores_rows(att, q, blocks, b0, nr, h, nvec, scale):
    """_scores of rows b0..b0+nr-1 over nvec vectors of 16 positions.

    A TILE of rows x vectors of positions: each key vector is loaded once for all rows.
    """
    R, C = TILE
    hs = blocks.shape[1]
    for v0 in range(0, nvec, C):
        nv = min(C, nvec - v0)
        acc = tile_zero()
        for i in range(hs):
            for c in range(C):
                if c < nv:
                    kv = vload(blocks[v0 + c, i], 0)
                    for r in range(R):
                        if r < nr:
                            qi = vsplat(q[b0 + r, h * hs + i])
                            if STRICT:
                                acc = tile_muladd(acc, r * C + c, qi, kv)
                            else:
                                acc = tile_fma(acc, r * C + c, qi, kv)
        for r in range(R):
            if r < nr:
                for c in range(C):
                    if c < nv:
                        vstore(att[b0 + r, h], (v0 + c) * LANES, vdiv(tile_get(acc, r * C + c), scale))


@inline
def _weighted_sum_rows(xb, att, values, b0, nr, h, hs, n):
    """_weighted_sum of rows b0..b0+nr-1 over positions 0..n-1.

    A TILE of rows x vectors of the head: each value vector is loaded once for all rows.
    """
    R, C = TILE
    body = hs - hs % LANES
    for i0 in range(0, body, LANES * C):
        nv = min(C, (body - i0) // LANES)
        acc = tile_zero()
        for t in range(n):
            vt = values[t]
            for c in range(C):
                if c < nv:
                    vv = vload(vt, i0 + LANES * c)
                    for r in range(R):
                        if r < nr:
                            at = vsplat(att[b0 + r, h, t])
                            if STRICT:
                                acc = tile_muladd(acc, r * C + c, at, vv)
                            else:
                                acc = tile_fma(acc, r * C + c, at, vv)
        for r in range(R):
            if r < nr:
                for c in range(C):
                    if c < nv:
                        vstore(xb[b0 + r, h * hs:(h + 1) * hs], i0 + LANES * c, tile_get(acc, r * C + c))
    for r in range(nr):
        a = att[b0 + r, h]
        for i in range(body, hs):
            val = np.float32(0.0)
            for t in range(n):
                if STRICT:
                    val += a[t] * values[t, i]
                else:
                    val = fma(a[t], values[t, i], val)
            xb[b0 + r, h * hs + i] = val


@inline
def _scores(a, qh, blocks, n, scale):
    """a[t] = (sum_i qh[i] * key_t[i]) / scale for t < n, and for the rest of the last block of 16.

    Position t is lane t % 16 of block t // 16 (blocks[t // 16, i] holds
    component i of 16 positions), so each lane sums over i in order from
    zero: C's loop for one position, in every mode (fused in fast modes),
    with no horizontal sum. ROW_TILE blocks are summed side by side.
    """
    nb = (n + LANES - 1) // LANES
    for b0 in range(0, nb, ROW_TILE):
        nv = min(ROW_TILE, nb - b0)
        acc = row_tile_zero()
        for i in range(qh.shape[0]):
            qi = vsplat(qh[i])
            for c in range(ROW_TILE):
                if c < nv:
                    if STRICT:
                        acc = tile_muladd(acc, c, qi, vload(blocks[b0 + c, i], 0))
                    else:
                        acc = tile_fma(acc, c, qi, vload(blocks[b0 + c, i], 0))
        for c in range(ROW_TILE):
            if c < nv:
                vstore(a, (b0 + c) * LANES, vdiv(tile_get(acc, c), scale))


@inline
def _weighted_sum(xh, a, values):
    """xh = sum_t a[t] * values[t], each element summed t by t from zero.

    Up to ROW_TILE vectors of xh stay in registers through the loop over t:
    xh[i] += a[t] * v[i] in place made every t wait for the previous t's
    store. The same operations element by element (fused in fast modes).
    """
    hs = xh.shape[0]
    body = hs - hs % LANES
    for i0 in range(0, body, LANES * ROW_TILE):
        nv = min(ROW_TILE, (body - i0) // LANES)
        acc = row_tile_zero()
        for t in range(a.shape[0]):
            at = vsplat(a[t])
            vt = values[t]
            for c in range(ROW_TILE):
                if c < nv:
                    if STRICT:
                        acc = tile_muladd(acc, c, at, vload(vt, i0 + LANES * c))
                    else:
                        acc = tile_fma(acc, c, at, vload(vt, i0 + LANES * c))
        for c in range(ROW_TILE):
            if c < nv:
                vstore(xh, i0 + LANES * c, tile_get(acc, c))
    for i in range(body, hs):
        val = np.float32(0.0)
        for t in range(a.shape[0]):
            if STRICT:
                val += a[t] * values[t, i]
            else:
                val = fma(a[t], values[t, i], val)
        xh[i] = val


@kernel
def accum(a, b):
    """a += b (the residual connection)."""
    for r in range(a.shape[0]):
        ar, br = a[r], b[r]
        for i in range(ar.shape[0]):
            ar[i] += br[i]


# ----------------------------------------------------------------------------
# int8 (Q8_0) variant, as runq.c: weights and the activations entering a matmul
# are int8 in groups of gs with one float32 scale per group. Integer sums are
# exact in any order, so int8 gives the same bits in every fast-math mode.

@pkernel
def quantize(q, s, x, gs, serial=True):
    """Per row and group: scale = max|x| / 127, q = round(x / scale) (half away from zero).

    Rows in parallel unless serial (each row's values are the same either way).
    """
    if PARALLEL and not serial:
        for b in prange(x.shape[0]):
            _quantize_row(q[b], s[b], x[b], gs)
    else:
        for b in range(x.shape[0]):
            _quantize_row(q[b], s[b], x[b], gs)


@inline
def _quantize_row(qr, sr, xr, gs):
    """quantize() of one row."""
    for g in range(xr.shape[0] // gs):
        wmax = np.float32(0.0)
        if gs % LANES == 0:  # 16 lanes at a time (8 rows of 768: 12 us a call one value at a time)
            m = vzero()
            for i in range(g * gs, g * gs + gs, LANES):
                m = vmax(m, vabs(vload(xr, i)))
            wmax = vmax_total(m)
        else:
            for i in range(g * gs, g * gs + gs):
                v = abs(xr[i])
                if v > wmax:
                    wmax = v
        scale = wmax / np.float32(127.0)
        sr[g] = scale
        if scale == 0:  # runq.c divides 0 by 0 on an all-zero group and its int8 cast of NaN gives 0
            qr[g * gs:g * gs + gs] = 0
        elif gs % LANES == 0:
            for i in range(g * gs, g * gs + gs, LANES):
                vquantize(qr, xr, i, scale)
        else:
            for i in range(g * gs, g * gs + gs):
                qr[i] = np.int8(_round_half_away(xr[i] / scale))


@inline
def _round_half_away(v):
    """C's round(): to nearest, halves away from zero (np.round would go to even)."""
    a = np.abs(v)
    r = np.floor(a)
    # a - floor(a) is exact, where floor(a + 0.5) is not: 0.49999997 + 0.5 rounds to 1 in float32
    if a - r >= np.float32(0.5):
        r += np.float32(1.0)
    return r if v >= 0 else -r


# the integer dot step of the target; with VNNI it sums (x + 128) * w, and the caller takes
# iwsum32's 128 * w off again (_group_sums8 once for its eight rows)
_idot = idot32u if INT8_DOT == "vnni" else idot32


@inline
def _group_lanes(xq, wq, start, gs):
    """The products of the group starting at start, summed into 8 int32 lanes (gs a multiple of INT8_CHUNK)."""
    acc, offset = izero(), izero()
    for j in range(start, start + gs, INT8_CHUNK):
        acc = _idot(acc, xq, wq, j)
        if INT8_DOT == "vnni":
            offset = iwsum32(offset, wq, j)
    return isub(acc, offset)


@inline
def _group_dot(xg, wg):
    """sum_k xg[k] * wg[k] of one group of int8 values, exact in int32."""
    gs = xg.shape[0]
    if INT8_DOT != "portable" and gs % INT8_CHUNK == 0:
        return ihsum(_group_lanes(xg, wg, 0, gs))
    ival = np.int32(0)
    for k in range(gs):
        # numba widens int products to int64; truncating each step keeps the
        # vector lanes 32-bit (LLVM then narrows the multiply further)
        ival = np.int32(ival + np.int32(xg[k]) * np.int32(wg[k]))
    return ival


@inline
def _dot_q8(xq, xs, wq, ws, gs):
    """sum over groups g of (float(sum_k xq * wq) * ws[g]) * xs[g], the float sum in group order."""
    val = np.float32(0.0)
    ng = wq.shape[0] // gs
    g = 0
    if INT8_DOT != "portable" and gs % INT8_CHUNK == 0:
        while g + 8 <= ng:  # eight groups' integer sums reduced together, then added in group order
            s = ihsum8(_group_lanes(xq, wq, g * gs, gs), _group_lanes(xq, wq, (g + 1) * gs, gs),
                       _group_lanes(xq, wq, (g + 2) * gs, gs), _group_lanes(xq, wq, (g + 3) * gs, gs),
                       _group_lanes(xq, wq, (g + 4) * gs, gs), _group_lanes(xq, wq, (g + 5) * gs, gs),
                       _group_lanes(xq, wq, (g + 6) * gs, gs), _group_lanes(xq, wq, (g + 7) * gs, gs))
            val = q8_accumulate(val, s, ws, xs, g)
            g += 8
    for g in range(g, ng):
        # zero-based slices let numba drop its negative-index checks, so the
        # integer dot vectorizes (4x measured)
        ival = _group_dot(xq[g * gs:(g + 1) * gs], wq[g * gs:(g + 1) * gs])
        val += (np.float32(ival) * ws[g]) * xs[g]
    return val


Q8_TOKENS = 8  # tokens per int8 tile: four weight rows against eight, each token a lane of the float sums


@inline
def _q8_tile(xout, xqt, xst, xqsum, wq, ws, i, i1, i2, i3, t, gs, ahead):
    """xout[t:t+8, r] = _dot_q8 of weight row r with tokens t..t+7, for r = i, i1, i2, i3: token k is lane k.

    xqt[t // 8] has the eight tokens' bytes interleaved by four columns, so
    each step multiplies four columns of the eight tokens by the same four
    weights copied to every lane (idot_tokens): a group's integer sums come
    out one per lane with no horizontal sum. The four weight rows share each
    load of the tokens' bytes, and each row keeps two sums in flight (a
    vpdpbusd waits for the previous one's result). Token k's float sum adds
    (float(sum) * ws[r, g]) * xs[t + k, g] in group order: _dot_q8's bits.
    xst is xs transposed (xst[g, b] = xs[b, g]) and xqsum the tokens' VNNI
    offsets likewise, so a group's eight scales and offsets are one load
    each. ahead (the first token tile of these rows) prefetches the rows
    PREFETCH_TILES tiles on into L2: with few tokens each weight byte is used once
    per call, and rows read side by side outrun the hardware prefetcher.
    """
    w0, w1, w2, w3, xt = wq[i], wq[i1], wq[i2], wq[i3], xqt[t // Q8_TOKENS]
    v0, v1, v2, v3, flip = fzero8(), fzero8(), fzero8(), fzero8(), iflip()
    for g in range(ws.shape[1]):
        a0, a1, a2, a3, b0, b1, b2, b3 = izero(), izero(), izero(), izero(), izero(), izero(), izero(), izero()
        for j in range(g * gs, g * gs + gs, 8):
            a0, a1 = idot_tokens(a0, xt, w0, j, flip), idot_tokens(a1, xt, w1, j, flip)
            a2, a3 = idot_tokens(a2, xt, w2, j, flip), idot_tokens(a3, xt, w3, j, flip)
            b0, b1 = idot_tokens(b0, xt, w0, j + 4, flip), idot_tokens(b1, xt, w1, j + 4, flip)
            b2, b3 = idot_tokens(b2, xt, w2, j + 4, flip), idot_tokens(b3, xt, w3, j + 4, flip)
        a0, a1, a2, a3 = iadd(a0, b0), iadd(a1, b1), iadd(a2, b2), iadd(a3, b3)
        if INT8_DOT == "vnni":  # the weights were offset by 128: take 128 * sum(x) off, the same for every row
            offset = iload8(xqsum[g], t)
            a0, a1, a2, a3 = isub(a0, offset), isub(a1, offset), isub(a2, offset), isub(a3, offset)
        if ahead:
            # 8 tokens from DRAM, one thread: 2048 x 768 46 GMAC/s without, 93 with; 32000 x 288 (groups of 32)
            # 65 with the rows one tile on, 89 three tiles on. Past the last row a hint, never a fault.
            _prefetch_rows(wq, i + 4 * PREFETCH_TILES, 4, g * gs, g * gs + gs)
        xsg = xst[g]
        v0, v1 = q8_lanes(v0, a0, ws[i, g], xsg, t), q8_lanes(v1, a1, ws[i1, g], xsg, t)
        v2, v3 = q8_lanes(v2, a2, ws[i2, g], xsg, t), q8_lanes(v3, a3, ws[i3, g], xsg, t)
    for k in range(Q8_TOKENS):
        xout[t + k, i], xout[t + k, i1] = flane8(v0, k), flane8(v1, k)
        xout[t + k, i2], xout[t + k, i3] = flane8(v2, k), flane8(v3, k)


# AMX tiles ask for the weight rows of the next 16-row tile into L2 while reading their own (one thread,
# 8 tokens from DRAM: 32000 x 768 at 12 GB/s without, 17 one tile on, 16-17 three tiles on)
AMX_AHEAD = 1


@inline
def _q8_tile_amx(xout, xqt, xst, wq, ws, i, t, gs, k, ahead):
    """xout[t:t+8, i:i+16] = _dot_q8 of weight rows i..i+15 with tokens t..t+7, the group sums by AMX.

    Each group's 16 x 8 integer sums come from tdpbssd over its columns, k
    bytes at a time (amx_configure(k) first); each token's float sum then
    adds (float(sum) * ws[r, g]) * xs[t + c, g] in group order: _dot_q8's bits.
    """
    xt = xqt[t // Q8_TOKENS]
    acc = q8tile16_zero()
    ng = ws.shape[1]
    for g in range(0, ng - ng % 2, 2):
        if ahead:
            _prefetch_rows(wq, i + AMX_ROWS * AMX_AHEAD, AMX_ROWS, g * gs, (g + 2) * gs)
        acc = amx_q8_group2(acc, wq, ws, i, g, gs, k, xt, xst, t)
    if ng % 2:
        if ahead:
            _prefetch_rows(wq, i + AMX_ROWS * AMX_AHEAD, AMX_ROWS, (ng - 1) * gs, ng * gs)
        acc = amx_q8_group(acc, wq, ws, i, ng - 1, gs, k, xt, xst, t)
    q8tile16_store(xout, acc, t, i)


@inline
def _prefetch_rows(wq, i, rows, start, end):
    """Ask for columns start..end of rows i..i+rows-1 into L2, line by line (past the last row a hint)."""
    for line in range(start, end, 64):
        for r in range(i, i + rows):
            prefetch(wq, r * wq.shape[1] + line)


@inline
def _group_sums8(u0, u1, u2, u3, u4, u5, u6, u7, v, start, gs):
    """Lane k = sum_j u_k[j] * v[j] over the group of gs bytes at start, exact in int32: eight byte rows against
    one (eight tokens against a weight row, or eight weight rows against a token).

    With VNNI each step sums (u_k + 128) * v, and 128 * sum(v), once for the
    eight, is taken off at the end.
    """
    a0, a1, a2, a3, a4, a5, a6, a7, offset = izero(), izero(), izero(), izero(), izero(), izero(), izero(), izero(), \
        izero()
    for j in range(start, start + gs, INT8_CHUNK):
        a0, a1, a2, a3 = _idot(a0, u0, v, j), _idot(a1, u1, v, j), _idot(a2, u2, v, j), _idot(a3, u3, v, j)
        a4, a5, a6, a7 = _idot(a4, u4, v, j), _idot(a5, u5, v, j), _idot(a6, u6, v, j), _idot(a7, u7, v, j)
        if INT8_DOT == "vnni":
            offset = iwsum32(offset, v, j)
    return isub_total(ihsum8(a0, a1, a2, a3, a4, a5, a6, a7), offset)


@inline
def _q8_tile_sse2(xout, xq, xst, wq, ws, i, t, gs):
    """_q8_tile where the target has neither VNNI nor AVX2: the row's bytes loaded once for all eight tokens.

    Token k's integer sums are lane k after ihsum8, and its float sum adds
    (float(sum) * ws[i, g]) * xs[t + k, g] in group order: _dot_q8's bits.
    xst is xs transposed (xst[g, b] = xs[b, g]), so a group's eight scales
    are one load.
    """
    w, sw = wq[i], ws[i]
    x0, x1, x2, x3, x4, x5, x6, x7 = xq[t], xq[t + 1], xq[t + 2], xq[t + 3], xq[t + 4], xq[t + 5], xq[t + 6], xq[t + 7]
    vals = fzero8()
    for g in range(sw.shape[0]):
        vals = q8_lanes(vals, _group_sums8(x0, x1, x2, x3, x4, x5, x6, x7, w, g * gs, gs), sw[g], xst[g], t)
    for k in range(Q8_TOKENS):
        xout[t + k, i] = flane8(vals, k)


Q8_ROWS = 8  # weight rows per one-token int8 tile, each row a lane of the float sums


@inline
def _q8_rows(xout, xq, xs, wq, ws, i, b, gs):
    """xout[b, i:i+8] = _dot_q8 of token b with weight rows i..i+7, the token's bytes loaded once for all eight.

    Row k's integer group sums are lane k of _group_sums8 (the eight rows
    against the token's bytes), and its float sum adds
    (float(sum) * ws[i + k, g]) * xs[b, g] in group order: _dot_q8's bits,
    with the eight rows' float sums as the lanes of one vector.
    """
    x = xq[b]
    w0, w1, w2, w3, w4, w5, w6, w7 = wq[i], wq[i + 1], wq[i + 2], wq[i + 3], wq[i + 4], wq[i + 5], wq[i + 6], wq[i + 7]
    vals = fzero8()
    for g in range(ws.shape[1]):
        sums = _group_sums8(w0, w1, w2, w3, w4, w5, w6, w7, x, g * gs, gs)
        # eight rows read side by side are eight short streams that the hardware prefetcher does not
        # follow: ask for the next tile's lines of this group into L2 (768 x 768 from DRAM, one thread:
        # 20 GB/s, 10 without; into L1 also 10). Past the last row it is a hint, never a fault.
        for k in range(Q8_ROWS):
            prefetch(wq, (i + Q8_ROWS + k) * wq.shape[1] + g * gs)
        vals = q8_rows(vals, sums, ws, i, g, xs[b, g])
    for k in range(Q8_ROWS):
        xout[b, i + k] = flane8(vals, k)


@inline
def _block_q8(xout, xq, xs, xst, xqt, xqsum, wq, ws, i0, i1, tiles):
    """Rows i0 <= i < i1 of the int8 matmul for every row of the batch (a weight row stays in cache meanwhile).

    tiles (a constant at each call site) says whether the batch may hold
    8-token tiles: without, the tiles' code is left out altogether.
    """
    gs = wq.shape[1] // ws.shape[1]
    n = xout.shape[0]
    t_tiled = n - n % Q8_TOKENS if tiles and INT8_DOT != "portable" and gs % INT8_CHUNK == 0 else 0
    i_rows = i0
    if INT8_DOT != "portable" and gs % INT8_CHUNK == 0:  # the tokens left over from the 8-token tiles
        i_rows = i0 + (i1 - i0) // Q8_ROWS * Q8_ROWS
        for i in range(i0, i_rows, Q8_ROWS):
            for b in range(t_tiled, n):
                _q8_rows(xout, xq, xs, wq, ws, i, b, gs)
    i_amx = i0
    if INT8_AMX and tiles and gs % 32 == 0:  # 16 rows at a time through AMX, the rows left as below
        i_amx = i0 + (i1 - i0) // AMX_ROWS * AMX_ROWS
        k = 64 if gs % 64 == 0 else 32
        amx_configure(k)
        for i in range(i0, i_amx, AMX_ROWS):
            if gs == 64:  # constants: the group's one tdpbssd without a loop or a division
                for t in range(0, t_tiled, Q8_TOKENS):
                    _q8_tile_amx(xout, xqt, xst, wq, ws, i, t, 64, 64, t == 0)
            else:
                for t in range(0, t_tiled, Q8_TOKENS):
                    _q8_tile_amx(xout, xqt, xst, wq, ws, i, t, gs, k, t == 0)
        amx_release()
    if INT8_DOT != "portable" and tiles:  # constants compared: other builds never type the tile
        if INT8_DOT != "sse2":
            for i in range(i_amx, i1, 4):
                # rows past the block's end: row i again
                r1, r2, r3 = i + 1 if i + 1 < i1 else i, i + 2 if i + 2 < i1 else i, i + 3 if i + 3 < i1 else i
                # a group size known when compiling unrolls the group's loop (2048 x 768, 64 tokens: 1.07x)
                if gs == 64:
                    for t in range(0, t_tiled, Q8_TOKENS):
                        _q8_tile(xout, xqt, xst, xqsum, wq, ws, i, r1, r2, r3, t, 64, t == 0)
                elif gs == 32:
                    for t in range(0, t_tiled, Q8_TOKENS):
                        _q8_tile(xout, xqt, xst, xqsum, wq, ws, i, r1, r2, r3, t, 32, t == 0)
                else:
                    for t in range(0, t_tiled, Q8_TOKENS):
                        _q8_tile(xout, xqt, xst, xqsum, wq, ws, i, r1, r2, r3, t, gs, t == 0)
    for i in range(i0, i1):
        if INT8_DOT == "sse2" and tiles:
            for t in range(0, t_tiled, Q8_TOKENS):
                _q8_tile_sse2(xout, xq, xst, wq, ws, i, t, gs)
        for b in range(n if i < i_rows else t_tiled, n):
            xout[b, i] = _dot_q8(xq[b], xs[b], wq[i], ws[i], gs)


@inline
def _interleave_tile(xqt, xqsum, xq, tile, cols, gs):
    """xqt[tile] = the first cols columns of rows 8 tile .. 8 tile + 7 of xq, interleaved by four; for VNNI also
    xqsum[g, b] = 128 * the sum of row b's group g, for those rows."""
    # zero-based views: numba then drops its negative-index checks and LLVM vectorizes (8 x 768: 3.3 us -> 0.44)
    x32, t32 = xq[tile * Q8_TOKENS:tile * Q8_TOKENS + Q8_TOKENS].view(np.int32), xqt[tile].view(np.int32)
    for j in range(cols // 4):  # four columns at a time
        for k in range(Q8_TOKENS):
            t32[Q8_TOKENS * j + k] = x32[k, j]
    if INT8_DOT == "vnni":
        for k in range(Q8_TOKENS):
            row = xq[tile * Q8_TOKENS + k]
            for g in range(cols // gs):
                group = row[g * gs:g * gs + gs]
                total = np.int32(0)
                for j in range(gs):
                    total = np.int32(total + np.int32(group[j]))
                xqsum[g, tile * Q8_TOKENS + k] = np.int32(128) * total


@inline
def _nth_block(b, n1, n2, o1, w1, o2, w2, o3, w3):
    """(output, weights, first row, end row) of block b of the rows of three matmuls, n1 and n2 blocks in the first
    two."""
    out, w, c = o1, w1, b
    if b >= n1 + n2:
        out, w, c = o3, w3, b - n1 - n2
    elif b >= n1:
        out, w, c = o2, w2, b - n1
    return out, w, c * BLOCK, min(c * BLOCK + BLOCK, w[0].shape[0])


@pkernel
def matmuls_q8(xq, xs, xst, xqt, xqsum, o1, w1, o2, w2, o3, w3, serial):
    """matmuls() for int8 weights (each a (values, scales) pair) and an int8 input xq, xs of 8 rows or more.

    xst (at least (groups, rows)) receives xs transposed, xqt (at least
    (rows // 8, 8 * cols)) the bytes of each 8 rows interleaved by 4 columns
    and, for VNNI, xqsum (at least (groups, rows)) 128 times each group's sum.
    """
    cols = w1[0].shape[1]  # xq's rows may be wider than this matmul's input
    for b in range(xs.shape[0]):
        for g in range(w1[1].shape[1]):
            xst[g, b] = xs[b, g]
    interleave = INT8_DOT in ("vnni", "avx2") and (cols // w1[1].shape[1]) % INT8_CHUNK == 0  # what _q8_tile reads
    if interleave and serial:
        for tile in range(xq.shape[0] // Q8_TOKENS):
            _interleave_tile(xqt, xqsum, xq, tile, cols, cols // w1[1].shape[1])
    elif interleave:
        for tile in prange(xq.shape[0] // Q8_TOKENS):
            _interleave_tile(xqt, xqsum, xq, tile, cols, cols // w1[1].shape[1])
    _blocks_q8(xq, xs, xst, xqt, xqsum, o1, w1, o2, w2, o3, w3, serial, True)


@pkernel
def matvecs_q8(xq, xs, o1, w1, o2, w2, o3, w3, serial):
    """matmuls_q8 of fewer than 8 rows (one token, a few sequences decoded together): compiled apart, with no
    tiles (with the tiles' unrolled code in the same function, one-token decoding of 110M was 4-6% slower)."""
    # without tiles, xst, xqt and xqsum are never read nor typed: xs and xq stand in for them
    _blocks_q8(xq, xs, xs, xq, xq, o1, w1, o2, w2, o3, w3, serial, False)


@inline
def _blocks_q8(xq, xs, xst, xqt, xqsum, o1, w1, o2, w2, o3, w3, serial, tiles):
    """The blocks of rows of three int8 matmuls, in parallel unless serial (tiles: as _block_q8)."""
    n1 = (w1[0].shape[0] + BLOCK - 1) // BLOCK
    n2 = (w2[0].shape[0] + BLOCK - 1) // BLOCK
    n = n1 + n2 + (w3[0].shape[0] + BLOCK - 1) // BLOCK
    if PARALLEL and not serial:  # as in matmuls: a one-thread build compiles only the plain loop (int8: 77 -> 40 s)
        for b in prange(n):
            out, w, i0, i1 = _nth_block(b, n1, n2, o1, w1, o2, w2, o3, w3)
            _block_q8(out, xq, xs, xst, xqt, xqsum, w[0], w[1], i0, i1, tiles)
        return
    for b in range(n):
        out, w, i0, i1 = _nth_block(b, n1, n2, o1, w1, o2, w2, o3, w3)
        _block_q8(out, xq, xs, xst, xqt, xqsum, w[0], w[1], i0, i1, tiles)


# The forward pass is written once for both weight formats: `project`
# stands for up to three matmuls of one input and is compiled per format (a
# numba overload): float32 weights go to matmuls(), int8 weights (a (values,
# scales) pair per matrix) quantize the input rows first, as runq.c does
# before each of its matmuls, and go to matmuls_q8() (matvecs_q8() below 8 rows).

def project(s, serial, x, o1, w1, o2=None, w2=None, o3=None, w3=None):
    """o1 = x @ w1.T (and o2, o3 likewise when given), on one thread when serial."""


@overload(project)
def _project(s, serial, x, o1, w1, o2=None, w2=None, o3=None, w3=None):
    if isinstance(w1, types.Array):
        def fp32(s, serial, x, o1, w1, o2=None, w2=None, o3=None, w3=None):
            if o2 is None:
                matmuls(x, s.xt, o1, w1, o1, w1[:0], o1, w1[:0], serial)
            elif o3 is None:
                matmuls(x, s.xt, o1, w1, o2, w2, o1, w1[:0], serial)
            else:
                matmuls(x, s.xt, o1, w1, o2, w2, o3, w3, serial)
        return fp32

    def q8(s, serial, x, o1, w1, o2=None, w2=None, o3=None, w3=None):
        xq, xs = s.xq[:x.shape[0]], s.xs[:x.shape[0]]  # full-width rows, so each stays contiguous
        quantize(xq, xs, x, w1[0].shape[1] // w1[1].shape[1], serial or x.shape[0] < Q8_TOKENS)
        none = (w1[0][:0], w1[1][:0])
        if x.shape[0] < Q8_TOKENS:
            if o2 is None:
                matvecs_q8(xq, xs, o1, w1, o1, none, o1, none, serial)
            elif o3 is None:
                matvecs_q8(xq, xs, o1, w1, o2, w2, o1, none, serial)
            else:
                matvecs_q8(xq, xs, o1, w1, o2, w2, o3, w3, serial)
            return
        if o2 is None:
            matmuls_q8(xq, xs, s.xt, s.xqt, s.xqsum, o1, w1, o1, none, o1, none, serial)
        elif o3 is None:
            matmuls_q8(xq, xs, s.xt, s.xqt, s.xqsum, o1, w1, o2, w2, o1, none, serial)
        else:
            matmuls_q8(xq, xs, s.xt, s.xqt, s.xqsum, o1, w1, o2, w2, o3, w3, serial)
    return q8


# ----------------------------------------------------------------------------
# the per-kernel profile: forward adds each step's nanoseconds and calls to a
# row of `prof` (an empty array turns it off; a clock read costs ~20 ns)

PROFILE_ROWS = ("embedding", "rmsnorm", "q/k/v matmul", "RoPE + KV store", "attention", "output projection",
                "residual", "w1/w3 + SwiGLU", "w2 matmul", "classifier")
EMBEDDING, RMSNORM, QKV, ROPE, ATTENTION, OUTPUT, RESIDUAL, FFN_UP, FFN_DOWN, CLASSIFIER = range(len(PROFILE_ROWS))


@inline
def tick(prof, row, t0):
    """Charge the time since t0 to row; returns the new t0."""
    if prof.shape[0] == 0:
        return t0
    t = clock_ns()
    prof[row, 0] += t - t0
    prof[row, 1] += 1
    return t


# ----------------------------------------------------------------------------
# the forward pass

@kernel
def forward(p, w, s, token, pos, seq, want, prof, serial):
    """Run a batch of rows through the model: row b is token[b] of sequence seq[b] at position pos[b].

    The rows' keys and values go into their sequences' caches; attention of
    row b covers positions 0..pos[b], rows earlier in the batch included.
    The logits of the rows with want[b] != 0 land in s.logits, in row order.
    serial: the matmuls run plain loops (the thread count is 1 for now).
    """
    n = token.shape[0]
    x, xb, xb2 = s.x[:n], s.xb[:n], s.xb2[:n]
    hb, hb2, q, k, v, att = s.hb[:n], s.hb2[:n], s.q[:n], s.k[:n], s.v[:n], s.att[:n]
    t = clock_ns() if prof.shape[0] else 0
    for b in range(n):
        x[b] = w.token_embedding_table[token[b]]
    t = tick(prof, EMBEDDING, t)

    for l in range(p.n_layers):
        # attention rmsnorm
        rmsnorm(xb, x, w.rms_att_weight[l])
        t = tick(prof, RMSNORM, t)

        # q, k, v of every row
        project(s, serial, xb, q, w.wq[l], k, w.wk[l], v, w.wv[l])
        t = tick(prof, QKV, t)

        # RoPE relative positional encoding, then k and v into the cache
        rope(q, k, s.rope_cos, s.rope_sin, pos)
        store_kv(s.key_cache[l], s.value_cache[l], k, v, pos, seq)
        t = tick(prof, ROPE, t)

        # multi-head attention over each row's positions 0..pos
        attention(xb, att, q, s.key_cache[l], s.value_cache[l], pos, seq)
        t = tick(prof, ATTENTION, t)

        # output projection and residual
        project(s, serial, xb, xb2, w.wo[l])
        t = tick(prof, OUTPUT, t)
        accum(x, xb2)
        t = tick(prof, RESIDUAL, t)

        # ffn: w2(silu(w1(x)) * w3(x)) and residual
        rmsnorm(xb, x, w.rms_ffn_weight[l])
        t = tick(prof, RMSNORM, t)
        project(s, serial, xb, hb, w.w1[l], hb2, w.w3[l])
        swiglu(hb, hb2)
        t = tick(prof, FFN_UP, t)
        project(s, serial, hb, xb, w.w2[l])
        t = tick(prof, FFN_DOWN, t)
        accum(x, xb)
        t = tick(prof, RESIDUAL, t)

    # final rmsnorm and classifier, for the rows that want logits
    m = 0
    for b in range(n):
        if want[b]:
            xb[m] = x[b]
            m += 1
    if m > 0:
        rmsnorm(xb[:m], xb[:m], w.rms_final_weight)
        t = tick(prof, RMSNORM, t)
        project(s, serial, xb[:m], s.logits[:m], w.wcls)
        tick(prof, CLASSIFIER, t)


@kernel
def shift_cache(key_cache, value_cache, fcr, fci, seq, keep, drop, length):
    """Positions keep+drop..length-1 of sequence seq move down by drop, in every layer (the K-shift).

    A key cached at position p was rotated by p * freq; rotating it back by
    drop * freq (position drop's angles, with the sine negated) files it at
    p - drop without running the model again. Not exact, unlike re-encoding:
    the keys and values of layers past the first still carry what the dropped
    tokens contributed, and two rotations round differently from one.
    """
    c_row, s_row = fcr[drop], fci[drop]
    for l in range(key_cache.shape[0]):
        keys, values = key_cache[l, seq], value_cache[l, seq]
        for p in range(keep + drop, length):
            d = p - drop
            for h in range(keys.shape[0]):
                src, dst = keys[h, p // LANES, :, p % LANES], keys[h, d // LANES, :, d % LANES]
                for i in range(0, src.shape[0], 2):
                    rotate_pair(dst, src, i, c_row[i // 2], -s_row[i // 2])  # negating is exact
            values[:, d] = values[:, p]


@kernel
def copy_sequence(key_cache, value_cache, src, dst, length):
    """Positions 0..length-1 of sequence src's cache into sequence dst's, every layer."""
    nb = (length + LANES - 1) // LANES  # whole blocks: a position past length is written before it is read
    for l in range(key_cache.shape[0]):
        key_cache[l, dst, :, :nb] = key_cache[l, src, :, :nb]
        value_cache[l, dst, :, :length] = value_cache[l, src, :, :length]


# ----------------------------------------------------------------------------
# running a checkpoint

class Profile:
    """Time, calls, FLOPs and bytes per kernel row, over the forward passes it is given to.

    `ns` is filled by forward itself; the FLOP and byte counts are added
    per call by Transformer from the batch it ran; rows timed in Python
    (sampling, decoding) are added with add().
    """

    def __init__(self, p, group_size=0):
        self.p = p
        self.wb = 1 + 4 / group_size if group_size else 4  # bytes per weight
        self.ns = np.zeros((len(PROFILE_ROWS), 2), np.int64)
        self.flops = np.zeros(len(PROFILE_ROWS))
        self.bytes = np.zeros(len(PROFILE_ROWS))
        self.extra = {}  # name -> [calls, seconds]

    def account(self, n, positions, n_logits):
        """FLOPs and bytes of weights (or KV cache) read by one forward of n rows at these positions."""
        p, wb = self.p, self.wb
        dim, hid, kv, L = p.dim, p.hidden_dim, p.kv_dim, p.n_layers
        ctx = float(np.sum(np.asarray(positions, np.float64) + 1))  # positions attended, over the rows
        cost = {
            EMBEDDING: (0, n * dim * 4),
            RMSNORM: ((2 * L * n + n_logits) * 3 * dim, (2 * L + 1) * dim * 4),
            QKV: (L * 2 * n * dim * (dim + 2 * kv), L * wb * dim * (dim + 2 * kv)),
            ROPE: (L * n * 6 * (dim + kv), 0),
            ATTENTION: (L * 4 * ctx * dim, L * 8 * ctx * kv),
            OUTPUT: (L * 2 * n * dim * dim, L * wb * dim * dim),
            RESIDUAL: (2 * L * n * dim, 0),
            FFN_UP: (L * n * (4 * dim * hid + 5 * hid), L * 2 * wb * dim * hid),
            FFN_DOWN: (L * 2 * n * dim * hid, L * wb * dim * hid),
            CLASSIFIER: (2 * n_logits * dim * p.vocab_size, wb * dim * p.vocab_size if n_logits else 0),
        }
        for row, (f, nbytes) in cost.items():
            self.flops[row] += f
            self.bytes[row] += nbytes

    def add(self, name, seconds):
        row = self.extra.setdefault(name, [0, 0.0])
        row[0] += 1
        row[1] += seconds

    def rows(self):
        """[(name, calls, seconds, flops, bytes)] of every row that ran, slowest first."""
        out = [(name, int(self.ns[i, 1]), self.ns[i, 0] / 1e9, self.flops[i], self.bytes[i])
               for i, name in enumerate(PROFILE_ROWS) if self.ns[i, 1]]
        out += [(name, calls, sec, 0.0, 0.0) for name, (calls, sec) in self.extra.items()]
        return sorted(out, key=lambda r: -r[2])


_NO_PROFILE = np.zeros((0, 2), np.int64)


class ThreadChooser:
    """Each forward pass's thread count: all cores, minus the cores other processes keep busy.

    On an idle machine all cores win; when another process keeps a core
    busy, a parallel step waits for the thread that lost its core (3x slower
    than one thread on 2 cores, measured, with stalls of 100 ms and more).
    Every output is computed in the same order whatever the thread count,
    so switching never changes the text. At most every 0.1 s the CPU time
    the whole machine used (/proc/stat) minus this process's own gives the
    cores others use; over 0.6 of a core takes a thread off, under 0.3 gives
    it back. Where /proc/stat cannot be read, all cores are used.
    """

    def __init__(self, most):
        self.most = most
        self.current = most
        self.used = {}  # thread count -> passes run with it
        self.mark = self._sample()

    @staticmethod
    def _sample():
        """(wall seconds, CPU seconds every process used, CPU seconds this process used)."""
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait (user, nice, system, irq, steal...)
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()

    def pick(self):
        if self.mark is not None and time.monotonic() - self.mark[0] >= 0.1:
            now = self._sample()
            others = ((now[1] - self.mark[1]) - (now[2] - self.mark[2])) / (now[0] - self.mark[0])
            self.mark = now
            if others > 0.6:
                self.current = max(1, min(self.current, self.most - int(others + 0.4)))
            elif others < 0.3:
                self.current = self.most
        self.used[self.current] = self.used.get(self.current, 0) + 1
        return self.current


class Transformer:
    """A checkpoint ready to run: config, weights, run state, and forward passes over batches of rows.

    rows: most rows one forward pass takes (longer prompts go in chunks of
    this many); seqs: sequences with a KV cache of their own.
    """

    def __init__(self, checkpoint_path, mmap=True, rows=64, seqs=1):
        self.path = checkpoint_path
        self.config, self.weights, self.version = read_checkpoint(checkpoint_path, mmap=mmap)
        self.quantized = self.version == 2
        p, gs = self.config, (self.weights.group_size if self.quantized else 0)
        self.rows, self.seqs = rows, seqs
        need = run_state_bytes(p, rows, seqs, gs)
        have = _physical_memory()
        if have and need > have:
            raise CheckpointError(f"checkpoint {checkpoint_path}: its run state needs {need / 1e9:.1f} GB "
                                  f"(the KV cache is {2 * 4 * p.n_layers * seqs * p.seq_len * p.kv_dim / 1e9:.1f} GB "
                                  f"for seq_len {p.seq_len}), more than this machine's {have / 1e9:.1f} GB")
        try:
            self.state = malloc_run_state(p, rows, seqs, gs)
        except MemoryError:
            raise CheckpointError(f"checkpoint {checkpoint_path}: cannot allocate {need / 1e9:.1f} GB for the "
                                  f"run state (KV cache for seq_len {p.seq_len})") from None
        self.bytes_per_token = weight_bytes_per_token(p, self.weights)
        self.profile = None  # a Profile to record forward passes into
        self.threads = None  # a ThreadChooser, when the thread count may follow the machine's load
        self._threads_set = None
        self._one = [np.zeros(1, np.int32) for _ in range(4)]

    def run(self, token, pos, seq, want):
        """One forward pass over len(token) <= rows rows (int32 arrays); logits of the wanted rows, in order."""
        m = int(np.count_nonzero(want))
        serial = not jit.PARALLEL
        if self.threads is not None:
            n = self.threads.pick()
            if n != self._threads_set:
                import numba
                numba.set_num_threads(n)
                self._threads_set = n
            serial = n == 1
        if self.profile is None:
            forward(self.config, self.weights, self.state, token, pos, seq, want, _NO_PROFILE, serial)
            return self.state.logits[:m]
        prof = self.profile
        inside = int(prof.ns[:, 0].sum())
        t0 = time.perf_counter()
        forward(self.config, self.weights, self.state, token, pos, seq, want, prof.ns, serial)
        wall = time.perf_counter() - t0
        prof.add("call from Python", wall - (int(prof.ns[:, 0].sum()) - inside) / 1e9)
        prof.account(len(token), pos, m)
        return self.state.logits[:m]

    def forward(self, token, pos, seq=0):
        """Logits of one token (a view of the run state, overwritten by the next call)."""
        t, p, s, wnt = self._one
        t[0], p[0], s[0], wnt[0] = token, pos, seq, 1
        return self.run(t, p, s, wnt)[0]

    def prefill(self, tokens, pos=0, seq=0, logits="last", on_logits=None):
        """Feed tokens at positions pos, pos + 1, ... of sequence seq, in chunks of `rows`.

        logits="last": returns the last token's logits; "all": calls
        on_logits(i, chunk_logits) for the chunk starting at token i and
        returns None; None: no classifier at all.
        """
        n = len(tokens)
        toks = np.asarray(tokens, np.int32)
        last = None
        for i in range(0, n, self.rows):
            m = min(self.rows, n - i)
            want = np.zeros(m, np.int32)
            if logits == "all":
                want[:] = 1
            elif logits == "last" and i + m == n:
                want[-1] = 1
            out = self.run(toks[i:i + m], np.arange(pos + i, pos + i + m, dtype=np.int32),
                           np.full(m, seq, np.int32), want)
            if logits == "all":
                on_logits(i, out)
            elif len(out):
                last = out[-1]
        return last

    def shift_cache(self, seq, keep, drop, length):
        """Drop positions keep..keep+drop-1 of sequence seq: later ones move down, keys rotated to match."""
        s = self.state
        shift_cache(s.key_cache, s.value_cache, s.rope_cos, s.rope_sin, seq, keep, drop, length)

    def cached_keys(self, seq, length):
        """(n_layers, length, kv_dim): keys of positions 0..length-1 of sequence seq, laid out as run.c caches them."""
        k = self.state.key_cache[:, seq]  # (n_layers, n_kv_heads, blocks, head_size, 16)
        k = k.transpose(0, 2, 4, 1, 3).reshape(k.shape[0], -1, self.config.kv_dim)
        return k[:, :length].copy()

    def cached_values(self, seq, length):
        """(n_layers, length, kv_dim): values of positions 0..length-1 of sequence seq, in run.c's layout."""
        v = self.state.value_cache[:, seq, :, :length]  # (n_layers, n_kv_heads, length, head_size)
        return v.transpose(0, 2, 1, 3).reshape(v.shape[0], length, self.config.kv_dim).copy()

    def copy_sequence(self, src, dst, length):
        """Make sequence dst's first `length` positions those of sequence src."""
        copy_sequence(self.state.key_cache, self.state.value_cache, src, dst, length)


def _physical_memory():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
