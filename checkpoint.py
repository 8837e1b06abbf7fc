"""llama2.c checkpoint files: header, tensor layout of format versions 0, 1 and 2, reading and writing.

NumPy only (no numba), so export.py and the benchmarks can use it without
compiling anything. Every number in a file is little-endian; every float is
IEEE float32.

Version 0 (run.c's format; the stories15M/42M/110M files): a 28-byte header
of seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len), a negative vocab_size meaning the classifier is stored separately
(last) instead of shared with the token embedding. Then the float32 tensors:
token embedding, every layer's rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
rms_final, two unused tables of precomputed RoPE values (seq_len x
head_size / 2 each), and the classifier when not shared.

Version 1: a 256-byte header (uint32 magic 0x616b3432, int32 version 1, the
seven int32 with a positive vocab_size, a uint8 shared-classifier flag, zero
padding), then rms_att, rms_ffn, rms_final, token embedding, wq, wk, wv, wo,
w1, w2, w3 and the classifier when not shared.

Version 2 (int8 "Q8_0", runq.c's format): the version-1 header with version
2 and an int32 group size at byte 37; the three norms in float32; then every
matrix quantized in groups of group_size consecutive values (row-major flat
index): its int8 values followed by one float32 scale per group, a weight
being value * scale. The token embedding comes first, then wq for every
layer (each layer its own values-then-scales block), wk, wv, wo, w1, w2, w3,
and the classifier when not shared.
"""

import os
import stat
import struct
from collections import namedtuple

import numpy as np

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
HEADER_V0 = 28
HEADER_V12 = 256
LAYER_MATS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")

Config = namedtuple("Config", "dim hidden_dim n_layers n_heads n_kv_heads vocab_size seq_len")
Config.head_size = property(lambda p: p.dim // p.n_heads)
Config.kv_dim = property(lambda p: p.dim // p.n_heads * p.n_kv_heads)
Config.kv_mul = property(lambda p: p.n_heads // p.n_kv_heads)

Header = namedtuple("Header", "version config shared group_size header_bytes file_size")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file."""


# ----------------------------------------------------------------------------
# header

def read_header(path):
    """The Header of a checkpoint file, checked for consistency."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise CheckpointError(f"cannot open checkpoint {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"checkpoint {path} is not a regular file (a pipe or device cannot be mapped)")
    size = st.st_size
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_V12)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if len(head) < HEADER_V0:
        raise CheckpointError(f"checkpoint {path} is {size} bytes: too short to hold a header")
    group_size = 0
    if struct.unpack_from("<I", head)[0] == MAGIC:
        if len(head) < HEADER_V12:
            raise CheckpointError(f"checkpoint {path} is {size} bytes: too short for its 256-byte header")
        version = struct.unpack_from("<i", head, 4)[0]
        if version not in (1, 2):
            raise CheckpointError(f"checkpoint {path} has format version {version}; "
                                  "this program reads versions 0, 1 and 2")
        fields = list(struct.unpack_from("<7i", head, 8))
        shared = head[36] != 0
        if version == 2:
            group_size = struct.unpack_from("<i", head, 37)[0]
        header_bytes = HEADER_V12
    else:
        version = 0
        fields = list(struct.unpack_from("<7i", head, 0))
        shared = fields[5] > 0  # a negative vocab_size flags a separate classifier
        fields[5] = abs(fields[5])
        header_bytes = HEADER_V0
    p = Config(*fields)
    check_config(path, p, version, group_size)
    return Header(version, p, shared, group_size, header_bytes, size)


def check_config(path, p, version, group_size=0):
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


def header_bytes(version, p, shared, group_size=0):
    """The header of a version 0, 1 or 2 file."""
    ints = [p.dim, p.hidden_dim, p.n_layers, p.n_heads, p.n_kv_heads, p.vocab_size, p.seq_len]
    if version == 0:
        if not shared:
            ints[5] = -ints[5]
        return struct.pack("<7i", *ints)
    h = struct.pack("<Ii7iB", MAGIC, version, *ints, int(shared))
    if version == 2:
        h += struct.pack("<i", group_size)
    return h + b"\0" * (HEADER_V12 - len(h))


# ----------------------------------------------------------------------------
# layout

def fp32_layout(version, p, shared):
    """(name, shape) of every float32 array of a version 0 or 1 file, in file order."""
    L, dim, hid, kv, vocab = p.n_layers, p.dim, p.hidden_dim, p.kv_dim, p.vocab_size
    mats = [("wq", (L, dim, dim)), ("wk", (L, kv, dim)), ("wv", (L, kv, dim)), ("wo", (L, dim, dim))]
    ffn = [("w1", (L, hid, dim)), ("w2", (L, dim, hid)), ("w3", (L, hid, dim))]
    if version == 0:
        rope = p.seq_len * p.head_size // 2  # old precomputed RoPE tables, never read
        out = ([("token_embedding_table", (vocab, dim)), ("rms_att_weight", (L, dim))] + mats
               + [("rms_ffn_weight", (L, dim))] + ffn
               + [("rms_final_weight", (dim,)), ("freq_cis_real", (rope,)), ("freq_cis_imag", (rope,))])
    else:
        out = ([("rms_att_weight", (L, dim)), ("rms_ffn_weight", (L, dim)), ("rms_final_weight", (dim,)),
                ("token_embedding_table", (vocab, dim))] + mats + ffn)
    if not shared:
        out.append(("wcls", (vocab, dim)))
    return out


def q8_layout(p, shared):
    """(name, layer or None, rows, cols) of every quantized matrix of a version 2 file, in file order."""
    L, dim, hid, kv, vocab = p.n_layers, p.dim, p.hidden_dim, p.kv_dim, p.vocab_size
    shapes = {"wq": (dim, dim), "wk": (kv, dim), "wv": (kv, dim), "wo": (dim, dim),
              "w1": (hid, dim), "w2": (dim, hid), "w3": (hid, dim)}
    out = [("token_embedding_table", None, vocab, dim)]
    out += [(name, l, *shapes[name]) for name in LAYER_MATS for l in range(L)]
    if not shared:
        out.append(("wcls", None, vocab, dim))
    return out


def expected_size(h):
    """Bytes a file with header h must have."""
    p = h.config
    if h.version < 2:
        n = sum(int(np.prod(shape, dtype=np.int64)) for _, shape in fp32_layout(h.version, p, h.shared))
        return h.header_bytes + 4 * n
    gs = h.group_size
    norms = 4 * (2 * p.n_layers * p.dim + p.dim)
    return h.header_bytes + norms + sum(r * c + r * c // gs * 4 for _, _, r, c in q8_layout(p, h.shared))


def check(path):
    """The Header of a checkpoint whose size is the one its header describes (nothing is mapped)."""
    h = read_header(path)
    expected = expected_size(h)
    if h.file_size != expected:
        what = "truncated" if h.file_size < expected else "longer than its header describes"
        desc = f"format version {h.version}" + (f", group size {h.group_size}" if h.version == 2 else "")
        raise CheckpointError(f"checkpoint {path} is {h.file_size} bytes but its header ({desc}, {h.config}) "
                              f"needs {expected}: the file is {what}")
    return h


# ----------------------------------------------------------------------------
# reading: zero-copy views of one flat array

def read(path, mmap=True):
    """(Header, dict of tensors) of a checkpoint.

    Versions 0 and 1: name -> float32 array, stacked over layers. Version 2:
    the norms as float32 arrays; every other name -> (int8 values (rows, cols),
    float32 scales (rows, cols // group_size)), per-layer matrices as a tuple
    over layers. A shared classifier is the token embedding's own array(s).

    mmap=True maps the file read-only (files larger than RAM open, processes
    share the pages); mmap=False reads it into memory, also read-only.
    """
    h = check(path)
    raw = _file_bytes(path, mmap, h)
    off = h.header_bytes

    def take(n, dtype, shape):
        nonlocal off
        nbytes = n * np.dtype(dtype).itemsize
        a = raw[off:off + nbytes].view(dtype).reshape(shape)
        off += nbytes
        return a

    p = h.config
    t = {}
    if h.version < 2:
        for name, shape in fp32_layout(h.version, p, h.shared):
            t[name] = take(int(np.prod(shape)), "<f4", shape)
    else:
        L, dim, gs = p.n_layers, p.dim, h.group_size
        t["rms_att_weight"] = take(L * dim, "<f4", (L, dim))
        t["rms_ffn_weight"] = take(L * dim, "<f4", (L, dim))
        t["rms_final_weight"] = take(dim, "<f4", (dim,))
        layers = {name: [] for name in LAYER_MATS}
        for name, layer, rows, cols in q8_layout(p, h.shared):
            pair = (take(rows * cols, np.int8, (rows, cols)), take(rows * cols // gs, "<f4", (rows, cols // gs)))
            if layer is None:
                t[name] = pair
            else:
                layers[name].append(pair)
        t.update({name: tuple(pairs) for name, pairs in layers.items()})
    if h.shared:
        t["wcls"] = t["token_embedding_table"]
    return h, t


def line_aligned(raw, n, first=0):
    """n bytes of raw (at least n + 64 long), placed so that byte `first` of them starts a 64-byte cache line."""
    start = -(raw.ctypes.data + first) % 64
    return raw[start:start + n]


def _file_bytes(path, mmap, h):
    """The whole file as one read-only uint8 array: mapped, or read into memory with its tensors on cache lines.

    A mapping starts on a page, so a version 0 file's tensors (after its
    28-byte header) start 28 bytes into a line; read into memory, they are
    placed on line starts, where the prompt tile's weight loads do not
    straddle two lines (1.12-1.22x in that tile, Intel Xeon; benchmarks/RESULTS.md).
    """
    if mmap:
        m = np.memmap(path, dtype=np.uint8, mode="r")
        _advise_huge_pages(m)
        return np.asarray(m)
    a = line_aligned(np.empty(h.file_size + 64, np.uint8), h.file_size, h.header_bytes)  # numpy asks for huge pages
    with open(path, "rb") as f:
        if f.readinto(a) != h.file_size:  # a buffered read of a regular file fills a or stops at its end
            raise CheckpointError(f"checkpoint {path}: the file shrank while it was read")
    a.flags.writeable = False  # the same array type as a mapping: one set of compiled kernels serves both
    return a


def _advise_huge_pages(m):
    """Ask Linux to fill the page cache for this mapping with 2 MB folios.

    Pages not yet cached are then read in 2 MB pieces and mapped with one TLB
    entry each (under a hypervisor a 4 KB TLB miss costs a two-level page
    walk): llama2.c's runomp streamed the 110M shape 26% faster from 2 MB
    folios than from 4 KB ones (benchmarks/RESULTS.md). Pages already cached
    keep their size. Only a hint: any failure is ignored.
    """
    import mmap as mmap_module
    advice = getattr(mmap_module, "MADV_HUGEPAGE", None)
    mapping = getattr(m, "_mmap", None)  # numpy's private handle; absent in some versions
    if advice is not None and mapping is not None and len(m):
        try:
            mapping.madvise(advice)
        except OSError:
            pass


# ----------------------------------------------------------------------------
# writing

def quantize_q80(a, group_size):
    """(int8 values, float32 scales, max abs error) of a tensor in groups over its flat index.

    As llama2.c's exporter: scale = max|w| / 127, values w / scale rounded to
    nearest even (torch.round); an all-zero group gets scale 0 and values 0.
    """
    w = np.asarray(a, np.float32).reshape(-1, group_size)
    scale = (np.abs(w).max(axis=1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1.0), scale)
    q = np.rint(w / safe[:, None]).astype(np.int8)
    err = float(np.abs(q.astype(np.float32) * scale[:, None] - w).max()) if w.size else 0.0
    return q.reshape(-1), scale, err


def write(f, version, p, tensors, shared, group_size=0, step=lambda name, nbytes, note="": None):
    """Write a whole checkpoint to the open binary file f.

    tensors: name -> float32 array with the shapes of fp32_layout (version 0's
    RoPE tables may be left out: they are written as zeros). Version 2
    quantizes every matrix in groups of group_size. step(name, nbytes, note)
    is called after each tensor. Returns (largest quantization error, its tensor).
    """
    f.write(header_bytes(version, p, shared, group_size))
    worst = (0.0, "")

    def put(name, a, note=""):
        a = np.ascontiguousarray(a, dtype="<f4")
        f.write(memoryview(a).cast("B"))
        step(name, a.nbytes, note)

    if version < 2:
        for name, shape in fp32_layout(version, p, shared):
            put(name, tensors[name] if name in tensors else np.zeros(shape, np.float32))
        return worst
    for name in ("rms_att_weight", "rms_ffn_weight", "rms_final_weight"):
        put(name, tensors[name])
    for name, layer, _, _ in q8_layout(p, shared):
        a = tensors[name] if layer is None else tensors[name][layer]
        q, s, err = quantize_q80(a, group_size)
        f.write(memoryview(q).cast("B"))
        f.write(memoryview(s.astype("<f4")).cast("B"))
        label = name if layer is None else f"{name}[{layer}]"
        worst = max(worst, (err, label))
        step(label, q.nbytes + s.nbytes, f"max error {err:.6f}")
    return worst


# ----------------------------------------------------------------------------
# writing a file safely: never over a user's file unasked, never half a file

class OutputError(Exception):
    """An output that cannot or may not be written; the message names the file."""


class AtomicWrite:
    """A binary file written under a unique temporary name in its directory, renamed into place at the end.

    Refuses (OutputError) an existing output without force, a directory, and
    an output that is one of the inputs (force or not). If the block fails,
    is interrupted (Ctrl-C, SIGTERM) or the disk fills, the temporary file is
    removed and the output is left as it was. A kill -9 can leave a
    `.NAME.*.tmp` behind; its unique name never gets in a later run's way.
    """

    def __init__(self, path, force=False, inputs=()):
        self.path = path
        if os.path.isdir(path):
            raise OutputError(f"{path} is a directory; give the output file's name")
        for src in inputs:
            if os.path.exists(path) and os.path.exists(src) and os.path.samefile(path, src):
                raise OutputError(f"{path} is the input {src}: writing it would destroy what is being read")
        if os.path.exists(path) and not force:
            raise OutputError(f"{path} exists; pass --force to overwrite it")

    def __enter__(self):
        import signal
        import tempfile
        directory, name = os.path.split(os.path.abspath(self.path))
        try:
            fd, self.tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would survive the rename
        self.f = os.fdopen(fd, "wb")
        self._term = signal.getsignal(signal.SIGTERM)

        def terminated(signum, frame):
            raise SystemExit(128 + signum)
        try:
            signal.signal(signal.SIGTERM, terminated)
        except ValueError:  # not the main thread: no handler, the temporary file may stay on SIGTERM
            self._term = None
        return self.f

    def __exit__(self, kind, value, tb):
        import signal
        try:
            if kind is None:
                self.f.close()
                os.replace(self.tmp, self.path)
        except OSError as e:
            kind, value = OSError, e
        finally:
            if self._term is not None:
                signal.signal(signal.SIGTERM, self._term)
            if kind is not None:
                try:
                    self.f.close()
                except OSError:
                    pass
                if os.path.exists(self.tmp):
                    os.remove(self.tmp)
        if isinstance(value, OSError):
            raise OutputError(f"cannot write {self.path}: {value.strerror or value}") from None
        return False
