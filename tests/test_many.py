"""Many stories at once: --samples, --jsonl, --prompts/--out (resumable), --utf8."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from checkpoints import random_weights, write_checkpoint, write_tokenizer
from conftest import HANG_TIMEOUT, ROOT

RUN = os.path.join(ROOT, "run.py")
DEMO = os.path.join(ROOT, "demo", "model.bin")
DEMO_TOK = os.path.join(ROOT, "demo", "tok512.bin")
VOCAB = 400


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    w = random_weights(32, 64, 2, 4, 2, VOCAB, 64, shared=False, seed=4, scale=0.1)
    return {"model": str(write_checkpoint(d / "model.bin", w)), "tok": str(write_tokenizer(d / "tok.bin", VOCAB)),
            "q8": str(write_checkpoint(d / "q8.bin", w, version=2, group_size=32)), "dir": d}


def run_py(*args, stdin=b"", env=None):
    r = subprocess.run([sys.executable, RUN, *map(str, args)], input=stdin, capture_output=True, timeout=HANG_TIMEOUT,
                       env=dict(os.environ, **(env or {})))
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


MODES = {"strict": ["--no-fastmath", "--threads", "1"], "fast-2": ["--threads", "2"], "fast-1": ["--threads", "1"]}


# ---- --samples -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["strict", "fast-2"])
@pytest.mark.parametrize("kind", ["model", "q8"])
def test_each_sample_is_what_its_seed_prints_alone(files, mode, kind):
    args = [files[kind], "-z", files["tok"], "-n", "60", "-t", "0.9", "-i", "the dog saw", *MODES[mode]]
    rc, together, err = run_py(*args, "--samples", "4", "-s", "10")
    assert rc == 0, err
    alone = []
    for i in range(4):
        rc, out, err1 = run_py(*args, "-s", str(10 + i))
        assert rc == 0, err1
        alone.append(out)
    assert together == b"\n".join(alone)  # in order, each whole, a blank line between
    assert [line for line in err.splitlines() if line.startswith("sample ")][2].startswith("sample 3/4 (seed 12)")


@pytest.mark.parametrize("how", ["reencode", "kshift"])
def test_samples_past_seq_len_shift_as_each_would_alone(files, how):
    args = [files["model"], "-z", files["tok"], "-n", "150", "-i", "the dog saw", f"--context-shift={how}",
            *MODES["strict"]]
    rc, together, err = run_py(*args, "--samples", "3", "-s", "20")
    assert rc == 0, err
    alone = [run_py(*args, "-s", str(20 + i)) for i in range(3)]
    assert together == b"\n".join(out for _, out, _ in alone)
    assert any("context shifts" in e for _, _, e in alone)  # past the 64 positions


def test_fast_samples_do_not_depend_on_threads(files):
    args = [files["model"], "-z", files["tok"], "-n", "64", "--samples", "5", "-s", "3"]
    outs = {run_py(*args, "--threads", t)[1] for t in ("1", "2")}
    assert len(outs) == 1


def test_jsonl_records(files):
    from tokenizer import Tokenizer
    rc, out, err = run_py(files["model"], "-z", files["tok"], "-n", "30", "--samples", "3", "-s", "4", "--jsonl",
                          "-i", "the cat", *MODES["strict"])
    assert rc == 0, err
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert [r["sample"] for r in records] == [0, 1, 2] and [r["seed"] for r in records] == [4, 5, 6]
    n_prompt = len(Tokenizer(files["tok"], VOCAB).encode("the cat"))
    for r in records:
        assert r["prompt"] == "the cat" and set(r) == {"sample", "prompt", "seed", "text", "tokens", "stop", "tok_s"}
        assert r["stop"] in ("steps", "bos") and (r["stop"] == "bos" or r["tokens"] == 30 - n_prompt + 1)
        # the record's text is the continuation the single run prints after the prompt (as UTF-8)
        rc, alone, _ = run_py(files["model"], "-z", files["tok"], "-n", "30", "-s", r["seed"], "-i", "the cat",
                              "--utf8", *MODES["strict"])
        assert alone == ("the cat" + r["text"] + "\n").encode()


def test_stop_at_seq_len_is_named(files):
    rc, out, err = run_py(files["model"], "-z", files["tok"], "-n", "0", "--samples", "2", "--jsonl", "-s", "1")
    assert rc == 0, err
    assert {json.loads(line)["stop"] for line in out.decode().splitlines()} <= {"seq_len", "bos"}


# ---- --prompts / --out -----------------------------------------------------------------

def _prompts(path, n, seed=1):
    rng = random.Random(seed)
    words = "the a dog cat girl boy park ball tree sun happy sad ran saw big little".split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(n)) + "\n")
    return path


def test_bulk_records_are_the_samples_of_every_line(files, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "the dog"}\n\n{"prompt": "a cat", "seed": 100}\n')
    out = tmp_path / "out.jsonl"
    rc, _, err = run_py(files["model"], "-z", files["tok"], "-n", "40", "-s", "7", "--samples", "2",
                        "--prompts", prompts, "--out", out, *MODES["strict"])
    assert rc == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r["sample"], r["seed"]) for r in records] == [(1, 0, 7), (1, 1, 8), (3, 0, 100), (3, 1, 101)]
    for r in records:  # each is what the single run with its seed prints
        rc, alone, _ = run_py(files["model"], "-z", files["tok"], "-n", "40", "-s", r["seed"], "-i", r["prompt"],
                              "--utf8", *MODES["strict"])
        assert alone == (r["prompt"] + r["text"] + "\n").encode()
    assert "2/4" in err or "4/4" in err  # the progress bar


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_an_interrupted_bulk_run_resumes_to_the_same_file(tmp_path, how):
    prompts = _prompts(tmp_path / "p.txt", 150)
    args = [DEMO, "-z", DEMO_TOK, "-s", "7", "--samples", "2", "--prompts", prompts, "--threads", "1"]
    full = tmp_path / "full.jsonl"
    assert run_py(*args, "--out", full)[0] == 0
    part = tmp_path / "part.jsonl"
    p = subprocess.Popen([sys.executable, RUN, *map(str, args), "--out", str(part)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and (not part.exists() or part.read_bytes().count(b"\n") < 20):
        time.sleep(0.02)
    p.send_signal(getattr(signal, how))
    _, err = p.communicate(timeout=120)
    done = part.read_bytes()
    assert 20 <= done.count(b"\n") < 300, "the run was not stopped in the middle"
    assert b"Traceback" not in err
    if how == "SIGINT":
        assert p.returncode == 130 and done.endswith(b"\n")  # Ctrl-C: every record whole, no half line
    rc, _, err = run_py(*args, "--out", part)
    assert rc == 0, err
    assert "resuming" in err
    assert part.read_bytes() == full.read_bytes()


def test_a_record_cut_short_is_written_again(files, tmp_path):
    prompts = _prompts(tmp_path / "p.txt", 4)
    args = [files["model"], "-z", files["tok"], "-n", "20", "-s", "5", "--prompts", prompts, *MODES["strict"]]
    full = tmp_path / "full.jsonl"
    assert run_py(*args, "--out", full)[0] == 0
    lines = full.read_bytes().split(b"\n")
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][:17])  # killed while writing the third
    assert run_py(*args, "--out", part)[0] == 0
    assert part.read_bytes() == full.read_bytes()


def test_bad_lines_stop_the_run_or_are_skipped_by_number(files, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b'{"prompt": "the dog"}\n{"prompt": broken\n{"text": "no prompt"}\n'
                        b'{"prompt": "caf\xc3"}\n{"prompt": "a cat", "seed": "x"}\n{"prompt": "ok"}\n')
    out = tmp_path / "out.jsonl"
    rc, _, err = run_py(files["model"], "-z", files["tok"], "-n", "10", "-s", "1", "--prompts", prompts,
                        "--out", out)
    assert rc != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "p.jsonl:2: invalid JSON" in err and "4 bad lines" in err and not out.exists()
    rc, _, err = run_py(files["model"], "-z", files["tok"], "-n", "10", "-s", "1", "--prompts", prompts,
                        "--out", out, "--on-error", "skip")
    assert rc == 0, err
    for line, what in [(2, "invalid JSON"), (3, 'no "prompt"'), (4, "not valid UTF-8"), (5, '"seed" ')]:
        assert f"p.jsonl:{line}: skipped: {what}" in err
    assert [json.loads(x)["line"] for x in out.read_text().splitlines()] == [1, 6]


def test_another_jobs_file_or_a_users_file_is_never_written(files, tmp_path):
    prompts = _prompts(tmp_path / "p.txt", 3)
    args = [files["model"], "-z", files["tok"], "-n", "10", "--prompts", prompts, *MODES["strict"]]
    out = tmp_path / "out.jsonl"
    assert run_py(*args, "-s", "1", "--out", out)[0] == 0
    before = out.read_bytes()
    rc, _, err = run_py(*args, "-s", "2", "--out", out)  # another seed: another job
    assert rc != 0 and "another job" in err and "-s 1" in err and out.read_bytes() == before
    precious = tmp_path / "notes.txt"
    for content in (b"my notes\nmore\n", b"no newline at the end"):
        precious.write_bytes(content)
        rc, _, err = run_py(*args, "-s", "1", "--out", precious)
        assert rc != 0 and "Traceback" not in err and precious.read_bytes() == content


def test_prompts_flags_are_checked(files, tmp_path):
    for args, needle in [(["--prompts", "x.txt"], "--out"), (["--samples", "0"], "--samples"),
                         (["--prompts", "x", "--out", "y", "-i", "hi"], "-i"),
                         (["--samples", "2", "-m", "chat"], "chat"),
                         (["--on-error", "maybe"], "--on-error"), (["--ray", "auto"], "--prompts")]:
        rc, _, err = run_py(files["model"], "-z", files["tok"], *args)
        assert rc != 0 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---- UTF-8 ---------------------------------------------------------------------------

TEXT = "Lily saw 日本の桜 and 🦙 in the café"


def test_utf8_round_trips_characters_outside_the_vocabulary():
    """The demo's 512 pieces have no CJK or emoji: they are byte tokens, which run.c's printing drops."""
    from tokenizer import Tokenizer
    n = len(Tokenizer(DEMO_TOK, 512).encode(TEXT)) - 1  # steps that print the prompt and nothing more
    rc, out, err = run_py(DEMO, "-z", DEMO_TOK, "-i", TEXT, "-n", n, "--utf8")
    assert rc == 0, err
    assert out.decode("utf-8") == TEXT + "\n"
    rc, plain, _ = run_py(DEMO, "-z", DEMO_TOK, "-i", TEXT, "-n", n)
    assert plain == "Lily saw  and  in the caf\n".encode()  # run.c's output: the characters vanish


def test_jsonl_text_is_always_decoded():
    rc, out, err = run_py(DEMO, "-z", DEMO_TOK, "-i", "Once upon a time", "-n", "60", "--jsonl", "--samples", "2",
                          "-s", "3")
    assert rc == 0, err
    for line in out.decode("utf-8").splitlines():
        assert json.loads(line)["text"]


def test_the_utf8_stream_is_valid_at_every_flush():
    """Random byte pieces, split characters and invalid bytes: every chunk written decodes on its own."""
    from tokenizer import TextStream
    rng = random.Random(0)
    text = (TEXT + " ¿Qué tal? Ωμέγα 😀👍🏽").encode()
    for trial in range(200):
        data = bytearray(text)
        if trial % 3 == 0:
            data.insert(rng.randrange(len(data)), rng.choice([0x80, 0xC3, 0xE6, 0xF0, 0xFF]))  # an invalid byte
        pieces, i = [], 0
        while i < len(data):
            k = rng.randint(1, 4)
            pieces.append(bytes(data[i:i + k]))
            i += k
        s = TextStream(utf8=True)
        chunks = [s.push(p) for p in pieces] + [s.finish()]
        for c in chunks:
            c.decode("utf-8")  # raises if a flush were not valid UTF-8 by itself
        assert b"".join(chunks).decode("utf-8") == bytes(data).decode("utf-8", "replace")
        assert s.text == bytes(data).decode("utf-8", "replace")


# ---- Ray ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_ray_actors_write_the_in_process_records(tmp_path, capsys):
    ray = pytest.importorskip("ray", reason="the Ray runner needs ray: pip install \".[ray]\"")
    import run
    prompts = _prompts(tmp_path / "p.txt", 12)
    args = [DEMO, "-z", DEMO_TOK, "-s", "11", "--samples", "2", "-n", "120", "--prompts", str(prompts)]
    here = tmp_path / "here.jsonl"
    rc, _, err = run_py(*args, "--out", here, "--threads", "2")
    assert rc == 0, err
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        there = tmp_path / "ray.jsonl"
        assert run.main([*args, "--out", str(there), "--ray", "auto", "--fastmath"]) == 0
    finally:
        ray.shutdown()
    assert "2 actors of 1 CPU" in capsys.readouterr().err
    assert there.read_bytes() == here.read_bytes()
