#!/usr/bin/env python3
"""Convert checkpoints between llama2.c's formats, and from Hugging Face Llama models.

    python export.py quantize IN.bin OUT.bin [--group-size 64]   fp32 (v0/v1) -> int8 (v2)
    python export.py v1 IN.bin OUT.bin                           legacy v0 -> v1
    python export.py v0 IN.bin OUT.bin                           v1 -> legacy v0
    python export.py hf DIR OUT.bin [--version 0|1|2] [--group-size 64]

All in NumPy, no numba and no PyTorch (the hf command reads safetensors in
NumPy mode). Every command refuses to overwrite an existing output without
--force (and an output that is its input, even with --force), and writes
under a temporary name in the output's directory, renamed at the end: an
interrupted or failed export (Ctrl-C, SIGTERM, a full disk) leaves nothing
behind.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

import checkpoint
from checkpoint import AtomicWrite, CheckpointError, Config, OutputError


class ExportError(Exception):
    """A conversion that cannot be done; the message names the file."""


# ----------------------------------------------------------------------------
# weights in memory: a dict of float32 arrays with checkpoint.fp32_layout's names

def read_fp32(path):
    """(Config, dict of float32 arrays, shared) from a version 0 or 1 checkpoint."""
    try:
        h, t = checkpoint.read(path)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    if h.version == 2:
        raise ExportError(f"{path} is already int8 (format version 2); export works from fp32 checkpoints")
    return h.config, t, h.shared


class Progress:
    """One line on stderr, rewritten as tensors are written: count, MB and elapsed time."""

    def __init__(self, total_tensors, label):
        self.total, self.done, self.bytes, self.label = total_tensors, 0, 0, label
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def step(self, name, nbytes, note=""):
        self.done += 1
        self.bytes += nbytes
        line = (f"{self.label}: {self.done}/{self.total} tensors, {self.bytes / 1e6:.1f} MB, "
                f"{time.perf_counter() - self.t0:.1f} s {name} {note}")
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif self.done == self.total or self.done % 10 == 0:
            print(line, file=sys.stderr)

    def close(self):
        if self.tty:
            print(file=sys.stderr)


def group_size_for(p, group_size):
    """Halve the group size until it divides dim (llama2.c's backoff) and also hidden_dim.

    runq.c's matmul needs both: w2's rows are hidden_dim long.
    """
    gs = group_size
    while gs > 1 and (p.dim % gs or p.hidden_dim % gs):
        gs //= 2
    if gs != group_size:
        print(f"BACKOFF: reducing group size to {gs} to fit dim {p.dim} and hidden_dim {p.hidden_dim}",
              file=sys.stderr)
    return gs


def write(path, p, w, shared, version, group_size=64, force=False, inputs=()):
    """Write the weights as a version 0, 1 or 2 checkpoint (int8 in groups, backed off to fit)."""
    gs = group_size_for(p, group_size) if version == 2 else 0
    if version < 2:
        count = len(checkpoint.fp32_layout(version, p, shared))
    else:
        count = 3 + len(checkpoint.q8_layout(p, shared))
    progress = Progress(count, f"writing {path}")
    try:
        with AtomicWrite(path, force, inputs) as f:
            worst = checkpoint.write(f, version, p, w, shared, gs, progress.step)
    except OutputError as e:
        raise ExportError(str(e)) from None
    finally:
        progress.close()
    if version == 2:
        print(f"max quantization group error across all weights: {worst[0]:.6f} (in {worst[1]}), group size {gs}",
              file=sys.stderr)


# ----------------------------------------------------------------------------
# Hugging Face Llama checkpoints (config.json + *.safetensors)

def _unpermute(w, n_heads):
    """Undo the row order Hugging Face's conversion gives wq/wk for its rotate-half RoPE.

    HF keeps, per head, all first halves of the rotation pairs then all second
    halves; llama2.c rotates adjacent pairs (2i, 2i+1), Meta's original order.
    """
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def read_hf(directory):
    """(Config, weights dict, shared) of a Hugging Face LlamaForCausalLM directory."""
    cfg_path = os.path.join(directory, "config.json")
    if not os.path.isfile(cfg_path):
        raise ExportError(f"{directory} has no config.json: not a Hugging Face model directory")
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ExportError("export.py hf needs the safetensors package: pip install safetensors") from None
    with open(cfg_path) as f:
        cfg = json.load(f)
    files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
    if not files:
        raise ExportError(f"{directory} has no *.safetensors files (save with safe_serialization=True)")
    sd = {}
    for name in files:
        for k, v in load_file(os.path.join(directory, name)).items():
            sd[k] = v
    if cfg.get("model_type", "llama") != "llama":
        raise ExportError(f"{cfg_path}: model_type {cfg.get('model_type')!r} is not llama")
    rope = dict(cfg.get("rope_parameters") or {})  # transformers 5; older configs say rope_theta/rope_scaling
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if cfg.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ExportError(f"{cfg_path}: RoPE scaling ({cfg.get('rope_scaling') or rope}) is not llama2.c's RoPE")
    if theta != 10000.0:
        raise ExportError(f"{cfg_path}: rope_theta {theta} (llama2.c's RoPE uses 10000)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ExportError(f"{cfg_path}: biases in attention or MLP have no place in llama2.c's format")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ExportError(f"{cfg_path}: hidden_act {cfg['hidden_act']!r} (llama2.c uses SiLU)")
    if cfg.get("head_dim") not in (None, cfg["hidden_size"] // cfg["num_attention_heads"]):
        raise ExportError(f"{cfg_path}: head_dim {cfg['head_dim']} differs from hidden_size / num_attention_heads")
    dim, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    p = Config(dim, cfg["intermediate_size"], cfg["num_hidden_layers"], n_heads, n_kv,
               cfg["vocab_size"], cfg.get("max_position_embeddings", 2048))
    eps = float(cfg.get("rms_norm_eps", 1e-5))
    if abs(eps - 1e-5) > 1e-12:
        print(f"warning: rms_norm_eps {eps} differs from llama2.c's fixed 1e-5", file=sys.stderr)

    def get(key):
        if key not in sd:
            raise ExportError(f"{directory}: tensor {key} missing from the safetensors files")
        return np.asarray(sd[key], np.float32)

    L = p.n_layers
    pre = "model.layers.{}."
    stack = lambda key, fn=lambda a: a: np.stack([fn(get(pre.format(l) + key)) for l in range(L)])  # noqa: E731
    w = {
        "token_embedding_table": get("model.embed_tokens.weight"),
        "rms_att_weight": stack("input_layernorm.weight"),
        "rms_ffn_weight": stack("post_attention_layernorm.weight"),
        "wq": stack("self_attn.q_proj.weight", lambda a: _unpermute(a, n_heads)),
        "wk": stack("self_attn.k_proj.weight", lambda a: _unpermute(a, n_kv)),
        "wv": stack("self_attn.v_proj.weight"),
        "wo": stack("self_attn.o_proj.weight"),
        "w1": stack("mlp.gate_proj.weight"),
        "w2": stack("mlp.down_proj.weight"),
        "w3": stack("mlp.up_proj.weight"),
        "rms_final_weight": get("model.norm.weight"),
    }
    tied = cfg.get("tie_word_embeddings", False) or "lm_head.weight" not in sd
    w["wcls"] = w["token_embedding_table"] if tied else get("lm_head.weight")
    shared = tied or np.array_equal(w["wcls"], w["token_embedding_table"])
    return p, w, shared


# ----------------------------------------------------------------------------
# command line

def main(argv):
    ap = argparse.ArgumentParser(prog="export.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize", help="fp32 checkpoint (v0 or v1) to int8 (v2)")
    q.add_argument("input")
    q.add_argument("output")
    q.add_argument("--group-size", type=int, default=64)
    for version in ("v0", "v1"):
        c = sub.add_parser(version, help=f"fp32 checkpoint to format {version}")
        c.add_argument("input")
        c.add_argument("output")
    h = sub.add_parser("hf", help="Hugging Face Llama directory to a llama2.c checkpoint")
    h.add_argument("input", metavar="DIR")
    h.add_argument("output")
    h.add_argument("--version", type=int, choices=[0, 1, 2], default=1)
    h.add_argument("--group-size", type=int, default=64)
    for c in (q, h) + tuple(sub.choices[v] for v in ("v0", "v1")):
        c.add_argument("--force", action="store_true", help="overwrite an existing output")
    a = ap.parse_args(argv)
    try:
        if getattr(a, "group_size", 64) < 1:
            raise ExportError(f"--group-size must be positive, got {a.group_size}")
        if a.cmd == "hf":
            if not os.path.isdir(a.input):
                raise ExportError(f"{a.input} is not a directory")
            p, w, shared = read_hf(a.input)
            write(a.output, p, w, shared, a.version, a.group_size, a.force)
            tok = os.path.join(a.input, "tokenizer.model")
            if os.path.isfile(tok):
                import tokenizer
                out = os.path.join(os.path.dirname(os.path.abspath(a.output)), "tokenizer.bin")
                try:
                    tokenizer.export(tok, out, force=a.force)
                    print(f"wrote {out}", file=sys.stderr)
                except tokenizer.TokenizerError as e:
                    raise ExportError(str(e)) from None
        else:
            p, w, shared = read_fp32(a.input)
            version = {"quantize": 2, "v0": 0, "v1": 1}[a.cmd]
            write(a.output, p, w, shared, version, getattr(a, "group_size", 64), a.force, inputs=[a.input])
    except ExportError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))  # Ctrl-C: quiet, the temporary file removed
    sys.exit(main(sys.argv[1:]))
