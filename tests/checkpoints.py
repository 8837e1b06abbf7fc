"""Random checkpoints in llama2.c's formats, written independently of model.py."""

import struct

import numpy as np

MAGIC = 0x616B3432


def random_weights(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len,
                   shared=True, seed=0, scale=0.3):
    """A dict of float32 arrays with the shapes of llama2.c's checkpoint tensors (stacked over layers)."""
    rng = np.random.default_rng(seed)
    head = dim // n_heads
    kv = head * n_kv_heads
    L = n_layers

    def mat(*shape):
        fan_in = shape[-1]
        return (rng.standard_normal(shape) * scale / np.sqrt(fan_in) * 3).astype(np.float32)

    w = {
        "token_embedding": rng.standard_normal((vocab_size, dim)).astype(np.float32),
        "rms_att": (1 + 0.2 * rng.standard_normal((L, dim))).astype(np.float32),
        "rms_ffn": (1 + 0.2 * rng.standard_normal((L, dim))).astype(np.float32),
        "rms_final": (1 + 0.2 * rng.standard_normal(dim)).astype(np.float32),
        "wq": mat(L, dim, dim), "wk": mat(L, kv, dim), "wv": mat(L, kv, dim), "wo": mat(L, dim, dim),
        "w1": mat(L, hidden_dim, dim), "w2": mat(L, dim, hidden_dim), "w3": mat(L, hidden_dim, dim),
    }
    w["wcls"] = w["token_embedding"] if shared else mat(vocab_size, dim)
    w["config"] = dict(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, vocab_size=vocab_size, seq_len=seq_len)
    w["shared"] = shared
    return w


def _header_ints(c):
    return [c["dim"], c["hidden_dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"],
            c["vocab_size"], c["seq_len"]]


def quantize_groups(a, gs):
    """(int8 values, float32 scales) of a tensor in groups of gs over its flat index."""
    g = np.asarray(a, np.float32).reshape(-1, gs)
    scale = (np.abs(g).max(axis=1) / np.float32(127)).astype(np.float32)
    q = np.rint(g / np.where(scale == 0, 1, scale)[:, None]).astype(np.int8)
    return q.reshape(-1), scale


def write_checkpoint(path, w, version=0, group_size=None):
    """Write w (from random_weights) as format version 0, 1 or 2 (int8 in groups of group_size)."""
    c = w["config"]
    ints = _header_ints(c)
    with open(path, "wb") as f:
        if version == 0:
            if not w["shared"]:
                ints[5] = -ints[5]
            f.write(struct.pack("<7i", *ints))
            order = ["token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn",
                     "w1", "w2", "w3", "rms_final"]
            for name in order:
                f.write(w[name].astype("<f4").tobytes())
            head = c["dim"] // c["n_heads"]
            rope = np.zeros(c["seq_len"] * head // 2, "<f4")  # unused by the reference
            f.write(rope.tobytes())
            f.write(rope.tobytes())
        elif version == 1:
            hdr = struct.pack("<Ii7iB", MAGIC, 1, *ints, 1 if w["shared"] else 0)
            f.write(hdr + b"\0" * (256 - len(hdr)))
            order = ["rms_att", "rms_ffn", "rms_final", "token_embedding", "wq", "wk", "wv", "wo",
                     "w1", "w2", "w3"]
            for name in order:
                f.write(w[name].astype("<f4").tobytes())
        elif version == 2:
            hdr = struct.pack("<Ii7iBi", MAGIC, 2, *ints, 1 if w["shared"] else 0, group_size)
            f.write(hdr + b"\0" * (256 - len(hdr)))
            for name in ["rms_att", "rms_ffn", "rms_final"]:
                f.write(w[name].astype("<f4").tobytes())
            tensors = [w["token_embedding"]] + [w[n][l] for n in ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]
                                                for l in range(c["n_layers"])]
            if not w["shared"]:
                tensors.append(w["wcls"])
            for t in tensors:
                q, s = quantize_groups(t, group_size)
                f.write(q.tobytes() + s.astype("<f4").tobytes())
            return path
        else:
            raise ValueError(version)
        if not w["shared"]:
            f.write(w["wcls"].astype("<f4").tobytes())
    return path


# ----------------------------------------------------------------------------
# a synthetic tokenizer.bin of any size (no sentencepiece needed)

_WORDS = ("the a and to was he she it of in on they day one time there little said with "
          "her his big dog cat ball tree sun happy play friend park mom dad girl boy "
          "once upon saw went very had not but you what look we red box fun like").split()


def tokenizer_pieces(vocab_size):
    """(pieces, scores) laid out like Llama 2's: specials, 256 byte tokens, then merges."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % b for b in range(256)]
    merges = [b" "] + [bytes([c]) for c in range(33, 127)] + ["é".encode(), "日".encode()]
    for word in _WORDS:
        for k in range(2, len(word) + 1):  # every prefix, so BPE can build the word up
            merges.append(b" " + word[:k].encode())
            merges.append(word[:k].encode())
    merges += [b"  ", b"   ", b"\n", b", ", b". "]
    seen, unique = set(pieces), []
    for m in merges:
        if m not in seen:
            seen.add(m)
            unique.append(m)
    i = 0
    while len(pieces) + len(unique) < vocab_size:  # filler pieces that never match
        unique.append(b"<fill%d>" % i)
        i += 1
    pieces += unique[:vocab_size - len(pieces)]
    # byte tokens and specials score 0, merges decrease like sentencepiece's -rank
    scores = [0.0] * 259 + [-float(k) for k in range(len(pieces) - 259)]
    return pieces, scores


def write_tokenizer(path, vocab_size):
    pieces, scores = tokenizer_pieces(vocab_size)
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for p, s in zip(pieces, scores):
            f.write(struct.pack("<fi", s, len(p)) + p)
    return path


def read_v0(path):
    """A version-0 file as a random_weights-style dict (independent of model.py's reader)."""
    data = open(path, "rb").read()
    dim, hidden, L, heads, kv_heads, vocab, seq = struct.unpack_from("<7i", data, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // heads
    kv = head * kv_heads
    floats = np.frombuffer(data, "<f4", offset=28)
    shapes = [("token_embedding", (vocab, dim)), ("rms_att", (L, dim)), ("wq", (L, dim, dim)),
              ("wk", (L, kv, dim)), ("wv", (L, kv, dim)), ("wo", (L, dim, dim)), ("rms_ffn", (L, dim)),
              ("w1", (L, hidden, dim)), ("w2", (L, dim, hidden)), ("w3", (L, hidden, dim)),
              ("rms_final", (dim,)), ("rope", (2 * seq * head // 2,))]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    w, off = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        w[name] = floats[off:off + n].reshape(shape)
        off += n
    assert off == floats.size, "file size does not match its header"
    if shared:
        w["wcls"] = w["token_embedding"]
    w["config"] = dict(dim=dim, hidden_dim=hidden, n_layers=L, n_heads=heads, n_kv_heads=kv_heads,
                       vocab_size=vocab, seq_len=seq)
    w["shared"] = shared
    return w
