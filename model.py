"""Llama 2 transformer inference in Numba: llama2.c's run.c (and runq.c's int8 forward), kernel for kernel.

Read alongside run.c: the same structs (Config, TransformerWeights, RunState),
the same kernels in the same order, one `forward` with the layer loop inline.

The compile mode is fixed once per process, before numba is imported, from two
environment variables that run.py sets from its flags:
  LLAMA2_FASTMATH  off | unsafe | on   (gcc -O3 | -funsafe-math-optimizations | -Ofast)
  LLAMA2_THREADS   1 = serial kernels (plain gcc), N > 1 = prange kernels (OpenMP)
Each mode gets its own on-disk JIT cache, because numba's cache does not key
on the fast-math flags (see NUMBA-NOTES.md).
"""

import hashlib
import mmap as mmap_module
import os
import sys
from collections import namedtuple

import numpy as np

# ----------------------------------------------------------------------------
# compile mode (must be settled before numba is imported)

FASTMATH_FLAGS = {
    "off": False,
    # what -funsafe-math-optimizations allows: reassociation, reciprocals, no
    # signed zeros, contraction, approximate functions; NaN/Inf stay honoured
    "unsafe": {"nsz", "arcp", "contract", "afn", "reassoc"},
    "on": True,  # all seven LLVM flags, like -Ofast / -ffast-math
}
_ALIASES = {"0": "off", "false": "off", "no": "off", "1": "on", "true": "on", "yes": "on"}


def compile_mode():
    """(fastmath name, thread count) requested through the environment."""
    fm = os.environ.get("LLAMA2_FASTMATH", "on").strip().lower()
    fm = _ALIASES.get(fm, fm)
    if fm not in FASTMATH_FLAGS:
        raise ValueError(f"LLAMA2_FASTMATH={fm!r}: expected off, unsafe or on")
    threads = int(os.environ.get("LLAMA2_THREADS") or 0) or (os.cpu_count() or 1)
    return fm, threads


def cache_dir(fastmath, parallel):
    """One JIT cache per (fast-math set, serial/parallel, target CPU, source version).

    numba's cache checks the timestamp of a kernel's own file only: run.py's
    kernels call model.py's and would keep stale copies of them after model.py
    changes. Keying the directory on a hash of the kernel sources avoids that.
    """
    base = os.environ.get("LLAMA2_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llama2-numba")
    cpu = os.environ.get("NUMBA_CPU_NAME") or "host"
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha1()
    for name in ("model.py", "run.py"):
        try:
            with open(os.path.join(here, name), "rb") as f:
                digest.update(f.read())
        except OSError:
            pass
    return os.path.join(base, f"{fastmath}-{'parallel' if parallel else 'serial'}-{cpu}", digest.hexdigest()[:12])


FASTMATH, THREADS = compile_mode()
PARALLEL = THREADS > 1
CACHE_DIR = cache_dir(FASTMATH, PARALLEL)

if "numba" not in sys.modules:
    os.environ["NUMBA_CACHE_DIR"] = CACHE_DIR
    if PARALLEL:
        os.environ["NUMBA_NUM_THREADS"] = str(THREADS)

import numba  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

if os.path.abspath(numba.config.CACHE_DIR or "") != os.path.abspath(CACHE_DIR):
    # numba was imported earlier with another cache: entries written in another
    # fast-math mode could be loaded for this one, silently changing results
    raise ImportError("model.py must be imported before numba (or with NUMBA_CACHE_DIR="
                      f"{CACHE_DIR}) so each fast-math mode keeps its own JIT cache")
if PARALLEL:
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))

_fm = FASTMATH_FLAGS[FASTMATH]
kernel = njit(cache=True, fastmath=_fm, nogil=True)  # serial kernels and glue
pkernel = njit(cache=True, fastmath=_fm, nogil=True, parallel=PARALLEL)  # prange kernels
inline = njit(cache=True, fastmath=_fm, nogil=True, inline="always")  # hot helpers, inlined by numba

# ----------------------------------------------------------------------------
# Transformer, TransformerWeights and RunState

Config = namedtuple("Config", "dim hidden_dim n_layers n_heads n_kv_heads vocab_size seq_len")
Config.head_size = property(lambda p: p.dim // p.n_heads)
Config.kv_dim = property(lambda p: p.dim // p.n_heads * p.n_kv_heads)
Config.kv_mul = property(lambda p: p.n_heads // p.n_kv_heads)

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
    "x",  # (dim,) activation at the current position
    "xb",  # (dim,) same, inside a residual branch
    "xb2",  # (dim,) scratch
    "hb",  # (hidden_dim,) ffn hidden
    "hb2",  # (hidden_dim,) ffn hidden
    "q",  # (dim,) query
    "att",  # (n_heads, seq_len) attention scores, then weights
    "logits",  # (vocab_size,) output
    "key_cache",  # (n_layers, seq_len, kv_dim); k for position pos is written in place
    "value_cache",  # (n_layers, seq_len, kv_dim); likewise v
    "rope_cos",  # (head_size // 2,) RoPE's cos(pos * freq) for this position
    "rope_sin",  # (head_size // 2,) and sin
    "xq",  # (max(dim, hidden_dim),) int8: the activation entering an int8 matmul
    "xs",  # (max(dim, hidden_dim) // group_size,) its scales (int8 models only; else empty)
])


def malloc_run_state(p, group_size=0):
    """Every activation buffer, allocated once; forward() allocates nothing."""
    f32 = np.float32
    nq = max(p.dim, p.hidden_dim) if group_size else 0
    return RunState(
        x=np.zeros(p.dim, f32), xb=np.zeros(p.dim, f32), xb2=np.zeros(p.dim, f32),
        hb=np.zeros(p.hidden_dim, f32), hb2=np.zeros(p.hidden_dim, f32),
        q=np.zeros(p.dim, f32), att=np.zeros((p.n_heads, p.seq_len), f32),
        logits=np.zeros(p.vocab_size, f32),
        key_cache=np.zeros((p.n_layers, p.seq_len, p.kv_dim), f32),
        value_cache=np.zeros((p.n_layers, p.seq_len, p.kv_dim), f32),
        rope_cos=np.zeros(p.head_size // 2, f32), rope_sin=np.zeros(p.head_size // 2, f32),
        xq=np.zeros(nq, np.int8), xs=np.zeros(nq // group_size if group_size else 0, f32))


# ----------------------------------------------------------------------------
# reading a checkpoint: header check, then zero-copy views of one flat array

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
HEADER_V0 = 28  # seven int32
HEADER_V12 = 256


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file."""


def read_header(path):
    """(version, Config, shared_classifier, group_size, header_bytes, file_size)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_V12)
    except OSError as e:
        raise CheckpointError(f"cannot open checkpoint {path}: {e.strerror or e}") from None
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if len(head) < HEADER_V0:
        raise CheckpointError(f"checkpoint {path} is {size} bytes: too short to hold a header")
    magic = int(np.frombuffer(head, "<u4", 1)[0])
    group_size = 0
    if magic == MAGIC:
        if len(head) < HEADER_V12:
            raise CheckpointError(f"checkpoint {path} is {size} bytes: too short for its 256-byte header")
        version = int(np.frombuffer(head, "<i4", 1, 4)[0])
        if version not in (1, 2):
            raise CheckpointError(f"checkpoint {path} has format version {version}; "
                                  "this program reads versions 0, 1 and 2")
        fields = [int(v) for v in np.frombuffer(head, "<i4", 7, 8)]
        shared = head[36] != 0
        if version == 2:
            group_size = int(np.frombuffer(head, "<i4", 1, 37)[0])
        header_bytes = HEADER_V12
    else:
        version = 0
        fields = [int(v) for v in np.frombuffer(head, "<i4", 7, 0)]
        shared = fields[5] > 0  # a negative vocab_size flags a separate classifier
        fields[5] = abs(fields[5])
        header_bytes = HEADER_V0
    p = Config(*fields)
    _check_config(path, p, version, group_size)
    return version, p, shared, group_size, header_bytes, size


def _check_config(path, p, version, group_size):
    names = "dim hidden_dim n_layers n_heads n_kv_heads vocab_size seq_len".split()
    for name, v in zip(names, p):
        if v <= 0:
            raise CheckpointError(f"checkpoint {path} is not a llama2.c checkpoint: "
                                  f"header {name} = {v} (format version {version})")
    if p.dim % p.n_heads:
        raise CheckpointError(f"checkpoint {path}: dim {p.dim} is not a multiple of n_heads {p.n_heads}")
    if p.n_heads % p.n_kv_heads:
        raise CheckpointError(f"checkpoint {path}: n_heads {p.n_heads} is not a multiple "
                              f"of n_kv_heads {p.n_kv_heads}")
    if p.head_size % 2:
        raise CheckpointError(f"checkpoint {path}: head size {p.head_size} is odd; RoPE rotates pairs")
    if version == 2 and (group_size <= 0 or p.dim % group_size or p.hidden_dim % group_size):
        raise CheckpointError(f"checkpoint {path}: group_size {group_size} must be positive "
                              f"and divide dim {p.dim} and hidden_dim {p.hidden_dim}")


def _layout(version, p, shared):
    """(name, shape) of every float32 array in file order, for versions 0 and 1."""
    L, dim, hid, kv, vocab = p.n_layers, p.dim, p.hidden_dim, p.kv_dim, p.vocab_size
    mats = [("wq", (L, dim, dim)), ("wk", (L, kv, dim)), ("wv", (L, kv, dim)),
            ("wo", (L, dim, dim))]
    ffn = [("w1", (L, hid, dim)), ("w2", (L, dim, hid)), ("w3", (L, hid, dim))]
    if version == 0:
        rope = p.seq_len * p.head_size // 2  # old precomputed RoPE tables, skipped
        out = ([("token_embedding_table", (vocab, dim)), ("rms_att_weight", (L, dim))] + mats
               + [("rms_ffn_weight", (L, dim))] + ffn
               + [("rms_final_weight", (dim,)), ("freq_cis_real", (rope,)), ("freq_cis_imag", (rope,))])
    else:
        out = ([("rms_att_weight", (L, dim)), ("rms_ffn_weight", (L, dim)), ("rms_final_weight", (dim,)),
                ("token_embedding_table", (vocab, dim))] + mats + ffn)
    if not shared:
        out.append(("wcls", (vocab, dim)))
    return out


def read_checkpoint(path, mmap=True):
    """Config, weights (views into one flat array) and the version.

    Versions 0 and 1 give TransformerWeights, version 2 TransformerWeightsQ8.

    mmap=True maps the file read-only (opens files larger than RAM, shares pages
    between processes); mmap=False reads it into memory with np.fromfile.
    """
    version, p, shared, group_size, header_bytes, size = read_header(path)
    if version == 2:
        return p, _read_q8(path, p, shared, group_size, header_bytes, size, mmap), version
    layout = _layout(version, p, shared)
    n_floats = sum(int(np.prod(shape)) for _, shape in layout)
    _check_size(path, size, header_bytes + 4 * n_floats, f"format version {version}, {p}")
    flat = _file_bytes(path, mmap)[header_bytes:].view("<f4")
    tensors, off = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape))
        tensors[name] = flat[off:off + n].reshape(shape)
        off += n
    if shared:
        tensors["wcls"] = tensors["token_embedding_table"]
    w = TransformerWeights(**{k: tensors[k] for k in TransformerWeights._fields})
    return p, w, version


def _check_size(path, size, expected, header):
    if size != expected:
        what = "truncated" if size < expected else "longer than its header describes"
        raise CheckpointError(f"checkpoint {path} is {size} bytes but its header ({header}) needs "
                              f"{expected}: the file is {what}")


def _file_bytes(path, mmap):
    """The whole file as one uint8 array: mapped read-only, or read into memory."""
    if mmap:
        m = np.memmap(path, dtype=np.uint8, mode="r")
        _advise_huge_pages(m)
        return np.asarray(m)
    return np.fromfile(path, dtype=np.uint8)  # numpy asks for huge pages itself


def _advise_huge_pages(m):
    """Ask Linux to fill the page cache for this mapping with 2 MB folios.

    Pages not yet cached are then read in 2 MB pieces and mapped with one TLB
    entry each (under a hypervisor a 4 KB TLB miss costs a two-level page
    walk): llama2.c's runomp streamed the 110M shape 26% faster from 2 MB
    folios than from 4 KB ones (benchmarks/RESULTS.md). Pages already cached
    keep their size. Only a hint: any failure is ignored.
    """
    advice = getattr(mmap_module, "MADV_HUGEPAGE", None)
    mapping = getattr(m, "_mmap", None)  # numpy's private handle; absent in some versions
    if advice is not None and mapping is not None and len(m):
        try:
            mapping.madvise(advice)
        except OSError:
            pass


def _read_q8(path, p, shared, gs, header_bytes, size, mmap):
    """TransformerWeightsQ8 of a version-2 file: per-layer (int8 values, float32 scales) views."""
    L, dim, hid, kv, vocab = p.n_layers, p.dim, p.hidden_dim, p.kv_dim, p.vocab_size
    mats = [("wq", dim, dim), ("wk", kv, dim), ("wv", kv, dim), ("wo", dim, dim),
            ("w1", hid, dim), ("w2", dim, hid), ("w3", hid, dim)]
    qbytes = lambda rows, cols: rows * cols + rows * cols // gs * 4  # noqa: E731
    expected = (header_bytes + 4 * (2 * L * dim + dim) + qbytes(vocab, dim)
                + sum(L * qbytes(r, c) for _, r, c in mats) + (0 if shared else qbytes(vocab, dim)))
    _check_size(path, size, expected, f"format version 2, group size {gs}, {p}")
    raw = _file_bytes(path, mmap)
    off = header_bytes

    def floats(n, shape):
        nonlocal off
        a = raw[off:off + 4 * n].view("<f4").reshape(shape)
        off += 4 * n
        return a

    def quantized(rows, cols):
        nonlocal off
        q = raw[off:off + rows * cols].view(np.int8).reshape(rows, cols)
        off += rows * cols
        return q, floats(rows * cols // gs, (rows, cols // gs))

    t = {"rms_att_weight": floats(L * dim, (L, dim)), "rms_ffn_weight": floats(L * dim, (L, dim)),
         "rms_final_weight": floats(dim, (dim,))}
    tokens = quantized(vocab, dim)
    for name, rows, cols in mats:
        t[name] = tuple(quantized(rows, cols) for _ in range(L))
    t["wcls"] = tokens if shared else quantized(vocab, dim)
    # dequantized once for the row lookup; float32(int8) * scale, one rounding, as runq.c
    q, sc = tokens
    t["token_embedding_table"] = (q.reshape(vocab, dim // gs, gs).astype(np.float32)
                                  * sc[:, :, None]).reshape(vocab, dim)
    t["group_size"] = gs
    return TransformerWeightsQ8(**t)

def weight_bytes_per_token(p, w):
    """Bytes of weights one forward pass reads: every matrix once, one embedding row."""
    arrays = []
    for name, a in w._asdict().items():
        if name in ("token_embedding_table", "group_size"):
            continue
        arrays += _leaves(a)
    return sum(a.nbytes for a in arrays) + p.dim * 4


def _leaves(a):
    return [a] if isinstance(a, np.ndarray) else [x for item in a for x in _leaves(item)]


# ----------------------------------------------------------------------------
# neural net blocks; each writes into its first argument and allocates nothing

@kernel
def rmsnorm(o, x, weight):
    """o = weight * (x / sqrt(mean(x^2) + 1e-5)), the sum of squares sequential."""
    size = x.shape[0]
    ss = np.float32(0.0)
    for j in range(size):
        ss += x[j] * x[j]
    ss /= np.float32(size)
    ss += np.float32(1e-5)  # a bare 1e-5 would widen ss to float64
    ss = np.float32(1.0) / np.sqrt(ss)
    for j in range(size):
        o[j] = weight[j] * (ss * x[j])


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 bits."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@inline
def exp(x):
    """exp(x) for float32 x: the C library's expf when strict, else a vectorizable polynomial.

    Strict mode must call expf to match gcc -O3 bit for bit. With fast math,
    numba (no SVML) would still call expf one element at a time; this
    Cephes-style version (range reduction by ln 2, degree-6 polynomial,
    2^n built in the exponent bits) stays within 2 ulp and vectorizes.
    """
    if FASTMATH == "off":
        return np.exp(x)
    x = min(max(x, np.float32(-87.3)), np.float32(88.7))
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    return y * _f32_from_bits(np.int32((np.int32(n) + np.int32(127)) << 23))


@kernel
def softmax(x):
    """x = exp(x - max x) / sum exp(x - max x), in place, the sum sequential."""
    max_val = x[0]
    for i in range(1, x.shape[0]):
        if x[i] > max_val:
            max_val = x[i]
    total = np.float32(0.0)
    for i in range(x.shape[0]):
        x[i] = exp(x[i] - max_val)
        total += x[i]
    for i in range(x.shape[0]):
        x[i] /= total


# Matmuls work on blocks of 8 output rows. Each row is still one sequential sum
# over j, so strict mode stays exact, but in strict mode 8 interleaved sums hide
# the add latency that makes a lone strict dot product slow (1.6-2.3x
# measured); with fast math each row's sum is vectorized and the blocks still
# measured 8% faster per token than single rows on the 15M shape (a tie on
# 110M). The block helper is inlined: calling a compiled block function (with
# its own bounds test) from the parallel loop cost 7% per token on the 110M
# shape and 20% in strict mode on the 15M shape. The last rows % 8 rows run
# serially after the parallel loop.

BLOCK = 8


@kernel
def _row(xout, x, w, i):
    """xout[i] = sum_j w[i, j] * x[j]."""
    val = np.float32(0.0)
    for j in range(w.shape[1]):
        val += w[i, j] * x[j]
    xout[i] = val


@inline
def _rows8(xout, x, w, b):
    """xout[8b:8b+8] = w[8b:8b+8] @ x, eight interleaved sequential sums."""
    i = BLOCK * b
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
def _tail(xout, x, w):
    """The rows after the last whole block, one at a time."""
    for i in range(w.shape[0] - w.shape[0] % BLOCK, w.shape[0]):
        _row(xout, x, w, i)


@pkernel
def matmul(xout, x, w):
    """xout = w @ x: W (d, n) @ x (n,) -> xout (d,), blocks of rows in parallel."""
    for b in prange(w.shape[0] // BLOCK):
        _rows8(xout, x, w, b)
    _tail(xout, x, w)


@pkernel
def matmul_qkv(q, k, v, x, wq, wk, wv):
    """q = wq @ x, k = wk @ x, v = wv @ x in one parallel loop (one fork/join, not three)."""
    nq = wq.shape[0] // BLOCK
    nk = wk.shape[0] // BLOCK
    for b in prange(nq + 2 * nk):
        if b < nq:
            _rows8(q, x, wq, b)
        elif b < nq + nk:
            _rows8(k, x, wk, b - nq)
        else:
            _rows8(v, x, wv, b - nq - nk)
    _tail(q, x, wq)
    _tail(k, x, wk)
    _tail(v, x, wv)


@pkernel
def matmul2(h1, h3, x, w1, w3):
    """h1 = w1 @ x and h3 = w3 @ x in one parallel loop (the profiler's half of ffn_up).

    Rows are computed as ffn_up computes them in each mode (8-row blocks when
    strict, single rows with fast math, whose sums round differently), so the
    profiled forward keeps forward's logits bit for bit.
    """
    if FASTMATH == "off":
        nb = w1.shape[0] // BLOCK
        for b in prange(2 * nb):
            if b < nb:
                _rows8(h1, x, w1, b)
            else:
                _rows8(h3, x, w3, b - nb)
        _tail(h1, x, w1)
        _tail(h3, x, w3)
    else:
        d = w1.shape[0]
        for r in prange(2 * d):
            if r < d:
                _row(h1, x, w1, r)
            else:
                _row(h3, x, w3, r - d)


@kernel
def silu_mul(a, b):
    """silu(a) * b, silu(a) = a * (1 / (1 + exp(-a)))."""
    one = np.float32(1.0)
    return a * (one / (one + exp(-a))) * b


@kernel
def swiglu(hb, hb2):
    """hb = silu(hb) * hb2."""
    for i in range(hb.shape[0]):
        hb[i] = silu_mul(hb[i], hb2[i])


@inline
def _ffn_row(hb, hb2, x, w1, w3, i):
    """hb[i] = silu(w1[i] . x) * (w3[i] . x), one row of each."""
    _row(hb, x, w1, i)
    _row(hb2, x, w3, i)
    hb[i] = silu_mul(hb[i], hb2[i])


@pkernel
def ffn_up(hb, hb2, x, w1, w3):
    """hb = silu(w1 @ x) * (w3 @ x): matmul2 and swiglu fused.

    With fast math one row of w1 and one of w3 per iteration measured 3-5%
    faster per token than blocks of 8 (13% on 15M single-threaded); strict
    mode needs the blocks to hide the add latency.
    """
    if FASTMATH == "off":
        nb = w1.shape[0] // BLOCK
        for b in prange(nb):
            _rows8(hb, x, w1, b)
            _rows8(hb2, x, w3, b)
            for i in range(BLOCK * b, BLOCK * b + BLOCK):
                hb[i] = silu_mul(hb[i], hb2[i])
        for i in range(BLOCK * nb, w1.shape[0]):
            _ffn_row(hb, hb2, x, w1, w3, i)
    else:
        for i in prange(w1.shape[0]):
            _ffn_row(hb, hb2, x, w1, w3, i)


@kernel
def rope_angles(fcr, fci, pos):
    """fcr[j], fci[j] = cos, sin(pos * freq) with freq = 1 / 10000^(2j / head_size).

    Rotation pair (i, i+1) uses j = (i % head_size) / 2. The angles are the same
    for every layer and head, so they are computed once per token (run.c
    recomputes them in every layer; the values are bit-identical).
    """
    head_size = 2 * fcr.shape[0]
    for j in range(fcr.shape[0]):
        freq = np.float32(1.0) / np.float32(10000.0) ** (np.float32(2 * j) / np.float32(head_size))
        val = np.float32(pos) * freq
        fcr[j] = np.cos(val)
        fci[j] = np.sin(val)


@kernel
def rope(q, k, fcr, fci):
    """Rotate each pair (i, i+1) of q, and of k while i < kv_dim: (v0 c - v1 s, v0 s + v1 c)."""
    head_size = 2 * fcr.shape[0]
    for i in range(0, q.shape[0], 2):
        j = (i % head_size) // 2
        c = fcr[j]
        sn = fci[j]
        q0 = q[i]
        q1 = q[i + 1]
        q[i] = q0 * c - q1 * sn
        q[i + 1] = q0 * sn + q1 * c
        if i < k.shape[0]:
            k0 = k[i]
            k1 = k[i + 1]
            k[i] = k0 * c - k1 * sn
            k[i + 1] = k0 * sn + k1 * c


# Attention, per head h (kv head h // kv_mul), over positions 0..pos:
# scores, softmax, weighted sum of values. `attention` runs all three per head
# in one parallel loop; the profiler runs them as three loops to time each.

@kernel
def head_scores(att, q, key_cache, h, pos, head_size, kv_mul):
    """att[h, t] = (q_h . k_t) / sqrt(head_size) for t = 0..pos."""
    # slices rather than offset indexing: numba then knows every index is in
    # range from zero and the dot products vectorize (2-5x measured)
    qh = q[h * head_size:(h + 1) * head_size]
    ko = (h // kv_mul) * head_size
    scale = np.sqrt(np.float32(head_size))
    for t in range(pos + 1):
        kt = key_cache[t, ko:ko + head_size]
        score = np.float32(0.0)
        for i in range(head_size):
            score += qh[i] * kt[i]
        att[h, t] = score / scale


@kernel
def head_values(xb, att, value_cache, h, pos, head_size, kv_mul):
    """xb_h = sum_t att[h, t] * v_t, accumulated t by t from zero."""
    xh = xb[h * head_size:(h + 1) * head_size]
    ko = (h // kv_mul) * head_size
    xh[:] = np.float32(0.0)
    for t in range(pos + 1):
        a = att[h, t]
        vt = value_cache[t, ko:ko + head_size]
        for i in range(head_size):
            xh[i] += a * vt[i]


@pkernel
def attention(xb, att, q, key_cache, value_cache, pos, head_size, kv_mul):
    """Multi-head attention, heads in parallel."""
    for h in prange(att.shape[0]):
        head_scores(att, q, key_cache, h, pos, head_size, kv_mul)
        softmax(att[h, :pos + 1])
        head_values(xb, att, value_cache, h, pos, head_size, kv_mul)


@pkernel
def attention_scores(att, q, key_cache, pos, head_size, kv_mul):
    for h in prange(att.shape[0]):
        head_scores(att, q, key_cache, h, pos, head_size, kv_mul)


@pkernel
def attention_softmax(att, pos):
    for h in prange(att.shape[0]):
        softmax(att[h, :pos + 1])


@pkernel
def attention_values(xb, att, value_cache, pos, head_size, kv_mul):
    for h in prange(att.shape[0]):
        head_values(xb, att, value_cache, h, pos, head_size, kv_mul)


@kernel
def accum(a, b):
    """a += b (the residual connection)."""
    for i in range(a.shape[0]):
        a[i] += b[i]


# ----------------------------------------------------------------------------
# the forward pass

@kernel
def forward(p, w, s, token, pos):
    """Run one token at position pos through the model; the logits land in s.logits."""
    head_size = p.dim // p.n_heads
    kv_mul = p.n_heads // p.n_kv_heads
    x = s.x
    x[:] = w.token_embedding_table[token]
    rope_angles(s.rope_cos, s.rope_sin, pos)

    for l in range(p.n_layers):
        # attention rmsnorm
        rmsnorm(s.xb, x, w.rms_att_weight[l])

        # q, k, v for this position; k and v go straight into the cache row
        k = s.key_cache[l, pos]
        v = s.value_cache[l, pos]
        matmul_qkv(s.q, k, v, s.xb, w.wq[l], w.wk[l], w.wv[l])

        # RoPE relative positional encoding
        rope(s.q, k, s.rope_cos, s.rope_sin)

        # multi-head attention over positions 0..pos
        attention(s.xb, s.att, s.q, s.key_cache[l], s.value_cache[l], pos, head_size, kv_mul)

        # output projection and residual
        matmul(s.xb2, s.xb, w.wo[l])
        accum(x, s.xb2)

        # ffn: w2(silu(w1(x)) * w3(x)) and residual
        rmsnorm(s.xb, x, w.rms_ffn_weight[l])
        ffn_up(s.hb, s.hb2, s.xb, w.w1[l], w.w3[l])
        matmul(s.xb, s.hb, w.w2[l])
        accum(x, s.xb)

    # final rmsnorm and classifier
    rmsnorm(x, x, w.rms_final_weight)
    matmul(s.logits, x, w.wcls)


# ----------------------------------------------------------------------------
# int8 (Q8_0) variant, as runq.c: weights and the activations entering a matmul
# are int8 in groups of gs with one float32 scale per group

@kernel
def quantize(q, s, x, gs):
    """Per group: scale = max|x| / 127, q = round(x / scale) (half away from zero)."""
    for g in range(x.shape[0] // gs):
        wmax = np.float32(0.0)
        for i in range(g * gs, g * gs + gs):
            v = abs(x[i])
            if v > wmax:
                wmax = v
        scale = wmax / np.float32(127.0)
        s[g] = scale
        for i in range(g * gs, g * gs + gs):
            # runq.c divides 0 by 0 on an all-zero group and its int8 cast of NaN gives 0
            q[i] = np.int8(_round_half_away(x[i] / scale)) if scale != 0 else np.int8(0)


@kernel
def _round_half_away(v):
    """C's round(): to nearest, halves away from zero (np.round would go to even)."""
    r = np.floor(np.abs(v) + np.float32(0.5))
    if r - np.abs(v) > np.float32(0.5):  # abs(v) + 0.5 rounded up in float32
        r -= np.float32(1.0)
    return r if v >= 0 else -r


@inline
def _row_q8(xout, xq, xs, wq, ws, i, gs):
    """xout[i] = sum over groups g of (float(sum_k xq * wq) * ws[i, g]) * xs[g].

    The integer dot of a group is exact in any order, so it vectorizes even in
    strict mode; the float sum over groups stays sequential.
    """
    val = np.float32(0.0)
    w = wq[i]
    for g in range(xs.shape[0]):
        # zero-based slices let numba drop its negative-index checks, so the
        # integer dot vectorizes (4x measured)
        xg = xq[g * gs:(g + 1) * gs]
        wg = w[g * gs:(g + 1) * gs]
        ival = np.int32(0)
        for k in range(gs):
            # numba widens int products to int64; truncating each step keeps the
            # vector lanes 32-bit (LLVM then narrows the multiply further)
            ival = np.int32(ival + np.int32(xg[k]) * np.int32(wg[k]))
        val += (np.float32(ival) * ws[i, g]) * xs[g]
    xout[i] = val


@pkernel
def matmul_q8(xout, xq, xs, wq, ws, gs):
    """xout = W @ x with W and x both int8 in groups, rows in parallel."""
    for i in prange(wq.shape[0]):
        _row_q8(xout, xq, xs, wq, ws, i, gs)


@pkernel
def matmul_qkv_q8(q, k, v, xq, xs, wq, wk, wv, gs):
    """q, k, v = wq @ x, wk @ x, wv @ x in one parallel loop."""
    dq, dk = wq[0].shape[0], wk[0].shape[0]
    for r in prange(dq + 2 * dk):
        if r < dq:
            _row_q8(q, xq, xs, wq[0], wq[1], r, gs)
        elif r < dq + dk:
            _row_q8(k, xq, xs, wk[0], wk[1], r - dq, gs)
        else:
            _row_q8(v, xq, xs, wv[0], wv[1], r - dq - dk, gs)


@pkernel
def ffn_up_q8(hb, hb2, xq, xs, w1, w3, gs):
    """hb = silu(w1 @ x) * (w3 @ x), row by row."""
    for i in prange(hb.shape[0]):
        _row_q8(hb, xq, xs, w1[0], w1[1], i, gs)
        _row_q8(hb2, xq, xs, w3[0], w3[1], i, gs)
        hb[i] = silu_mul(hb[i], hb2[i])


@kernel
def forward_q8(p, w, s, token, pos):
    """runq.c's forward: forward() with int8 matmuls; logits in s.logits."""
    head_size = p.dim // p.n_heads
    kv_mul = p.n_heads // p.n_kv_heads
    gs = w.group_size
    dim, hidden = p.dim, p.hidden_dim
    xq, xs = s.xq[:dim], s.xs[:dim // gs]
    hq, hs = s.xq[:hidden], s.xs[:hidden // gs]
    x = s.x
    x[:] = w.token_embedding_table[token]
    rope_angles(s.rope_cos, s.rope_sin, pos)

    for l in range(p.n_layers):
        rmsnorm(s.xb, x, w.rms_att_weight[l])
        quantize(xq, xs, s.xb, gs)
        k = s.key_cache[l, pos]
        v = s.value_cache[l, pos]
        matmul_qkv_q8(s.q, k, v, xq, xs, w.wq[l], w.wk[l], w.wv[l], gs)
        rope(s.q, k, s.rope_cos, s.rope_sin)
        attention(s.xb, s.att, s.q, s.key_cache[l], s.value_cache[l], pos, head_size, kv_mul)
        quantize(xq, xs, s.xb, gs)
        matmul_q8(s.xb2, xq, xs, w.wo[l][0], w.wo[l][1], gs)
        accum(x, s.xb2)
        rmsnorm(s.xb, x, w.rms_ffn_weight[l])
        quantize(xq, xs, s.xb, gs)
        ffn_up_q8(s.hb, s.hb2, xq, xs, w.w1[l], w.w3[l], gs)
        quantize(hq, hs, s.hb, gs)
        matmul_q8(s.xb, hq, hs, w.w2[l][0], w.w2[l][1], gs)
        accum(x, s.xb)

    rmsnorm(x, x, w.rms_final_weight)
    quantize(xq, xs, x, gs)
    matmul_q8(s.logits, xq, xs, w.wcls[0], w.wcls[1], gs)


# ----------------------------------------------------------------------------
# the profiler's forward

@kernel
def embed(x, table, token):
    """x = table[token]."""
    x[:] = table[token]


def forward_profiled(p, w, s, token, pos, tick):
    """forward() (or forward_q8()) driven from Python, one kernel call at a time, for the profiler.

    Same kernels, same arithmetic (the logits are bit-identical); after each
    step tick(name) charges the time since the previous tick to that row.
    """
    head_size = p.dim // p.n_heads
    kv_mul = p.n_heads // p.n_kv_heads
    q8 = isinstance(w, TransformerWeightsQ8)
    gs = w.group_size if q8 else 0
    xq, xs = (s.xq[:p.dim], s.xs[:p.dim // gs]) if q8 else (None, None)
    hq, hs = (s.xq[:p.hidden_dim], s.xs[:p.hidden_dim // gs]) if q8 else (None, None)

    def mm(out, x, wt, quantized=None):
        if q8:
            matmul_q8(out, quantized[0], quantized[1], wt[0], wt[1], gs)
        else:
            matmul(out, x, wt)

    def quant(q, sc, x):
        if q8:
            quantize(q, sc, x, gs)
            tick("quantize")

    x = s.x
    embed(x, w.token_embedding_table, token)
    tick("embedding")
    rope_angles(s.rope_cos, s.rope_sin, pos)
    tick("RoPE")
    for l in range(p.n_layers):
        rmsnorm(s.xb, x, w.rms_att_weight[l])
        tick("rmsnorm")
        quant(xq, xs, s.xb)
        k = s.key_cache[l, pos]
        v = s.value_cache[l, pos]
        if q8:
            matmul_qkv_q8(s.q, k, v, xq, xs, w.wq[l], w.wk[l], w.wv[l], gs)
        else:
            matmul_qkv(s.q, k, v, s.xb, w.wq[l], w.wk[l], w.wv[l])
        tick("q/k/v matmul")
        rope(s.q, k, s.rope_cos, s.rope_sin)
        tick("RoPE")
        attention_scores(s.att, s.q, s.key_cache[l], pos, head_size, kv_mul)
        tick("attention scores")
        attention_softmax(s.att, pos)
        tick("attention softmax")
        attention_values(s.xb, s.att, s.value_cache[l], pos, head_size, kv_mul)
        tick("attention weighted sum")
        quant(xq, xs, s.xb)
        mm(s.xb2, s.xb, w.wo[l], (xq, xs))
        tick("output projection")
        accum(x, s.xb2)
        tick("residual")
        rmsnorm(s.xb, x, w.rms_ffn_weight[l])
        tick("rmsnorm")
        quant(xq, xs, s.xb)
        if q8:
            mm(s.hb, s.xb, w.w1[l], (xq, xs))
            mm(s.hb2, s.xb, w.w3[l], (xq, xs))
        else:
            matmul2(s.hb, s.hb2, s.xb, w.w1[l], w.w3[l])
        tick("w1/w3 matmul")
        swiglu(s.hb, s.hb2)
        tick("SwiGLU")
        quant(hq, hs, s.hb)
        mm(s.xb, s.hb, w.w2[l], (hq, hs))
        tick("w2 matmul")
        accum(x, s.xb)
        tick("residual")
    rmsnorm(x, x, w.rms_final_weight)
    tick("rmsnorm")
    quant(xq, xs, x)
    mm(s.logits, x, w.wcls, (xq, xs))
    tick("classifier")


class Transformer:
    """A checkpoint ready to run: config, weights, run state, forward(token, pos)."""

    def __init__(self, checkpoint_path, mmap=True):
        self.path = checkpoint_path
        self.config, self.weights, self.version = read_checkpoint(checkpoint_path, mmap=mmap)
        self.quantized = self.version == 2
        self.state = malloc_run_state(self.config, self.weights.group_size if self.quantized else 0)
        self._forward = forward_q8 if self.quantized else forward
        self.bytes_per_token = weight_bytes_per_token(self.config, self.weights)

    def forward(self, token, pos):
        """Logits (a view of the run state, overwritten by the next call)."""
        self._forward(self.config, self.weights, self.state, token, pos)
        return self.state.logits

    def forward_profiled(self, token, pos, tick):
        forward_profiled(self.config, self.weights, self.state, token, pos, tick)
        return self.state.logits
