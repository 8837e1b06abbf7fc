"""Generation past seq_len: --context-shift keeps the first tokens, drops the oldest half of the rest, re-encodes
(or with =kshift moves the cache down and rotates its keys)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import model
import run
from checkpoints import random_weights, write_checkpoint, write_tokenizer
from conftest import ROOT

RUN = os.path.join(ROOT, "run.py")
VOCAB = 300


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctx")
    w = random_weights(32, 64, 2, 4, 2, VOCAB, 16, shared=False, seed=21, scale=0.3)
    return {"model": str(write_checkpoint(d / "m.bin", w)), "tok": str(write_tokenizer(d / "tok.bin", VOCAB)),
            "q8": str(write_checkpoint(d / "q.bin", w, version=2, group_size=32))}


def test_after_a_shift_the_logits_are_those_of_a_fresh_run_on_the_kept_tokens(files):
    t = model.Transformer(files["model"], rows=5)
    ctx = run.Context(t, 0, shift=True, keep=3)
    tokens = [(7 * i + 1) % VOCAB for i in range(16)]
    ctx.feed(tokens, logits=None)
    assert ctx.full()
    got = ctx.step(42).copy()  # the 17th token does not fit: shift, then feed it
    kept = tokens[:3] + tokens[3:][13 // 2:]  # the first 3, then the newer half of the other 13
    assert ctx.tokens == kept + [42] and len(ctx.shifts) == 1
    fresh = model.Transformer(files["model"], rows=5)
    fresh.prefill(kept, 0, logits=None)
    want = fresh.forward(42, len(kept))
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


def _rotate64(keys, angle_pos, head_size):
    """Each pair (i, i+1) of every row rotated by -angle_pos * freq(i), in float64."""
    out = keys.astype(np.float64)
    i = np.arange(0, keys.shape[-1], 2)
    freq = 1.0 / 10000.0 ** ((i % head_size) / head_size)
    c, s = np.cos(angle_pos * freq), np.sin(angle_pos * freq)
    k0, k1 = out[..., 0::2].copy(), out[..., 1::2].copy()
    out[..., 0::2] = k0 * c + k1 * s
    out[..., 1::2] = k1 * c - k0 * s
    return out


def test_kshift_moves_the_kept_cache_down_and_rotates_its_keys_by_the_delta(files):
    t = model.Transformer(files["model"], rows=5)
    ctx = run.Context(t, 0, shift="kshift", keep=3)
    tokens = [(5 * i + 2) % VOCAB for i in range(16)]
    ctx.feed(tokens, logits=None)
    before_k, before_v = t.cached_keys(0, 16), t.cached_values(0, 16)
    ctx.make_room()
    drop = 13 // 2
    assert ctx.tokens == tokens[:3] + tokens[3 + drop:] and ctx.pos == 16 - drop
    k, v = t.cached_keys(0, 16 - drop), t.cached_values(0, 16 - drop)
    assert np.array_equal(k[:, :3], before_k[:, :3]) and np.array_equal(v[:, :3], before_v[:, :3])
    assert np.array_equal(v[:, 3:16 - drop], before_v[:, 3 + drop:16])
    want = _rotate64(before_k[:, 3 + drop:16], drop, t.config.head_size)
    maxdiff = float(np.max(np.abs(k[:, 3:16 - drop] - want)))
    print(f"kshift keys vs float64 rotation: maxdiff {maxdiff:.2e}")
    assert maxdiff < 1e-5 * max(1.0, float(np.max(np.abs(want))))


@pytest.mark.parametrize("kind", ["model", "q8"])
def test_with_one_layer_kshift_gives_the_cache_of_a_fresh_run_up_to_rounding(tmp_path, kind):
    """One layer's keys and values depend on the token and its position only, so there the K-shift loses nothing."""
    w = random_weights(32, 64, 1, 4, 2, VOCAB, 16, shared=False, seed=23, scale=0.3)
    path = str(write_checkpoint(tmp_path / "m.bin", w, **({"version": 2, "group_size": 32} if kind == "q8" else {})))
    tokens = [(11 * i + 4) % VOCAB for i in range(16)]
    shifted, fresh = model.Transformer(path, rows=5), model.Transformer(path, rows=5)
    ctx = run.Context(shifted, 0, shift="kshift", keep=2)
    ctx.feed(tokens, logits=None)
    got = ctx.step(9).copy()  # shift, then one more token
    fresh.prefill(ctx.tokens[:-1], 0, logits=None)
    want = fresh.forward(9, len(ctx.tokens) - 1)
    n = len(ctx.tokens)
    assert np.array_equal(shifted.cached_values(0, n), fresh.cached_values(0, n))
    kdiff = float(np.max(np.abs(shifted.cached_keys(0, n) - fresh.cached_keys(0, n))))
    ldiff = float(np.max(np.abs(got - want)))
    print(f"one layer, kshift vs fresh: keys maxdiff {kdiff:.2e}, logits maxdiff {ldiff:.2e}")
    assert kdiff < 1e-5 and ldiff < 1e-4


def _profile(path):
    import json
    with open(path) as f:
        return json.load(f)


def test_without_the_flag_steps_stop_at_seq_len_as_in_run_c(files, tmp_path):
    r = subprocess.run([sys.executable, RUN, files["model"], "-z", files["tok"], "-n", "100", "-s", "2",
                        "--no-fastmath", "--threads", "1", f"--profile=json={tmp_path / 'p.json'}"],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    assert b"context shifts" not in r.stderr
    p = _profile(tmp_path / "p.json")
    assert p["prompt"]["tokens"] + p["generation"]["tokens"] <= 16  # positions 0..seq_len-1 at most


def _shifts(err):
    m = re.search(r"context shifts: (\d+)", err)
    return int(m.group(1)) if m else 0


def expected_shifts(positions, seq_len, keep):
    """How many shifts a run of `positions` forward positions makes, counted the way Context shifts."""
    pos, shifts = 0, 0
    for _ in range(positions):
        if pos == seq_len:
            rest = seq_len - keep
            pos = keep + rest - rest // 2
            shifts += 1
        pos += 1
    return shifts


@pytest.mark.parametrize("kind", ["model", "q8"])
@pytest.mark.parametrize("how", ["--context-shift", "--context-shift=kshift"])
def test_generation_goes_past_seq_len_through_every_shift(files, kind, how, tmp_path):
    for seed in range(3, 9):  # the random model samples BOS now and then, which ends a story early
        r = subprocess.run([sys.executable, RUN, files[kind], "-z", files["tok"], "-n", "100", "-s", str(seed),
                            how, "--keep", "2", "-i", "the dog", f"--profile=json={tmp_path / 'p.json'}"],
                           capture_output=True)
        err = r.stderr.decode()
        assert r.returncode == 0, err
        p = _profile(tmp_path / "p.json")
        positions = p["prompt"]["tokens"] + p["generation"]["tokens"]  # fewer than 100 if it sampled BOS
        assert _shifts(err) == expected_shifts(positions, 16, 2)
        if positions > 40:
            break
    assert positions > 40 and _shifts(err) > 0


def test_chat_keeps_a_long_conversation_going(files):
    stdin = b"be brief\n" + b"hello\n" * 30
    outs = {}
    for flags in ([], ["--context-shift"]):
        r = subprocess.run([sys.executable, RUN, files["model"], "-z", files["tok"], "-m", "chat", "-n", "400",
                            "-s", "5", "--no-fastmath", "--threads", "1", *flags], input=stdin, capture_output=True)
        assert r.returncode == 0, r.stderr
        outs[bool(flags)] = r.stdout
    # run.c's chat stops at seq_len (16 positions); with shifts it runs its 400 steps
    assert len(outs[True]) > len(outs[False]) + 100
    assert outs[True].startswith(outs[False].rstrip(b"\n"))


def test_keep_without_the_flag_or_too_large_is_refused(files):
    for args, needle in [(["--keep", "3"], "--context-shift"), (["--context-shift", "--keep", "12"], "half"),
                         (["--context-shift=rotate"], "kshift")]:
        r = subprocess.run([sys.executable, RUN, files["model"], "-z", files["tok"], *args], capture_output=True,
                           text=True)
        assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_eval_through_one_shifting_context_matches_a_hand_run(files, tmp_path):
    """--eval --context-shift: one continuous pass; the NLL equals feeding the same tokens by hand."""
    text = "the little dog saw a big red ball. once upon a time the cat was happy! " * 2
    (tmp_path / "t.txt").write_text(text)
    r = subprocess.run([sys.executable, RUN, files["model"], "-z", files["tok"], "--eval", tmp_path / "t.txt",
                        "--context-shift", "--no-fastmath", "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    nll = float(re.search(r"likelihood ([0-9.]+)", r.stdout).group(1))
    tokens = run.Tokenizer(files["tok"], VOCAB).encode(text)
    t = model.Transformer(files["model"], rows=5)
    ctx = run.Context(t, 0, shift=True, keep=1)
    total = 0.0
    for i in range(len(tokens) - 1):
        logits = ctx.step(tokens[i]).astype(np.float64)
        total -= logits[tokens[i + 1]] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
    assert len(tokens) > 3 * 16 and len(ctx.shifts) > 2
    assert abs(nll - total / (len(tokens) - 1)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("how", ["reencode", "kshift"])
def test_a_2000_token_story_on_a_256_position_model_runs_to_the_end(tmp_path, kind, how):
    """The random 15M shape (BOS damped, so it never stops early), 2000 steps, every shift on the way."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import make_model
    path = str(tmp_path / "r15.bin")
    make_model.write_random(path, "15M")
    if kind == "int8":
        q = str(tmp_path / "r15_q80.bin")
        assert subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "quantize", path, q],
                              capture_output=True).returncode == 0
        path = q
    tok = write_tokenizer(tmp_path / "tok.bin", 32000)
    r = subprocess.run([sys.executable, RUN, path, "-z", str(tok), "-n", "2000", "-s", "1", f"--context-shift={how}",
                        f"--profile=json={tmp_path / 'p.json'}"], capture_output=True)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    prof = _profile(tmp_path / "p.json")
    assert prof["generation"]["tokens"] == 1999  # every step after the first: nothing stopped it early
    assert _shifts(err) == expected_shifts(2000, 256, 1)
