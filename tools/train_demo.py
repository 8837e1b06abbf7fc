#!/usr/bin/env python3
"""Train the bundled demo model from scratch (CPU, fixed seed), then convert it with export.py hf.

    pip install ".[test,hf]"
    python tools/train_demo.py                     # writes demo/model.bin and demo/tok512.bin

1. A corpus from tools/story_grammar.py (training and held-out stories from different seeds).
2. A sentencepiece BPE vocabulary with Llama 2's settings, exported by tokenizer.py.
3. A small transformers LlamaForCausalLM trained with AdamW; train and held-out loss printed.
4. export.py hf turns the saved model into a llama2.c checkpoint (the same converter users run).
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import story_grammar  # noqa: E402

SHAPE = dict(hidden_size=144, intermediate_size=384, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=256)
VOCAB = 512


def train_tokenizer(texts, workdir):
    import sentencepiece as spm
    prefix = os.path.join(workdir, "tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=VOCAB, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2, minloglevel=2, max_sentence_length=8192)
    return prefix + ".model"


def encode_all(sp_path, texts):
    """One stream: BOS before every story, as run.py's prompt encoding starts with BOS."""
    import numpy as np
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    ids = []
    for ids_one in sp.encode(texts):
        ids.append(1)
        ids.extend(ids_one)
    return np.array(ids, dtype=np.int64)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "demo"))
    ap.add_argument("--stories", type=int, default=40000)
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--minutes", type=float, default=28.0, help="stop early when training runs this long")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)

    import numpy as np
    import torch
    import transformers

    torch.manual_seed(a.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    t_start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="demo-train-")
    train_texts = story_grammar.stories(a.stories, seed=a.seed)
    heldout_texts = story_grammar.stories(1000, seed=a.seed + 1)
    sp_path = train_tokenizer(train_texts, work)
    train = encode_all(sp_path, train_texts)
    heldout = encode_all(sp_path, heldout_texts)
    print(f"corpus: {len(train_texts)} training stories ({train.size} tokens), {len(heldout_texts)} held-out "
          f"({heldout.size} tokens); vocabulary {VOCAB} pieces", flush=True)

    cfg = transformers.LlamaConfig(vocab_size=VOCAB, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                   bos_token_id=1, eos_token_id=2, **SHAPE)
    model = transformers.LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, {SHAPE}", flush=True)
    seq = SHAPE["max_position_embeddings"]
    rng = np.random.default_rng(a.seed)

    def batch(data, n):
        starts = rng.integers(0, data.size - seq - 1, n)
        x = np.stack([data[s:s + seq + 1] for s in starts])
        return torch.from_numpy(x)

    def loss_of(x):
        """Mean next-token cross-entropy over the windows in x (batch, seq + 1)."""
        logits = model(input_ids=x[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))

    @torch.no_grad()
    def heldout_loss():
        model.eval()
        windows = heldout[:(heldout.size - 1) // seq * seq + 1]
        total, count = 0.0, 0
        for s in range(0, windows.size - 1, seq * 16):
            chunk = [windows[i:i + seq + 1] for i in range(s, min(s + seq * 16, windows.size - seq), seq)]
            if not chunk:
                break
            x = torch.from_numpy(np.stack(chunk))
            total += loss_of(x).item() * len(chunk)
            count += len(chunk)
        model.train()
        return total / count

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = 50
    t_train = time.perf_counter()
    step = 0
    for step in range(1, a.steps + 1):
        lr = a.lr * min(1.0, step / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_of(batch(train, a.batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        elapsed = time.perf_counter() - t_train
        if step % 25 == 0 or step == 1:
            print(f"step {step}/{a.steps}  train loss {loss.item():.4f}  lr {lr:.2e}  {elapsed:.0f} s", flush=True)
        if step % 200 == 0:
            print(f"step {step}  held-out loss {heldout_loss():.4f}", flush=True)
        if elapsed > a.minutes * 60:
            print(f"time limit: stopping after {step} steps", flush=True)
            break
    train_minutes = (time.perf_counter() - t_train) / 60
    print(f"final: train loss {loss.item():.4f} (last batch), held-out loss {heldout_loss():.4f}, "
          f"{step} steps in {train_minutes:.1f} min", flush=True)

    hf_dir = os.path.join(work, "hf")
    model.save_pretrained(hf_dir)
    os.replace(sp_path, os.path.join(hf_dir, "tokenizer.model"))
    os.makedirs(a.out, exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "export.py"), "hf", hf_dir, os.path.join(a.out, "model.bin"),
           "--version", "1"] + (["--force"] if a.force else [])
    subprocess.run(cmd, check=True)
    # export.py names the vocabulary tokenizer.bin; the demo's is tok512.bin, like stories260K's
    os.replace(os.path.join(a.out, "tokenizer.bin"), os.path.join(a.out, "tok512.bin"))
    print(f"total time {(time.perf_counter() - t_start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
