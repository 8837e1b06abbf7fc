"""The bundled demo model, `run.py` with no checkpoint, and `--eval` against independent losses."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import model
from checkpoints import random_weights, write_checkpoint, write_tokenizer
from conftest import HANG_TIMEOUT, ROOT
from reference import NumpyModel

RUN = os.path.join(ROOT, "run.py")
DEMO = os.path.join(ROOT, "demo")
need_demo = pytest.mark.skipif(not os.path.exists(os.path.join(DEMO, "model.bin")), reason="no demo model")
NLL = re.compile(rb"(\d+) tokens, average negative log-likelihood ([0-9.]+) nats/token, perplexity ([0-9.]+)")


def run_py(*args, cwd=None):
    r = subprocess.run([sys.executable, RUN, *map(str, args), "--no-fastmath", "--threads", "1"],
                       capture_output=True, timeout=HANG_TIMEOUT, cwd=cwd)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def heldout_text(n=12, seed=4242):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import story_grammar
    return "\n\n".join(story_grammar.stories(n, seed)) + "\n"


@need_demo
def test_demo_files_are_small_and_load():
    size = sum(os.path.getsize(os.path.join(DEMO, f)) for f in ("model.bin", "tok512.bin"))
    assert size <= 8 * 2**20
    t = model.Transformer(os.path.join(DEMO, "model.bin"))
    assert t.version == 1 and t.config.vocab_size == 512


@need_demo
def test_no_checkpoint_runs_the_demo_and_tells_a_story(tmp_path):
    rc, out, err = run_py("-s", "7", cwd=tmp_path)  # from anywhere: the demo's paths do not depend on cwd
    assert rc == 0, err
    assert "demo model" in err and "achieved tok/s" in err
    words = re.findall(rb"[A-Za-z]+", out)
    assert len(words) > 60
    common = {b"the", b"a", b"was", b"and", b"to", b"said", b"her", b"his", b"they", b"She", b"He", b"They"}
    assert sum(w in common for w in words) > len(words) // 8  # English function words, not salad
    assert out.count(b".") > 5


def _nll(out):
    m = NLL.search(out)
    assert m, out
    return int(m.group(1)), float(m.group(2)), float(m.group(3))


def test_eval_matches_an_independent_numpy_loss(tmp_path):
    vocab = 300
    w = random_weights(32, 64, 2, 4, 2, vocab, 16, shared=False, seed=31, scale=0.4)
    ckpt = write_checkpoint(tmp_path / "m.bin", w)
    tok_path = write_tokenizer(tmp_path / "tok.bin", vocab)
    text = "the little dog saw a big red ball. once upon a time the cat was happy! " * 3
    (tmp_path / "text.txt").write_text(text)
    rc, out, err = run_py(ckpt, "-z", tok_path, "--eval", tmp_path / "text.txt")
    assert rc == 0, err
    n, nll, ppl = _nll(out)
    from tokenizer import Tokenizer
    tokens = Tokenizer(str(tok_path), vocab).encode(text)
    seq = w["config"]["seq_len"]
    ref, total = None, 0.0
    for i in range(len(tokens) - 1):  # windows of seq_len inputs, positions restarting at 0
        if i % seq == 0:
            ref = NumpyModel(w)
        logits = ref.forward(tokens[i], i % seq)
        total -= logits[tokens[i + 1]] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
    assert n == len(tokens) - 1 > 2 * seq
    print(f"eval: {nll:.6f} nats/token, NumPy reference {total / n:.6f}")
    assert abs(nll - total / n) < 1e-4
    assert abs(ppl - np.exp(nll)) < 1e-3 * ppl


def test_eval_of_a_missing_file_is_one_line(tmp_path):
    vocab = 300
    ckpt = write_checkpoint(tmp_path / "m.bin", random_weights(32, 64, 1, 4, 4, vocab, 16, seed=1))
    tok_path = write_tokenizer(tmp_path / "tok.bin", vocab)
    rc, out, err = run_py(ckpt, "-z", tok_path, "--eval", tmp_path / "missing.txt")
    assert rc != 0 and "missing.txt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _to_hf(t):
    """transformers LlamaForCausalLM holding a llama2.c checkpoint's weights (q/k rows back in HF order)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    p, w = t.config, t.weights
    shared = w.wcls is w.token_embedding_table
    cfg = transformers.LlamaConfig(vocab_size=p.vocab_size, hidden_size=p.dim, intermediate_size=p.hidden_dim,
                                   num_hidden_layers=p.n_layers, num_attention_heads=p.n_heads,
                                   num_key_value_heads=p.n_kv_heads, max_position_embeddings=p.seq_len,
                                   rms_norm_eps=1e-5, tie_word_embeddings=shared)
    m = transformers.LlamaForCausalLM(cfg).eval()

    def permute(a, heads):  # llama2.c's adjacent RoPE pairs -> HF's rotate-half halves
        rows, cols = a.shape
        return a.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)

    T = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
    sd = {"model.embed_tokens.weight": T(w.token_embedding_table), "model.norm.weight": T(w.rms_final_weight),
          "lm_head.weight": T(w.wcls)}
    for l in range(p.n_layers):
        pre = f"model.layers.{l}."
        sd.update({pre + "input_layernorm.weight": T(w.rms_att_weight[l]),
                   pre + "post_attention_layernorm.weight": T(w.rms_ffn_weight[l]),
                   pre + "self_attn.q_proj.weight": T(permute(w.wq[l], p.n_heads)),
                   pre + "self_attn.k_proj.weight": T(permute(w.wk[l], p.n_kv_heads)),
                   pre + "self_attn.v_proj.weight": T(w.wv[l]), pre + "self_attn.o_proj.weight": T(w.wo[l]),
                   pre + "mlp.gate_proj.weight": T(w.w1[l]), pre + "mlp.down_proj.weight": T(w.w2[l]),
                   pre + "mlp.up_proj.weight": T(w.w3[l])})
    m.load_state_dict(sd, strict=False)
    return m


@need_demo
def test_demo_eval_agrees_with_the_training_framework_loss(tmp_path):
    torch = pytest.importorskip("torch")
    text = heldout_text()
    (tmp_path / "heldout.txt").write_text(text)
    rc, out, err = run_py("--eval", tmp_path / "heldout.txt")
    assert rc == 0, err
    n, nll, _ = _nll(out)
    t = model.Transformer(os.path.join(DEMO, "model.bin"))
    from tokenizer import Tokenizer
    tokens = Tokenizer(os.path.join(DEMO, "tok512.bin"), 512).encode(text)
    hf = _to_hf(t)
    seq = t.config.seq_len
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(tokens) - 1, seq):
            window = torch.tensor(tokens[s:s + seq + 1])[None]
            logits = hf(input_ids=window[:, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
            count += window.shape[1] - 1
    print(f"demo held-out: run.py --eval {nll:.5f} nats/token, transformers {total / count:.5f} over {count} tokens")
    assert count == n
    assert abs(nll - total / count) < 1e-3
