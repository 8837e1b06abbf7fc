"""Llama 2 transformer inference in Numba: llama2.c's run.c, kernel for kernel.

Read alongside run.c: the same structs (Config, TransformerWeights, RunState),
the same kernels in the same order, one `forward` with the layer loop inline.

The compile mode is fixed once per process, before numba is imported, from two
environment variables that run.py sets from its flags:
  LLAMA2_FASTMATH  off | unsafe | on   (gcc -O3 | -funsafe-math-optimizations | -Ofast)
  LLAMA2_THREADS   1 = serial kernels (plain gcc), N > 1 = prange kernels (OpenMP)
Each mode gets its own on-disk JIT cache, because numba's cache does not key
on the fast-math flags (see NUMBA-NOTES.md).
"""

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
    """One JIT cache per (fast-math set, serial/parallel, target CPU)."""
    base = os.environ.get("LLAMA2_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llama2-numba")
    cpu = os.environ.get("NUMBA_CPU_NAME") or "host"
    return os.path.join(base, f"{fastmath}-{'parallel' if parallel else 'serial'}-{cpu}")


FASTMATH, THREADS = compile_mode()
PARALLEL = THREADS > 1
CACHE_DIR = cache_dir(FASTMATH, PARALLEL)

if "numba" not in sys.modules:
    os.environ["NUMBA_CACHE_DIR"] = CACHE_DIR
    if PARALLEL:
        os.environ["NUMBA_NUM_THREADS"] = str(THREADS)

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

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
])


def malloc_run_state(p):
    """Every activation buffer, allocated once; forward() allocates nothing."""
    f32 = np.float32
    return RunState(
        x=np.zeros(p.dim, f32), xb=np.zeros(p.dim, f32), xb2=np.zeros(p.dim, f32),
        hb=np.zeros(p.hidden_dim, f32), hb2=np.zeros(p.hidden_dim, f32),
        q=np.zeros(p.dim, f32), att=np.zeros((p.n_heads, p.seq_len), f32),
        logits=np.zeros(p.vocab_size, f32),
        key_cache=np.zeros((p.n_layers, p.seq_len, p.kv_dim), f32),
        value_cache=np.zeros((p.n_layers, p.seq_len, p.kv_dim), f32))


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
    """Config, TransformerWeights (views into one flat array) and the version.

    mmap=True maps the file read-only (opens files larger than RAM, shares pages
    between processes); mmap=False reads it into memory with np.fromfile.
    """
    version, p, shared, group_size, header_bytes, size = read_header(path)
    if version == 2:
        raise CheckpointError(f"checkpoint {path} is format version 2 (int8, group size {group_size}); "
                              "int8 inference is not supported yet: use an fp32 (version 0 or 1) export")
    layout = _layout(version, p, shared)
    n_floats = sum(int(np.prod(shape)) for _, shape in layout)
    expected = header_bytes + 4 * n_floats
    if size != expected:
        what = "truncated" if size < expected else "longer than its header describes"
        raise CheckpointError(f"checkpoint {path} is {size} bytes but its header (format version "
                              f"{version}, {p}) needs {expected}: the file is {what}")
    if mmap:
        flat = np.asarray(np.memmap(path, dtype="<f4", mode="r", offset=header_bytes, shape=(n_floats,)))
    else:
        flat = np.fromfile(path, dtype="<f4", count=n_floats, offset=header_bytes)
    tensors, off = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape))
        tensors[name] = flat[off:off + n].reshape(shape)
        off += n
    if shared:
        tensors["wcls"] = tensors["token_embedding_table"]
    w = TransformerWeights(**{k: tensors[k] for k in TransformerWeights._fields})
    return p, w, version


def weight_bytes_per_token(p, w):
    """Bytes of weights one forward pass reads: every matrix once, one embedding row."""
    total = sum(a.nbytes for name, a in w._asdict().items() if name != "token_embedding_table")
    return total + p.dim * 4


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


@kernel
def softmax(x):
    """x = exp(x - max x) / sum exp(x - max x), in place, the sum sequential."""
    max_val = x[0]
    for i in range(1, x.shape[0]):
        if x[i] > max_val:
            max_val = x[i]
    total = np.float32(0.0)
    for i in range(x.shape[0]):
        x[i] = np.exp(x[i] - max_val)
        total += x[i]
    for i in range(x.shape[0]):
        x[i] /= total


@pkernel
def matmul(xout, x, w):
    """xout[i] = sum_j w[i, j] * x[j]; W (d, n) @ x (n,) -> xout (d,), rows in parallel."""
    d, n = w.shape
    for i in prange(d):
        val = np.float32(0.0)
        for j in range(n):
            val += w[i, j] * x[j]
        xout[i] = val


@kernel
def rope(q, k, pos, head_size):
    """Rotate each pair (i, i+1) of q, and of k while i < kv_dim, by pos * freq(i)."""
    for i in range(0, q.shape[0], 2):
        head_dim = i % head_size
        freq = np.float32(1.0) / np.float32(10000.0) ** (np.float32(head_dim) / np.float32(head_size))
        val = np.float32(pos) * freq
        fcr = np.cos(val)
        fci = np.sin(val)
        q0 = q[i]
        q1 = q[i + 1]
        q[i] = q0 * fcr - q1 * fci
        q[i + 1] = q0 * fci + q1 * fcr
        if i < k.shape[0]:
            k0 = k[i]
            k1 = k[i + 1]
            k[i] = k0 * fcr - k1 * fci
            k[i + 1] = k0 * fci + k1 * fcr


@pkernel
def attention(xb, att, q, key_cache, value_cache, pos, n_heads, head_size, kv_mul):
    """Per head h: att = softmax(q_h . k_t / sqrt(head_size)), xb_h = sum_t att[t] v_t."""
    scale = np.sqrt(np.float32(head_size))
    for h in prange(n_heads):
        qo = h * head_size
        ko = (h // kv_mul) * head_size
        a = att[h]
        for t in range(pos + 1):
            score = np.float32(0.0)
            for i in range(head_size):
                score += q[qo + i] * key_cache[t, ko + i]
            a[t] = score / scale
        softmax(a[:pos + 1])
        for i in range(head_size):
            xb[qo + i] = np.float32(0.0)
        for t in range(pos + 1):
            w = a[t]
            for i in range(head_size):
                xb[qo + i] += w * value_cache[t, ko + i]


@kernel
def swiglu(hb, hb2):
    """hb = silu(hb) * hb2, silu(x) = x * (1 / (1 + exp(-x)))."""
    one = np.float32(1.0)
    for i in range(hb.shape[0]):
        v = hb[i]
        hb[i] = v * (one / (one + np.exp(-v))) * hb2[i]


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
    dim = p.dim
    head_size = dim // p.n_heads
    kv_mul = p.n_heads // p.n_kv_heads
    x = s.x
    x[:] = w.token_embedding_table[token]

    for l in range(p.n_layers):
        # attention rmsnorm
        rmsnorm(s.xb, x, w.rms_att_weight[l])

        # q, k, v for this position; k and v go straight into the cache row
        k = s.key_cache[l, pos]
        v = s.value_cache[l, pos]
        matmul(s.q, s.xb, w.wq[l])
        matmul(k, s.xb, w.wk[l])
        matmul(v, s.xb, w.wv[l])

        # RoPE relative positional encoding
        rope(s.q, k, pos, head_size)

        # multi-head attention over positions 0..pos
        attention(s.xb, s.att, s.q, s.key_cache[l], s.value_cache[l], pos,
                  p.n_heads, head_size, kv_mul)

        # output projection and residual
        matmul(s.xb2, s.xb, w.wo[l])
        accum(x, s.xb2)

        # ffn: w2(silu(w1(x)) * w3(x)) and residual
        rmsnorm(s.xb, x, w.rms_ffn_weight[l])
        matmul(s.hb, s.xb, w.w1[l])
        matmul(s.hb2, s.xb, w.w3[l])
        swiglu(s.hb, s.hb2)
        matmul(s.xb, s.hb, w.w2[l])
        accum(x, s.xb)

    # final rmsnorm and classifier
    rmsnorm(x, x, w.rms_final_weight)
    matmul(s.logits, x, w.wcls)


class Transformer:
    """A checkpoint ready to run: config, weights, run state, forward(token, pos)."""

    def __init__(self, checkpoint_path, mmap=True):
        self.path = checkpoint_path
        self.config, self.weights, self.version = read_checkpoint(checkpoint_path, mmap=mmap)
        self.state = malloc_run_state(self.config)

    def forward(self, token, pos):
        """Logits (a view of the run state, overwritten by the next call)."""
        forward(self.config, self.weights, self.state, token, pos)
        return self.state.logits
