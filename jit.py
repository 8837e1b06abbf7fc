"""Compile mode, target CPU and on-disk cache of the jitted kernels, and the 16-lane vectors they are written with.

Imported before numba by model.py and run.py: numba reads its cache directory
and thread count when it is first imported, so both are settled here from
the environment, which run.py fills from its flags:

  LLAMA2_FASTMATH   off | unsafe | on
  LLAMA2_THREADS    1 = serial kernels (a plain gcc build); N > 1 = N threads (OpenMP)
  LLAMA2_CACHE_DIR  where compiled code is kept (default ~/.cache/llama2-numba)

What the three modes compute (gcc's flags, for llama2.c's run.c):

  off     -O3: every sum in C's order, one element after another; a product
          and the sum it feeds are rounded separately; the C library's expf.
  unsafe  -O3 -funsafe-math-optimizations: dot products and sums are
          reassociated into 16 interleaved lanes added up in a fixed tree,
          and a product and its sum are fused (FMA) where the CPU has FMA.
  on      -Ofast: as unsafe, and exp is a vectorizable polynomial (gcc gets
          vector exp from glibc's libmvec under -ffast-math).

The kernels spell those orders out themselves, with the vector type below;
no LLVM fast-math flag is set in any mode. With `reassoc` LLVM chooses the
order of a sum anew in every compiled copy of a function: numba compiles a
kernel alone and again inside each jitted caller, caches the caller with
its own copies, and a process then runs whichever copy it loaded first. On
an AVX2 machine those copies rounded differently, so the first fast-math
run of a command printed other text than the runs that loaded it from the
cache. Without the flags every copy keeps the order written in the source.
The order depends only on whether the target has FMA, so any two CPUs with
FMA print the same text.
"""

import hashlib
import os
import sys
import tempfile

import llvmlite.binding as llvm  # binding only: importing it does not start numba

MODES = ("off", "unsafe", "on")
_ALIASES = {"0": "off", "false": "off", "no": "off", "1": "on", "true": "on", "yes": "on"}
LANES = 16  # floats per vector; LLVM splits a 16-float vector into what the target has (1 zmm, 2 ymm, 4 xmm)


def compile_mode():
    """(fast-math mode, thread count) requested through the environment."""
    fm = os.environ.get("LLAMA2_FASTMATH", "on").strip().lower()
    fm = _ALIASES.get(fm, fm)
    if fm not in MODES:
        raise ValueError(f"LLAMA2_FASTMATH={fm!r}: expected off, unsafe or on")
    threads = int(os.environ.get("LLAMA2_THREADS") or 0) or (os.cpu_count() or 1)
    return fm, threads


# ----------------------------------------------------------------------------
# the CPU numba compiles for: the host, or NUMBA_CPU_NAME / NUMBA_CPU_FEATURES

# LLVM's haswell: AVX2 and FMA, no AVX-512. NUMBA_CPU_NAME=haswell alone keeps
# the host's features (AVX-512 included on an AVX-512 host): numba takes the
# feature list from the host unless NUMBA_CPU_FEATURES says otherwise.
HASWELL_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fsgsbase,+fxsr,+invpcid,"
                    "+lzcnt,+mmx,+movbe,+pclmul,+popcnt,+rdrnd,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,"
                    "+ssse3,+xsave,+xsaveopt")

# the instruction-set tiers the benchmarks and tests compile for, as environments
TIERS = {
    "generic": {"NUMBA_CPU_NAME": "generic"},  # baseline x86-64: SSE2, no FMA (gcc without -march)
    "haswell": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": HASWELL_FEATURES},  # -march=haswell
    "host": {},  # -march=native
}


def target():
    """(cpu name, set of enabled features) that numba compiles for, by numba's own rule.

    An empty feature string with a named CPU (other than generic) leaves the
    features to LLVM's model of that CPU, which this module cannot read: the
    kernels then assume the baseline, which is correct on any x86-64.
    """
    name = os.environ.get("NUMBA_CPU_NAME") or None
    features = os.environ.get("NUMBA_CPU_FEATURES")
    if features is None and (name or "").lower() == "generic":
        features = ""
    if name is None:
        name = llvm.get_host_cpu_name()
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    return name, {f[1:] for f in features.split(",") if f.startswith("+")}


CPU, FEATURES = target()
HAS_FMA = "fma" in FEATURES
AVX512 = "avx512f" in FEATURES
AVX2 = "avx2" in FEATURES
# register tile of the prefill matmul: rows x tokens of 16-float accumulators,
# as many as the vector registers hold next to the operands (32 zmm: 12;
# 16 ymm: 6, each 2 registers; 16 xmm: 2, each 4 registers)
TILE = (3, 4) if AVX512 else (3, 2) if AVX2 else (1, 2)
# vectors side by side against one operand: a batch of fewer tokens than model.PROMPT_TILES_FROM reads
# one weight row at a time against ROW_TILE tokens (AVX2 and baseline: with AVX-512 the prompt tiles
# start below 8), and attention sums ROW_TILE blocks of positions together
ROW_TILE = 8 if AVX512 else 4 if AVX2 else 2
# fast one-token matmuls read two weight rows side by side (model.dot2), where the target has 16 ymm or 32
# zmm registers for their four accumulator chains (Intel Xeon, 110M, mapped weights, one thread: AVX-512
# 1.26x one row at a time, AVX2 1.28x; baseline x86-64 0.96x, its 16 xmm registers too few), unless the
# machine running the code is an AMD core: on a Zen 4 two neighbouring rows stream at half the speed of one
# (one thread, weights from DRAM, 11-16 GB/s against 22-31 at every offset in a line; 110M --threads 1
# 0.54x), for the AVX-512 and the haswell build alike. That is its memory system's doing, not the
# instruction set's, so the host decides (the sums, and so the text, are the same either way).
ROW_PAIRS = (AVX2 or AVX512) and not llvm.get_host_cpu_name().lower().startswith(("znver", "bdver"))
# strict one-token matmuls carry this many rows' sums side by side, one per lane (an R x R transpose in
# registers: 16 x 16 fits AVX-512's 32 registers, 8 x 8 the 16 of AVX2 and SSE)
STRICT_ROWS = 16 if AVX512 else 8


def _amx_granted():
    """Whether this process may use AMX tiles: Linux hands out the 8 KB of tile state only on request
    (arch_prctl ARCH_REQ_XCOMP_PERM); an AMX instruction without it kills the process."""
    if not sys.platform.startswith("linux") or not llvm.get_process_triple().startswith("x86_64"):
        return False
    import ctypes
    try:
        return ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, XTILEDATA
    except (OSError, AttributeError):
        return False


def _int8_path():
    """How int8 group dots are computed: amx (tdpbssd for tiles of 16 weight rows x 8 tokens, vnni for the
    rest), vnni (vpdpbusd), avx2 (vpmaddubsw + vpmaddwd), sse2 (pmaddwd on bytes widened to 16 bits, what
    every x86-64 has) or portable (a plain loop).

    LLAMA2_INT8_DOT forces one (tests check each against the exact integer
    reference); asking for one the target lacks is an error.
    """
    have = ["portable"]
    if llvm.get_process_triple().startswith(("x86_64", "amd64")):
        have.append("sse2")
    if "avx2" in FEATURES:
        have.append("avx2")
    if ("avx512vnni" in FEATURES and "avx512vl" in FEATURES) or "avxvnni" in FEATURES:
        have.append("vnni")
        if {"amx-tile", "amx-int8"} <= FEATURES and _amx_granted():
            have.append("amx")
    want = os.environ.get("LLAMA2_INT8_DOT", "").strip().lower()
    if want and want not in have:
        raise ValueError(f"LLAMA2_INT8_DOT={want}: this target ({CPU}) has {', '.join(have)}")
    return want or have[-1]


INT8_PATH = _int8_path()
INT8_AMX = INT8_PATH == "amx"  # the 8-token tiles through AMX; everything else as vnni
INT8_DOT = "vnni" if INT8_AMX else INT8_PATH
INT8_CHUNK = 32  # bytes per step of the vnni and avx2 paths: groups of a multiple of 32 use them


def tier_name():
    """The instruction-set tier the kernels are compiled for: avx512, avx2 or baseline."""
    return "avx512" if AVX512 else "avx2" if AVX2 else "baseline"


# ----------------------------------------------------------------------------
# the on-disk cache: one directory per mode, target and source version

def _sources_digest():
    """Hash of every file with kernels: numba checks only a kernel's own file's timestamp."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha1()
    for name in ("jit.py", "model.py", "run.py"):
        try:
            with open(os.path.join(here, name), "rb") as f:
                digest.update(f.read())
        except OSError:
            pass
    return digest.hexdigest()[:12]


def _usable(path):
    """Create path if needed and check that a file can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe")
        os.close(fd)
        os.remove(probe)
        return True
    except OSError:
        return False


def cache_dir(fastmath, parallel):
    """(directory for this mode's compiled code or None, warning or None).

    The directory is keyed on the fast-math mode, serial or parallel, the
    target CPU and its features, the int8 path and the row order (both
    chosen partly by the host), and the kernel sources. If the requested
    place cannot be written (read-only, a file, no HOME), a private directory
    under the system's temporary directory is used instead, and failing that
    nothing is cached: numba's own fallback, __pycache__ beside the sources,
    would share one cache between the modes.
    """
    feats = hashlib.sha1(",".join(sorted(FEATURES)).encode()).hexdigest()[:8]
    rows = "pairs" if ROW_PAIRS else "rows"
    sub = os.path.join(f"{fastmath}-{'parallel' if parallel else 'serial'}-{CPU}-{feats}-{INT8_PATH}-{rows}",
                       _sources_digest())
    requested = os.environ.get("LLAMA2_CACHE_DIR")
    if not requested:
        home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        requested = os.path.join(home, "llama2-numba")
    fallback = os.path.join(tempfile.gettempdir(), f"llama2-numba-{os.getuid() if hasattr(os, 'getuid') else 0}")
    for i, base in enumerate((requested, fallback)):
        path = os.path.join(base, sub)
        if _usable(path):
            warning = None if i == 0 else f"JIT cache {requested} is not writable; using {base}"
            return path, warning
    return None, f"no writable JIT cache ({requested}, {fallback}): kernels are compiled at every start"


FASTMATH, THREADS = compile_mode()
STRICT = FASTMATH == "off"  # C's order everywhere (a bool: numba prunes `if STRICT:` at compile time)
EXP_POLY = FASTMATH == "on"  # exp as a vectorizable polynomial instead of expf
PARALLEL = THREADS > 1
CACHE_DIR, CACHE_WARNING = cache_dir(FASTMATH, PARALLEL)

if "numba" not in sys.modules:
    if CACHE_DIR:
        os.environ["NUMBA_CACHE_DIR"] = CACHE_DIR
    if PARALLEL:
        os.environ["NUMBA_NUM_THREADS"] = str(THREADS)

import numba  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic, models, register_model  # noqa: E402

if CACHE_DIR and os.path.abspath(numba.config.CACHE_DIR or "") != os.path.abspath(CACHE_DIR):
    # numba was imported earlier with another cache: entries written in another
    # mode could be loaded for this one, silently changing results
    raise ImportError("jit.py must be imported before numba (or with NUMBA_CACHE_DIR="
                      f"{CACHE_DIR}) so each mode keeps its own JIT cache")
if PARALLEL:
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))

# error_model="numpy": float division follows IEEE (x / 0 is inf), as in C,
# with no zero-divisor test in the loops
_options = dict(cache=CACHE_DIR is not None, nogil=True, error_model="numpy")
kernel = njit(**_options)  # serial kernels and glue
pkernel = njit(parallel=PARALLEL, **_options)  # kernels with a prange loop
inline = njit(inline="always", **_options)  # small helpers, inlined into their callers by numba


# ----------------------------------------------------------------------------
# f32x16: 16 float32 lanes in one LLVM vector, and the operations kernels use

class F32x16(types.Type):
    def __init__(self):
        super().__init__(name="f32x16")


f32x16 = F32x16()
_VEC = ir.VectorType(ir.FloatType(), LANES)
_I32 = ir.IntType(32)


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _llvm_fma(builder, a, b, c):
    """a * b + c rounded once (llvm.fma), or rounded twice where the target has no FMA unit."""
    if not HAS_FMA:
        return builder.fadd(builder.fmul(a, b), c)
    name = f"llvm.fma.v{a.type.count}f32" if isinstance(a.type, ir.VectorType) else "llvm.fma.f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(a.type, [a.type] * 3), name)
    return builder.call(fn, [a, b, c])


def _element_ptr(context, builder, arytype, ary, index):
    data = context.make_array(arytype)(context, builder, ary).data
    return builder.gep(data, [index])


def _load_vec(context, builder, arytype, ary, index, vectype, align=4):
    """The vectype-wide vector starting at ary[index] (a contiguous 1-D array)."""
    ptr = _element_ptr(context, builder, arytype, ary, index)
    return builder.load(builder.bitcast(ptr, vectype.as_pointer()), align=align)


def _halving_sum(builder, x, add):
    """Lane 0 of x after adding its upper half to its lower half until one lane is left (vsum's tree; any
    other pairwise op in place of add)."""
    width = x.type.count
    while width > 1:
        half = width // 2
        lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, half), list(range(half))))
        hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, half), list(range(half, width))))
        x, width = add(lo, hi), half
    return builder.extract_element(x, ir.Constant(_I32, 0))


def _splat(builder, value, lanes):
    """A vector of `lanes` copies of the scalar value."""
    undef = ir.Constant(ir.VectorType(value.type, lanes), ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


@intrinsic
def vzero(typingctx):
    """(0, ..., 0)."""
    return f32x16(), lambda context, builder, sig, args: ir.Constant(_VEC, [0.0] * LANES)


@intrinsic
def vsplat(typingctx, value):
    """(value, ..., value) of a float32."""
    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], LANES)
    return f32x16(types.float32), codegen


@intrinsic
def vdiv(typingctx, v, value):
    """v / value, lane by lane (each lane rounded as one scalar division)."""
    def codegen(context, builder, sig, args):
        return builder.fdiv(args[0], _splat(builder, args[1], LANES))
    return f32x16(f32x16, types.float32), codegen


def _contiguous_f32(a):
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 1 and a.layout == "C"


@intrinsic
def vload(typingctx, a, j):
    """a[j:j+16] of a contiguous 1-D float32 array (the caller keeps j + 16 <= len(a))."""
    if not _contiguous_f32(a):
        return None

    def codegen(context, builder, sig, args):
        return _load_vec(context, builder, sig.args[0], args[0], args[1], _VEC)
    return f32x16(a, types.intp), codegen


@intrinsic
def vstore(typingctx, a, j, v):
    """a[j:j+16] = v."""
    if not _contiguous_f32(a):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VEC.as_pointer()), align=4)
    return types.void(a, types.intp, f32x16), codegen


@intrinsic
def vfma(typingctx, acc, a, b):
    """acc + a * b lane by lane, fused where the target has FMA (the fast modes' product-sum)."""
    def codegen(context, builder, sig, args):
        return _llvm_fma(builder, args[1], args[2], args[0])
    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def vmuladd(typingctx, acc, a, b):
    """acc + a * b lane by lane, the product rounded before the sum (C's `acc += a * b`)."""
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], builder.fmul(args[1], args[2]))
    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def vadd(typingctx, a, b):
    """a + b lane by lane."""
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return f32x16(f32x16, f32x16), codegen


def _vcall(builder, name, *args):
    """llvm.<name>.v16f32 of 16-float vectors."""
    return _intrinsic_call(builder, f"llvm.{name}.v{LANES}f32", _VEC, list(args))


@intrinsic
def vmax(typingctx, a, b):
    """max(a, b) lane by lane (maxnum: where one lane is NaN, the other; as C's `if (v > m) m = v` after its
    first value)."""
    def codegen(context, builder, sig, args):
        return _vcall(builder, "maxnum", args[0], args[1])
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def vabs(typingctx, v):
    """|v| lane by lane."""
    def codegen(context, builder, sig, args):
        return _vcall(builder, "fabs", args[0])
    return f32x16(f32x16), codegen


@intrinsic
def vmax_total(typingctx, m):
    """The largest lane (exact in any order)."""
    def codegen(context, builder, sig, args):
        return _halving_sum(builder, args[0], lambda lo, hi: _intrinsic_call(
            builder, f"llvm.maxnum.v{lo.type.count}f32", lo.type, [lo, hi]))
    return types.float32(f32x16), codegen


@intrinsic
def vquantize(typingctx, q, x, j, scale):
    """q[j:j+16] = int8(round(x[j:j+16] / scale)), C's round (halves away from zero) of each lane's division.

    round as floor(|v|), plus 1 where |v| - floor(|v|) (exact) is at least 0.5, with v's sign:
    _round_half_away lane by lane.
    """
    if not (_contiguous_f32(x) and _int8_row(q)):
        return None

    def codegen(context, builder, sig, args):
        v = builder.fdiv(_load_vec(context, builder, sig.args[1], args[1], args[2], _VEC),
                         _splat(builder, args[3], LANES))
        a = _vcall(builder, "fabs", v)
        half, one = ir.Constant(_VEC, [0.5] * LANES), ir.Constant(_VEC, [1.0] * LANES)
        r = _vcall(builder, "floor", a)
        r = builder.select(builder.fcmp_ordered(">=", builder.fsub(a, r), half), builder.fadd(r, one), r)
        r = builder.select(builder.fcmp_ordered(">=", v, ir.Constant(_VEC, [0.0] * LANES)), r, builder.fneg(r))
        i8 = builder.trunc(builder.fptosi(r, ir.VectorType(_I32, LANES)), ir.VectorType(ir.IntType(8), LANES))
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[2])
        builder.store(i8, builder.bitcast(ptr, i8.type.as_pointer()), align=1)
    return types.void(q, x, types.intp, types.float32), codegen


def _contiguous_f32_2d(a):
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 2 and a.layout == "C"


@intrinsic
def rows_strict(typingctx, xout, w, i, x):
    """xout[i:i+R] = the sums of w[i + r, c] * x[c] over the columns c < len(x) // R * R; returns that count.

    R = STRICT_ROWS. Lane r carries row i + r's sum in column order, each
    product rounded and then added (C's `val += w * x`), so R rows advance
    together without changing any row's order. Each R x R block of weights is
    loaded row by row and transposed in registers (log2 R butterfly stages of
    two-vector shuffles); the caller adds the last len(x) % R columns.
    """
    if not (isinstance(xout, types.Array) and xout.ndim == 1 and xout.layout == "C"
            and _contiguous_f32_2d(w) and _contiguous_f32(x)):
        return None
    width = STRICT_ROWS
    vec = ir.VectorType(ir.FloatType(), width)

    def codegen(context, builder, sig, args):
        out_a, w_a, i, x_a = args
        warr = context.make_array(sig.args[1])(context, builder, w_a)
        ncols = builder.extract_value(warr.shape, 1)
        blocks = builder.sdiv(ncols, ir.Constant(ncols.type, width))
        xdata = context.make_array(sig.args[3])(context, builder, x_a).data
        accp = cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * width))
        with cgutils.for_range(builder, blocks) as loop:
            j = builder.mul(loop.index, ir.Constant(ncols.type, width))
            rows = []
            for r in range(width):
                offset = builder.add(builder.mul(builder.add(i, ir.Constant(i.type, r)), ncols), j)
                rows.append(builder.load(builder.bitcast(builder.gep(warr.data, [offset]), vec.as_pointer()), align=4))
            block = width // 2
            while block >= 1:  # rows r and r + block trade halves of each 2*block-lane group
                lo = ir.Constant(ir.VectorType(_I32, width), _interleave(0, block, width))
                hi = ir.Constant(ir.VectorType(_I32, width), _interleave(1, block, width))
                new = list(rows)
                for r in range(width):
                    if r & block == 0:
                        new[r] = builder.shuffle_vector(rows[r], rows[r + block], lo)
                        new[r + block] = builder.shuffle_vector(rows[r], rows[r + block], hi)
                rows, block = new, block // 2
            acc = builder.load(accp)
            for c in range(width):
                xc = builder.load(builder.gep(xdata, [builder.add(j, ir.Constant(j.type, c))]))
                acc = builder.fadd(acc, builder.fmul(rows[c], _splat(builder, xc, width)))
            builder.store(acc, accp)
        out_ptr = _element_ptr(context, builder, sig.args[0], out_a, i)
        builder.store(builder.load(accp), builder.bitcast(out_ptr, vec.as_pointer()), align=4)
        return builder.mul(blocks, ir.Constant(ncols.type, width))
    return types.intp(xout, w, types.intp, x), codegen


def _dots_in_halves(context, builder, rows, row_types, x, x_type):
    """dot(row, x) over the first len(x) // 16 * 16 products for each row, each row's 16 lanes kept as two
    8-float halves (vdot_halves); the rows share the loads of x."""
    half = ir.VectorType(ir.FloatType(), LANES // 2)
    n = builder.extract_value(context.make_array(x_type)(context, builder, x).shape, 0)
    steps = builder.sdiv(n, ir.Constant(n.type, LANES))
    accs = [[cgutils.alloca_once_value(builder, ir.Constant(half, [0.0] * 8)) for _ in range(2)] for _ in rows]
    with cgutils.for_range(builder, steps) as loop:
        j = builder.mul(loop.index, ir.Constant(n.type, LANES))
        for h in range(2):
            k = builder.add(j, ir.Constant(n.type, 8 * h))
            xv = _load_vec(context, builder, x_type, x, k, half)
            for row, row_type, acc in zip(rows, row_types, accs):
                wv = _load_vec(context, builder, row_type, row, k, half)
                builder.store(_llvm_fma(builder, wv, xv, builder.load(acc[h])), acc[h])
    return [_halving_sum(builder, builder.fadd(builder.load(lo), builder.load(hi)), builder.fadd) for lo, hi in accs]


@intrinsic
def vdot_halves(typingctx, a, b):
    """The lanes of dot's 16-lane sum over the first len(a) // 16 * 16 products, added as vsum adds them.

    The same sums in the same order as vfma over 16-float vectors, but kept
    as two 8-float halves (lanes 0-7 and 8-15): two independent chains of
    fused multiply-adds instead of one, which is what an AVX-512 target needs
    to stream a weight row at full speed (one 512-bit chain waits on its own
    latency). vsum's first step adds lane k and lane k + 8: the two halves.
    """
    if not (_contiguous_f32(a) and _contiguous_f32(b)):
        return None

    def codegen(context, builder, sig, args):
        return _dots_in_halves(context, builder, [args[0]], [sig.args[0]], args[1], sig.args[1])[0]
    return types.float32(a, b), codegen


@intrinsic
def vdot2_halves(typingctx, a0, a1, b):
    """(vdot_halves(a0, b), vdot_halves(a1, b)) in one pass: four chains, two weight rows streamed together.

    Reading one row at a time, the speed of a weight row depends on where it
    starts within a cache line (Intel Xeon, 110M shapes, mapped file: 12.5
    GB/s at byte offset 28, 15 at 32); two rows side by side stream at 15.4-17.5
    at every offset, with each row's sums unchanged.
    """
    if not all(_contiguous_f32(v) for v in (a0, a1, b)):
        return None

    def codegen(context, builder, sig, args):
        sums = _dots_in_halves(context, builder, args[:2], sig.args[:2], args[2], sig.args[2])
        return context.make_tuple(builder, sig.return_type, sums)
    return types.UniTuple(types.float32, 2)(a0, a1, b), codegen


def _interleave(half, block, width):
    """Shuffle mask of one butterfly stage: per 2*block-lane group, the group's first (half 0) or second half
    of a, then the same half of b (b's lanes numbered from width)."""
    lanes = []
    for g in range(0, width, 2 * block):
        part = range(g, g + block) if half == 0 else range(g + block, g + 2 * block)
        lanes += list(part) + [width + k for k in part]
    return lanes


@intrinsic
def vsum(typingctx, v):
    """The 16 lanes added in a fixed tree: lane k + lane k+8, then k + k+4, k + k+2, k + k+1."""
    def codegen(context, builder, sig, args):
        return _halving_sum(builder, args[0], builder.fadd)
    return types.float32(f32x16), codegen


@intrinsic
def vlane(typingctx, v, k):
    """Lane k of v."""
    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], builder.trunc(args[1], _I32))
    return types.float32(f32x16, types.intp), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c for float32 scalars, fused where the target has FMA (as vfma)."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        return _llvm_fma(builder, *args)
    return types.float32(types.float32, types.float32, types.float32), codegen


# ----------------------------------------------------------------------------
# a tile of accumulators: several vectors kept in registers
#
# A tile is an LLVM array value. tile_fma updates one element picked by a
# loop index; once LLVM has unrolled the loops over the tile (their bounds
# are constants) every index is constant and the array lives in vector
# registers. The matmul tile is TILE[0] rows x TILE[1] tokens.

class Tile(types.Type):
    def __init__(self, n):
        self.n = n
        super().__init__(name=f"tile{n}xf32x16")


@register_model(Tile)
class _TileModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.ArrayType(_VEC, fe_type.n))


def _tile_slot(builder, tile, k):
    mem = cgutils.alloca_once(builder, tile.type)
    builder.store(tile, mem)
    return mem, builder.gep(mem, [ir.Constant(_I32, 0), k])


def _tile_zero(n):
    tile = Tile(n)

    def typer(typingctx):
        zero = ir.Constant(_VEC, [0.0] * LANES)
        return tile(), lambda context, builder, sig, args: ir.Constant(ir.ArrayType(_VEC, n), [zero] * n)
    return intrinsic(typer)


tile_zero = _tile_zero(TILE[0] * TILE[1])
tile_zero.__doc__ = "A matmul tile (TILE[0] x TILE[1] vectors) of zeros."
row_tile_zero = _tile_zero(ROW_TILE)
row_tile_zero.__doc__ = "A tile of ROW_TILE zero vectors: one weight row against ROW_TILE tokens."


@intrinsic
def tile_sums(typingctx, tile):
    """Lane k = vsum(vector k of the tile), for every vector (at most 16) at once.

    The same additions as vsum's tree, lane for lane, batched across the
    vectors: level by level, the halves of two vectors are packed into one
    and added with a single instruction. About 3 operations per sum instead
    of vsum's 8, which matters when a dot is only a few vectors long.
    """
    if not isinstance(tile, Tile) or tile.n > LANES:
        return None

    def codegen(context, builder, sig, args):
        zero = ir.Constant(_VEC, [0.0] * LANES)
        vecs = [builder.extract_value(args[0], k) for k in range(tile.n)] + [zero] * (LANES - tile.n)
        width = LANES  # each vector holds LANES // width partial sums of `width` lanes each
        while width > 1:
            half = width // 2
            lo = [lane for g in range(0, LANES, width) for lane in range(g, g + half)]
            hi = [lane for g in range(0, LANES, width) for lane in range(g + half, g + width)]
            pairs = []
            for a, b in zip(vecs[0::2], vecs[1::2]):
                pick = lambda lanes: builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, LANES),  # noqa
                                                                         lanes + [LANES + x for x in lanes]))
                pairs.append(builder.fadd(pick(lo), pick(hi)))
            vecs, width = pairs, half
        return vecs[0]
    return f32x16(tile), codegen


@intrinsic
def tile_get(typingctx, tile, k):
    """Vector k of the tile."""
    if not isinstance(tile, Tile):
        return None

    def codegen(context, builder, sig, args):
        _, ptr = _tile_slot(builder, args[0], args[1])
        return builder.load(ptr)
    return f32x16(tile, types.intp), codegen


def _tile_update(op):
    def typer(typingctx, tile, k, a, b):
        if not isinstance(tile, Tile):
            return None

        def codegen(context, builder, sig, args):
            mem, ptr = _tile_slot(builder, args[0], args[1])
            builder.store(op(builder, builder.load(ptr), args[2], args[3]), ptr)
            return builder.load(mem)
        return tile(tile, types.intp, f32x16, f32x16), codegen
    return typer


tile_fma = intrinsic(_tile_update(lambda builder, acc, a, b: _llvm_fma(builder, a, b, acc)))
tile_fma.__doc__ = "The tile with vector k replaced by vfma(vector k, a, b)."
tile_muladd = intrinsic(_tile_update(lambda builder, acc, a, b: builder.fadd(acc, builder.fmul(a, b))))
tile_muladd.__doc__ = "The tile with vector k replaced by vmuladd(vector k, a, b)."


# ----------------------------------------------------------------------------
# i32x8: eight int32 lanes, the accumulator of the int8 group dots

class I32x8(types.Type):
    def __init__(self):
        super().__init__(name="i32x8")


i32x8 = I32x8()
_I8x32 = ir.VectorType(ir.IntType(8), INT8_CHUNK)
_I16x16 = ir.VectorType(ir.IntType(16), 16)
_I32x8 = ir.VectorType(_I32, 8)
_F32x8 = ir.VectorType(ir.FloatType(), 8)


@register_model(I32x8)
class _I32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _I32x8)


def _intrinsic_call(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


@intrinsic
def izero(typingctx):
    """Eight int32 zeros."""
    return i32x8(), lambda context, builder, sig, args: ir.Constant(_I32x8, [0] * 8)


@intrinsic
def idot32(typingctx, acc, x, w, j):
    """acc plus the products x[j + k] * w[j + k], k < 32, of two int8 arrays, summed exactly into 8 int32 lanes.

    Both hold values in [-127, 127] (runq.c's quantization never gives -128):
      avx2: |w| fits an unsigned byte and |w| * (x with w's sign) = x * w, so
            vpmaddubsw(|w|, sign(x, w)) -> pairs in int16 (at most 2 * 127 * 127,
            no saturation), vpmaddwd(., 1) -> int32, added to acc.
      sse2: both widened to int16, pmaddwd on each 8 of them -> int32 pairs.
    The vnni path is idot32u and iwsum32 (fewer instructions than any sign fix-up).
    """
    def codegen(context, builder, sig, args):
        acc = args[0]
        xv = _load_vec(context, builder, sig.args[1], args[1], args[3], _I8x32, align=1)
        wv = _load_vec(context, builder, sig.args[2], args[2], args[3], _I8x32, align=1)
        if INT8_DOT == "sse2":
            i16x32 = ir.VectorType(ir.IntType(16), 32)
            xw, ww = builder.sext(xv, i16x32), builder.sext(wv, i16x32)
            quads = []
            for k in range(4):
                lanes = ir.Constant(ir.VectorType(_I32, 8), list(range(8 * k, 8 * k + 8)))
                quads.append(_intrinsic_call(builder, "llvm.x86.sse2.pmadd.wd", ir.VectorType(_I32, 4),
                                             [builder.shuffle_vector(xw, xw, lanes),
                                              builder.shuffle_vector(ww, ww, lanes)]))
            lo = builder.shuffle_vector(quads[0], quads[1], ir.Constant(ir.VectorType(_I32, 8), list(range(8))))
            hi = builder.shuffle_vector(quads[2], quads[3], ir.Constant(ir.VectorType(_I32, 8), list(range(8))))
            return builder.add(acc, builder.add(lo, hi))
        # |w| and w's signs on x: in _group_sums8 w is the one row of bytes shared by the eight dots, so LLVM
        # takes its |w| once for all eight (4 operations per dot and step instead of 5)
        wa = _intrinsic_call(builder, "llvm.abs.v32i8", _I8x32, [wv, ir.Constant(ir.IntType(1), 0)])
        xs = _intrinsic_call(builder, "llvm.x86.avx2.psign.b", _I8x32, [xv, wv])
        pairs = _intrinsic_call(builder, "llvm.x86.avx2.pmadd.ub.sw", _I16x16, [wa, xs])
        quads = _intrinsic_call(builder, "llvm.x86.avx2.pmadd.wd", _I32x8, [pairs, ir.Constant(_I16x16, [1] * 16)])
        return builder.add(acc, quads)
    if INT8_DOT in ("portable", "vnni") or not all(_int8_row(a) for a in (x, w)):
        return None
    return i32x8(i32x8, x, w, types.intp), codegen


def _int8_row(a):
    return isinstance(a, types.Array) and a.dtype == types.int8 and a.ndim == 1 and a.layout == "C"


def _vpdpbusd(builder, acc, unsigned, signed):
    """acc + the four products of unsigned bytes by signed bytes in each int32 lane (exact: no saturation)."""
    return _intrinsic_call(builder, "llvm.x86.avx512.vpdpbusd.256", _I32x8,
                           [acc, builder.bitcast(unsigned, _I32x8), builder.bitcast(signed, _I32x8)])


@intrinsic
def idot32u(typingctx, acc, x, w, j):
    """acc plus (x[j + k] + 128) * w[j + k], k < 32, in 8 int32 lanes (vpdpbusd; targets with VNNI).

    x + 128 is x with its sign bit flipped, read as an unsigned byte. The
    caller takes iwsum32's 128 * w back off, leaving exactly sum x * w.
    """
    def codegen(context, builder, sig, args):
        xv = _load_vec(context, builder, sig.args[1], args[1], args[3], _I8x32, align=1)
        wv = _load_vec(context, builder, sig.args[2], args[2], args[3], _I8x32, align=1)
        return _vpdpbusd(builder, args[0], builder.xor(xv, ir.Constant(_I8x32, [-128] * INT8_CHUNK)), wv)
    if INT8_DOT != "vnni" or not all(_int8_row(a) for a in (x, w)):
        return None
    return i32x8(i32x8, x, w, types.intp), codegen


@intrinsic
def iwsum32(typingctx, acc, w, j):
    """acc plus 128 * w[j + k], k < 32, in 8 int32 lanes (vpdpbusd; targets with VNNI): idot32u's offset."""
    def codegen(context, builder, sig, args):
        wv = _load_vec(context, builder, sig.args[1], args[1], args[2], _I8x32, align=1)
        return _vpdpbusd(builder, args[0], ir.Constant(_I8x32, [-128] * INT8_CHUNK), wv)
    if INT8_DOT != "vnni" or not _int8_row(w):
        return None
    return i32x8(i32x8, w, types.intp), codegen


@intrinsic
def iflip(typingctx):
    """0x80 in every byte, hidden from LLVM's constant folding (an empty asm statement returns it): x ^ iflip()
    of a broadcast load then stays one instruction (vpxord with the load copied to every lane) instead of a load,
    an xor and a broadcast."""
    def codegen(context, builder, sig, args):
        asm = ir.InlineAsm(ir.FunctionType(_I32x8, [_I32x8]), "", "=v,0", side_effect=False)
        return builder.call(asm, [ir.Constant(_I32x8, [-2139062144] * 8)])
    return i32x8(), codegen


@intrinsic
def idot_tokens(typingctx, acc, xt, w, j, flip):
    """Lane k of acc plus sum_{q<4} x[k, j + q] * w[j + q] for eight tokens k: four columns, no horizontal sum.

    xt holds the tokens' bytes interleaved by four (xt[8j + 4k + q] =
    x[k, j + q], j a multiple of 4), so one 32-byte load has four columns of
    eight tokens, against w[j:j+4] copied to every lane:
      vnni: vpdpbusd of w + 128 (w's sign bit flipped, read as unsigned,
            one instruction with the copy to every lane) by x; the caller
            takes 128 * sum(x) off (one vector for all its rows). flip is
            iflip(), made once by the caller.
      avx2: vpmaddubsw(|x|, w with x's sign) -> int16 pairs (no saturation
            for values in [-127, 127]), vpmaddwd(., 1) -> int32 (flip unused).
    """
    def codegen(context, builder, sig, args):
        acc, j = args[0], args[3]
        xv = _load_vec(context, builder, sig.args[1], args[1], builder.mul(j, ir.Constant(j.type, 8)), _I8x32, align=1)
        wq = builder.load(builder.bitcast(_element_ptr(context, builder, sig.args[2], args[2], j), _I32.as_pointer()),
                          align=1)
        w4 = _splat(builder, wq, 8)  # the four weights in every lane
        if INT8_DOT == "vnni":
            return _vpdpbusd(builder, acc, builder.bitcast(builder.xor(w4, args[4]), _I8x32), xv)
        # |x| once for the tile's rows (the same load in each, merged by LLVM), x's signs put on the weights
        xa = _intrinsic_call(builder, "llvm.abs.v32i8", _I8x32, [xv, ir.Constant(ir.IntType(1), 0)])
        ws = _intrinsic_call(builder, "llvm.x86.avx2.psign.b", _I8x32, [builder.bitcast(w4, _I8x32), xv])
        pairs = _intrinsic_call(builder, "llvm.x86.avx2.pmadd.ub.sw", _I16x16, [xa, ws])
        quads = _intrinsic_call(builder, "llvm.x86.avx2.pmadd.wd", _I32x8, [pairs, ir.Constant(_I16x16, [1] * 16)])
        return builder.add(acc, quads)
    if INT8_DOT not in ("vnni", "avx2") or not all(_int8_row(a) for a in (xt, w)):
        return None
    return i32x8(i32x8, xt, w, types.intp, i32x8), codegen


@intrinsic
def iload8(typingctx, a, j):
    """a[j:j+8] of a contiguous int32 array as eight lanes."""
    def codegen(context, builder, sig, args):
        return _load_vec(context, builder, sig.args[0], args[0], args[1], _I32x8)
    if not (isinstance(a, types.Array) and a.dtype == types.int32 and a.ndim == 1 and a.layout == "C"):
        return None
    return i32x8(a, types.intp), codegen


@intrinsic
def iadd(typingctx, a, b):
    """a + b, lane by lane."""
    return i32x8(i32x8, i32x8), lambda context, builder, sig, args: builder.add(args[0], args[1])


@intrinsic
def isub(typingctx, a, b):
    """a - b, lane by lane."""
    return i32x8(i32x8, i32x8), lambda context, builder, sig, args: builder.sub(args[0], args[1])


@intrinsic
def isub_total(typingctx, a, b):
    """a minus the sum of b's eight lanes, in every lane."""
    def codegen(context, builder, sig, args):
        return builder.sub(args[0], _splat(builder, _halving_sum(builder, args[1], builder.add), 8))
    return i32x8(i32x8, i32x8), codegen


def _shuffle(builder, a, b, lanes):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(lanes)), lanes))


@intrinsic
def ihsum8(typingctx, a0, a1, a2, a3, a4, a5, a6, a7):
    """Lane k = the sum of the eight lanes of a_k: eight groups' sums at once (exact in any order).

    Pairwise horizontal adds within each 128-bit half, twice, then the two
    halves added: 9 vector operations for 8 sums instead of 7 per sum.
    """
    def codegen(context, builder, sig, args):
        def hadd(a, b):  # vphaddd: per 128-bit half, adjacent pairs of a, then of b
            return builder.add(_shuffle(builder, a, b, [0, 2, 8, 10, 4, 6, 12, 14]),
                               _shuffle(builder, a, b, [1, 3, 9, 11, 5, 7, 13, 15]))
        h0123 = hadd(hadd(args[0], args[1]), hadd(args[2], args[3]))
        h4567 = hadd(hadd(args[4], args[5]), hadd(args[6], args[7]))
        low = _shuffle(builder, h0123, h4567, [0, 1, 2, 3, 8, 9, 10, 11])
        high = _shuffle(builder, h0123, h4567, [4, 5, 6, 7, 12, 13, 14, 15])
        return builder.add(low, high)
    return i32x8(*([i32x8] * 8)), codegen


@intrinsic
def ilane(typingctx, v, k):
    """Lane k of an i32x8."""
    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], builder.trunc(args[1], _I32))
    return types.int32(i32x8, types.intp), codegen


def _q8_terms(builder, s, ws, xs):
    """(float(s) * ws) * xs lane by lane: runq.c's term of one group, its two roundings in its order."""
    return builder.fmul(builder.fmul(builder.sitofp(s, ir.VectorType(ir.FloatType(), s.type.count)), ws), xs)


@intrinsic
def q8_accumulate(typingctx, val, s, ws, xs, g):
    """val + p[0] + p[1] + ... + p[7] in that order, p[k] = (float(s[k]) * ws[g + k]) * xs[g + k].

    The products as one vector multiply each (the same roundings as one at a
    time), the sum in group order as runq.c adds it.
    """
    def codegen(context, builder, sig, args):
        p = _q8_terms(builder, args[1], *(_load_vec(context, builder, sig.args[i], args[i], args[4], _F32x8)
                                          for i in (2, 3)))
        acc = args[0]
        for k in range(8):
            acc = builder.fadd(acc, builder.extract_element(p, ir.Constant(_I32, k)))
        return acc
    return types.float32(types.float32, i32x8, ws, xs, types.intp), codegen


class F32x8(types.Type):
    def __init__(self):
        super().__init__(name="f32x8")


f32x8 = F32x8()


@register_model(F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _F32x8)


@intrinsic
def fzero8(typingctx):
    """Eight float32 zeros: the sums of eight tokens."""
    return f32x8(), lambda context, builder, sig, args: ir.Constant(_F32x8, [0.0] * 8)


@intrinsic
def q8_lanes(typingctx, vals, s, wsg, xs, t):
    """vals + (float(s) * wsg) * xs[t:t+8]: one group's term added to each of eight tokens' sums.

    Lane k is token t + k; each lane rounds as q8_accumulate does for one token.
    """
    def codegen(context, builder, sig, args):
        xsv = _load_vec(context, builder, sig.args[3], args[3], args[4], _F32x8)
        return builder.fadd(args[0], _q8_terms(builder, args[1], _splat(builder, args[2], 8), xsv))
    return f32x8(f32x8, i32x8, types.float32, xs, types.intp), codegen


@intrinsic
def q8_rows(typingctx, vals, s, ws, i, g, xsg):
    """vals + (float(s) * ws[i:i+8, g]) * xsg: one group's term added to each of eight weight rows' sums.

    Lane k is row i + k of the weights (one token); each lane rounds as
    q8_accumulate does for that row.
    """
    def codegen(context, builder, sig, args):
        arr = context.make_array(sig.args[2])(context, builder, args[2])
        stride = builder.extract_value(arr.shape, 1)
        base = builder.add(builder.mul(args[3], stride), args[4])
        wsv = ir.Constant(_F32x8, ir.Undefined)
        for k in range(8):  # a column of the scales: eight loads a row apart
            index = builder.add(base, builder.mul(ir.Constant(stride.type, k), stride))
            wsv = builder.insert_element(wsv, builder.load(builder.gep(arr.data, [index])), ir.Constant(_I32, k))
        return builder.fadd(args[0], _q8_terms(builder, args[1], wsv, _splat(builder, args[5], 8)))
    if not (isinstance(ws, types.Array) and ws.dtype == types.float32 and ws.ndim == 2 and ws.layout == "C"):
        return None
    return f32x8(f32x8, i32x8, ws, types.intp, types.intp, types.float32), codegen


@intrinsic
def prefetch(typingctx, a, index):
    """Ask for the cache line holding a's element at flat position index to be brought into L2.

    A hint (prefetcht1): an index past the end of a never faults.
    """
    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_element_ptr(context, builder, sig.args[0], args[0], args[1]), ir.IntType(8).as_pointer())
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, _I32, _I32, _I32]), "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 2), ir.Constant(_I32, 1)])
        return context.get_dummy_value()
    if not (isinstance(a, types.Array) and a.layout == "C"):
        return None
    return types.none(a, types.intp), codegen


@intrinsic
def flane8(typingctx, v, k):
    """Lane k of an f32x8."""
    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], builder.trunc(args[1], _I32))
    return types.float32(f32x8, types.intp), codegen


@intrinsic
def ihsum(typingctx, v):
    """The eight int32 lanes added (exact in any order)."""
    def codegen(context, builder, sig, args):
        return _halving_sum(builder, args[0], builder.add)
    return types.int32(i32x8), codegen


# ----------------------------------------------------------------------------
# AMX: one tdpbssd multiplies a tile of 16 weight rows by the 8 tokens of an int8 tile
#
# Tile registers: tmm0 the weights (16 rows x K bytes of a group, read in place
# from the checkpoint, a row's stride apart), tmm1 the tokens (K / 4 rows of 8
# tokens x 4 bytes: _interleave_tile's layout is AMX's), tmm2 the 16 x 8 int32
# group sums. Signed bytes times signed bytes, exact in int32 as every path.

AMX_ROWS = 16


class Q8Tile16(types.Type):
    def __init__(self):
        super().__init__(name="q8tile16")


q8tile16 = Q8Tile16()
_Q8TILE = ir.ArrayType(_VEC, AMX_ROWS // 2)  # vector p: rows 2p (lanes 0-7) and 2p + 1 (8-15)


@register_model(Q8Tile16)
class _Q8Tile16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _Q8TILE)


def _amx(builder, name, *args):
    """Call llvm.x86.<name>; tile registers are i8 immediates, addresses i8*."""
    i8p = ir.IntType(8).as_pointer()
    args = [builder.bitcast(a, i8p) if isinstance(a.type, ir.PointerType) else a for a in args]
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [a.type for a in args]),
                                        f"llvm.x86.{name}")
    builder.call(fn, args)


def _tmm(k):
    return ir.Constant(ir.IntType(8), k)


@intrinsic
def amx_configure(typingctx, k):
    """Load the tile configuration for groups read K = k bytes at a time (64 or 32) on this thread."""
    def codegen(context, builder, sig, args):
        cfg = cgutils.alloca_once(builder, ir.ArrayType(ir.IntType(8), 64))
        builder.store(ir.Constant(cfg.type.pointee, [0] * 64), cfg)

        def byte(offset):
            return builder.gep(cfg, [ir.Constant(_I32, 0), ir.Constant(_I32, offset)])
        i16 = ir.IntType(16)
        kb = builder.trunc(args[0], i16)
        builder.store(ir.Constant(ir.IntType(8), 1), byte(0))  # palette 1
        one_group = [(kb, ir.Constant(i16, AMX_ROWS)),  # weights
                     (ir.Constant(i16, 32), builder.udiv(kb, ir.Constant(i16, 4))),  # tokens
                     (ir.Constant(i16, 32), ir.Constant(i16, AMX_ROWS))]  # sums
        for tmm, (colsb, rows) in enumerate(2 * one_group):  # tmm0-2 and tmm3-5: two groups in flight
            builder.store(colsb, builder.bitcast(byte(16 + 2 * tmm), i16.as_pointer()))
            builder.store(builder.trunc(rows, ir.IntType(8)), byte(48 + tmm))
        _amx(builder, "ldtilecfg", byte(0))
        return context.get_dummy_value()
    return types.none(types.intp), codegen


@intrinsic
def amx_release(typingctx):
    """Give the tile registers back (the thread's AMX state returns to its initial, unsaved form)."""
    def codegen(context, builder, sig, args):
        _amx(builder, "tilerelease")
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def q8tile16_zero(typingctx):
    """The float sums of 16 weight rows x 8 tokens, zero."""
    return q8tile16(), lambda context, builder, sig, args: ir.Constant(_Q8TILE, [[0.0] * LANES] * (AMX_ROWS // 2))


@intrinsic
def q8tile16_store(typingctx, xout, acc, t, i):
    """xout[t + c, i + r] = the sum of weight row r with token c, for the 16 rows x 8 tokens."""
    def codegen(context, builder, sig, args):
        out = context.make_array(sig.args[0])(context, builder, args[0])
        stride = builder.extract_value(out.shape, 1)
        for r in range(AMX_ROWS):
            pair = builder.extract_value(args[1], r // 2)
            for c in range(8):
                index = builder.add(builder.mul(builder.add(args[2], ir.Constant(stride.type, c)), stride),
                                    builder.add(args[3], ir.Constant(stride.type, r)))
                builder.store(builder.extract_element(pair, ir.Constant(_I32, 8 * (r % 2) + c)),
                              builder.gep(out.data, [index]))
        return context.get_dummy_value()
    if not (isinstance(xout, types.Array) and xout.dtype == types.float32 and xout.ndim == 2 and xout.layout == "C"):
        return None
    return types.none(xout, q8tile16, types.intp, types.intp), codegen


def _amx_q8_groups(count):
    """amx_q8_group over `count` consecutive groups, each with its own three tile registers: the next
    group's loads and tdpbssd need not wait for this one's sums to be stored and read (tiles are not
    renamed)."""
    def typer(typingctx, acc, wq, ws, i, g, gs, k, xt, xst, t):
        def codegen(context, builder, sig, args):
            acc, wq_a, ws_a, i, g, gs, k, xt_a, xst_a, t = args
            w = context.make_array(sig.args[1])(context, builder, wq_a)
            cols = builder.extract_value(w.shape, 1)
            xdata = context.make_array(sig.args[7])(context, builder, xt_a).data
            sums = []
            for n in range(count):
                a_reg, b_reg, c_reg = _tmm(3 * n), _tmm(3 * n + 1), _tmm(3 * n + 2)
                start = builder.mul(builder.add(g, ir.Constant(g.type, n)), gs)
                wrow = builder.gep(w.data, [builder.add(builder.mul(i, cols), start)])
                xgroup = builder.gep(xdata, [builder.mul(start, ir.Constant(start.type, 8))])
                _amx(builder, "tilezero", c_reg)
                with cgutils.for_range(builder, builder.udiv(gs, k)) as loop:  # powers of two when constant
                    off = builder.mul(loop.index, k)
                    _amx(builder, "tileloadd64", a_reg, builder.gep(wrow, [off]), cols)
                    _amx(builder, "tileloadd64", b_reg, builder.gep(xgroup, [builder.mul(off, ir.Constant(
                        off.type, 8))]), ir.Constant(cols.type, 32))
                    _amx(builder, "tdpbssd", c_reg, a_reg, b_reg)
                sums.append(cgutils.alloca_once(builder, ir.ArrayType(ir.VectorType(_I32, LANES), AMX_ROWS // 2)))
                _amx(builder, "tilestored64", c_reg, sums[n], ir.Constant(cols.type, 32))
            s = context.make_array(sig.args[2])(context, builder, ws_a)
            ng = builder.extract_value(s.shape, 1)
            tokens = builder.extract_value(context.make_array(sig.args[8])(context, builder, xst_a).shape, 1)
            for n in range(count):
                gn = builder.add(g, ir.Constant(g.type, n))
                xsv = _load_vec(context, builder, sig.args[8], xst_a, builder.add(builder.mul(gn, tokens), t), _F32x8)
                # two rows a vector (a row's 8 tokens each half): 16 rows' scaling in 8 instructions of each
                # kind, not 16 (16 rows x 8 tokens in L1: 36 -> 23 ns a group, 8 samples of 110M int8 1.06x)
                xsv = builder.shuffle_vector(xsv, xsv, ir.Constant(ir.VectorType(_I32, LANES), 2 * list(range(8))))
                for p in range(AMX_ROWS // 2):
                    pair = builder.load(builder.gep(sums[n], [ir.Constant(_I32, 0), ir.Constant(_I32, p)]), align=64)
                    scales = [_splat(builder, builder.load(builder.gep(s.data, [builder.add(builder.mul(builder.add(
                        i, ir.Constant(i.type, 2 * p + h)), ng), gn)])), 8) for h in (0, 1)]
                    wsv = builder.shuffle_vector(scales[0], scales[1], ir.Constant(ir.VectorType(_I32, LANES),
                                                                                  list(range(16))))
                    term = _q8_terms(builder, pair, wsv, xsv)
                    acc = builder.insert_value(acc, builder.fadd(builder.extract_value(acc, p), term), p)
            return acc
        if not (isinstance(xst, types.Array) and xst.dtype == types.float32 and xst.ndim == 2 and xst.layout == "C"):
            return None
        return q8tile16(q8tile16, wq, ws, types.intp, types.intp, types.intp, types.intp, xt, xst, types.intp), codegen
    return intrinsic(typer)


amx_q8_group = _amx_q8_groups(1)
amx_q8_group.__doc__ = """acc + the group g term of rows i..i+15 against tokens t..t+7: lane c of row r gains
    (float(sum_j wq[i + r, j] * x[t + c, j]) * ws[i + r, g]) * xst[g, t + c], j over the group: q8_lanes' roundings.

    The integer sums: tdpbssd over the group's columns, k at a time (xt: the
    tokens' bytes as _interleave_tile lays them out).
    """
amx_q8_group2 = _amx_q8_groups(2)
amx_q8_group2.__doc__ = "amx_q8_group of groups g and g + 1, in that order."


# ----------------------------------------------------------------------------
# a clock readable from jitted code, for the per-kernel profile

@intrinsic
def clock_ns(typingctx):
    """CLOCK_MONOTONIC in nanoseconds (clock_gettime, a vDSO call of about 20 ns)."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        timespec = ir.LiteralStructType([i64, i64])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [_I32, timespec.as_pointer()]),
                                            "clock_gettime")
        ts = cgutils.alloca_once(builder, timespec)
        builder.call(fn, [ir.Constant(_I32, 1), ts])  # 1 = CLOCK_MONOTONIC on Linux
        zero = ir.Constant(_I32, 0)
        sec = builder.load(builder.gep(ts, [zero, zero]))
        nsec = builder.load(builder.gep(ts, [zero, ir.Constant(_I32, 1)]))
        return builder.add(builder.mul(sec, ir.Constant(i64, 1_000_000_000)), nsec)
    return types.int64(), codegen


def describe():
    """One line for the `compile:` report: mode, threads, target and cache."""
    return (f"fastmath {FASTMATH}, {THREADS} thread{'s' if THREADS > 1 else ''}, {CPU} ({tier_name()}, "
            f"int8 {INT8_PATH}), cache {CACHE_DIR or 'off'}")
