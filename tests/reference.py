"""Independent references for the forward pass, written from llama2.c's arithmetic (not from model.py).

- `forward_numpy`: vectorized NumPy in float64, for tolerance checks over many
  positions (an implementation with different summation order and precision,
  so agreement means the same math, not the same code).
- `forward_scalar`: pure-Python float32 scalar arithmetic with sequential sums and the
  C library's expf/powf/cosf/sinf/sqrtf, in exactly run.c's order of operations;
  `--no-fastmath` kernels must equal it bit for bit.
"""

import ctypes
import ctypes.util

import numpy as np

# ----------------------------------------------------------------------------
# NumPy (float64) reference


def _rmsnorm64(x, w):
    return w * (x / np.sqrt(np.mean(x * x) + 1e-5))


def _rope64(vec, pos, head_size):
    out = vec.copy()
    i = np.arange(0, vec.shape[0], 2)
    head_dim = i % head_size
    freq = 1.0 / 10000.0 ** (head_dim / head_size)
    ang = pos * freq
    c, s = np.cos(ang), np.sin(ang)
    v0, v1 = vec[i], vec[i + 1]
    out[i] = v0 * c - v1 * s
    out[i + 1] = v0 * s + v1 * c
    return out


class NumpyModel:
    """run.c's forward pass over a weights dict from checkpoints.random_weights."""

    def __init__(self, w):
        self.w = {k: (np.asarray(v, np.float64) if isinstance(v, np.ndarray) else v) for k, v in w.items()}
        c = w["config"]
        self.c = c
        self.head = c["dim"] // c["n_heads"]
        self.kv_mul = c["n_heads"] // c["n_kv_heads"]
        L, S = c["n_layers"], c["seq_len"]
        kv = self.head * c["n_kv_heads"]
        self.kcache = np.zeros((L, S, kv))
        self.vcache = np.zeros((L, S, kv))

    def mm(self, name, l, x):
        """Matrix name (of layer l; None for the classifier) times x."""
        return (self.w[name][l] if l is not None else self.w[name]) @ x

    def embed(self, token):
        return self.w["token_embedding"][token].astype(np.float64)

    def forward(self, token, pos):
        w, c, hs = self.w, self.c, self.head
        x = self.embed(token)
        for l in range(c["n_layers"]):
            xb = _rmsnorm64(x, w["rms_att"][l])
            q, k, v = self.mm("wq", l, xb), self.mm("wk", l, xb), self.mm("wv", l, xb)
            q, k = _rope64(q, pos, hs), _rope64(k, pos, hs)
            self.kcache[l, pos] = k
            self.vcache[l, pos] = v
            out = np.zeros(c["dim"])
            for h in range(c["n_heads"]):
                kh = h // self.kv_mul
                K = self.kcache[l, :pos + 1, kh * hs:(kh + 1) * hs]
                V = self.vcache[l, :pos + 1, kh * hs:(kh + 1) * hs]
                s = K @ q[h * hs:(h + 1) * hs] / np.sqrt(hs)
                a = np.exp(s - s.max())
                out[h * hs:(h + 1) * hs] = (a / a.sum()) @ V
            x = x + self.mm("wo", l, out)
            xb = _rmsnorm64(x, w["rms_ffn"][l])
            h1, h3 = self.mm("w1", l, xb), self.mm("w3", l, xb)
            x = x + self.mm("w2", l, h1 / (1 + np.exp(-h1)) * h3)
        return self.mm("wcls", None, _rmsnorm64(x, w["rms_final"]))


# ----------------------------------------------------------------------------
# scalar float32 reference, bit for bit

_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
for _name in ("expf", "cosf", "sinf", "sqrtf"):
    getattr(_libm, _name).restype = ctypes.c_float
    getattr(_libm, _name).argtypes = [ctypes.c_float]
_libm.powf.restype = ctypes.c_float
_libm.powf.argtypes = [ctypes.c_float, ctypes.c_float]

F = np.float32


def expf(v):
    return F(_libm.expf(float(v)))


def sqrtf(v):
    return F(_libm.sqrtf(float(v)))


def _rmsnorm32(x, w):
    ss = F(0)
    for v in x:
        ss = F(ss + F(v * v))
    ss = F(ss / F(len(x)))
    ss = F(ss + F(1e-5))
    ss = F(F(1) / sqrtf(ss))
    return [F(w[j] * F(ss * x[j])) for j in range(len(x))]


def _matvec32(W, x):
    out = []
    for row in W:
        val = F(0)
        for j in range(len(x)):
            val = F(val + F(row[j] * x[j]))
        out.append(val)
    return out


def _softmax32(xs):
    m = xs[0]
    for v in xs[1:]:
        if v > m:
            m = v
    e = [expf(F(v - m)) for v in xs]
    total = F(0)
    for v in e:
        total = F(total + v)
    return [F(v / total) for v in e]


class ScalarModel:
    """run.c's forward pass with float32 scalars, one rounding per C operation."""

    def __init__(self, w):
        self.w = w
        c = w["config"]
        self.c = c
        self.head = c["dim"] // c["n_heads"]
        self.kv_dim = self.head * c["n_kv_heads"]
        self.kv_mul = c["n_heads"] // c["n_kv_heads"]
        self.kcache = {}
        self.vcache = {}

    def forward(self, token, pos):
        w, c, hs = self.w, self.c, self.head
        dim = c["dim"]
        x = [F(v) for v in w["token_embedding"][token]]
        for l in range(c["n_layers"]):
            xb = _rmsnorm32(x, w["rms_att"][l])
            q = _matvec32(w["wq"][l], xb)
            k = _matvec32(w["wk"][l], xb)
            v = _matvec32(w["wv"][l], xb)
            for i in range(0, dim, 2):
                head_dim = i % hs
                freq = F(F(1) / F(_libm.powf(10000.0, float(F(F(head_dim) / F(hs))))))
                val = F(F(pos) * freq)
                fcr = F(_libm.cosf(float(val)))
                fci = F(_libm.sinf(float(val)))
                vecs = [q, k] if i < self.kv_dim else [q]
                for vec in vecs:
                    v0, v1 = vec[i], vec[i + 1]
                    vec[i] = F(F(v0 * fcr) - F(v1 * fci))
                    vec[i + 1] = F(F(v0 * fci) + F(v1 * fcr))
            self.kcache[l, pos] = k
            self.vcache[l, pos] = v
            out = [F(0)] * dim
            for h in range(c["n_heads"]):
                ko = (h // self.kv_mul) * hs
                qh = q[h * hs:(h + 1) * hs]
                scores = []
                for t in range(pos + 1):
                    kt = self.kcache[l, t]
                    s = F(0)
                    for i in range(hs):
                        s = F(s + F(qh[i] * kt[ko + i]))
                    scores.append(F(s / sqrtf(F(hs))))
                att = _softmax32(scores)
                acc = [F(0)] * hs
                for t in range(pos + 1):
                    vt = self.vcache[l, t]
                    for i in range(hs):
                        acc[i] = F(acc[i] + F(att[t] * vt[ko + i]))
                out[h * hs:(h + 1) * hs] = acc
            o = _matvec32(w["wo"][l], out)
            x = [F(x[i] + o[i]) for i in range(dim)]
            xb = _rmsnorm32(x, w["rms_ffn"][l])
            h1 = _matvec32(w["w1"][l], xb)
            h3 = _matvec32(w["w3"][l], xb)
            hb = []
            for i in range(len(h1)):
                sig = F(F(1) / F(F(1) + expf(F(-h1[i]))))
                hb.append(F(F(h1[i] * sig) * h3[i]))
            o = _matvec32(w["w2"][l], hb)
            x = [F(x[i] + o[i]) for i in range(dim)]
        x = _rmsnorm32(x, w["rms_final"])
        return np.array(_matvec32(w["wcls"], x), np.float32)


# ----------------------------------------------------------------------------
# int8 (Q8_0) arithmetic of runq.c, in NumPy

def quantize_q8(x, gs):
    """runq.c's quantize: (int8 values, float32 scales); C's round() goes half away from zero."""
    g = np.asarray(x, np.float32).reshape(-1, gs)
    scale = (np.abs(g).max(axis=1) / np.float32(127)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = (g / scale[:, None]).astype(np.float32)
    r = np.sign(v) * np.floor(np.abs(v.astype(np.float64)) + 0.5)  # C promotes to double for round()
    r[np.isnan(r)] = 0  # 0 / 0 on an all-zero group: the int8 cast of NaN gives 0 on x86-64
    return r.astype(np.int8).reshape(-1), scale


def matmul_q8(xq, xs, wq, ws, gs):
    """Exact: integer group dots in int64, then val += (float(ival) * ws) * xs group by group in float32."""
    rows, ng = wq.shape[0], xs.size
    ival = (wq.reshape(rows, ng, gs).astype(np.int64) * xq.reshape(1, ng, gs).astype(np.int64)).sum(axis=2)
    val = np.zeros(rows, np.float32)
    for g in range(ng):
        val = (val + (ival[:, g].astype(np.float32) * ws[:, g]) * xs[g]).astype(np.float32)
    return val


class Q8NumpyModel(NumpyModel):
    """runq.c's int8 variant: NumpyModel with every matmul on quantized weights and activations."""

    def __init__(self, w, gs, quantize_weights):
        super().__init__(w)
        self.gs = gs
        self.q = {}
        for name in ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]:
            mats = []
            for l in range(w["config"]["n_layers"]):
                q, s = quantize_weights(w[name][l], gs)
                rows, cols = w[name][l].shape
                mats.append((q.reshape(rows, cols), s.reshape(rows, cols // gs)))
            self.q[name] = mats
        q, s = quantize_weights(w["wcls"], gs)
        vocab, dim = w["wcls"].shape
        self.q["wcls"] = (q.reshape(vocab, dim), s.reshape(vocab, dim // gs))
        q, s = quantize_weights(w["token_embedding"], gs)
        self.embedding = (q.reshape(-1, gs).astype(np.float32) * s[:, None]).reshape(vocab, dim)

    def mm(self, name, l, x):
        wq, ws = self.q[name][l] if l is not None else self.q[name]
        xq, xs = quantize_q8(np.asarray(x, np.float32), self.gs)
        return matmul_q8(xq, xs, wq, ws, self.gs).astype(np.float64)

    def embed(self, token):
        return self.embedding[token].astype(np.float64)
