"""The llama2.c tokenizer: tokenizer.bin reading, BPE encode, decode.

    python tokenizer.py export MODEL.model [-o OUT.bin] [--force]

turns a sentencepiece model into the tokenizer.bin format run.py reads.

Encoding follows run.c's `encode` exactly (dummy prefix, code-point lookup with
byte fallback, greedy highest-score merges with the leftmost pair winning
ties); it keeps the candidate merges in a heap instead of rescanning every
pair, which gives the same merges in O(n log n).
"""

import heapq
import os
import struct
import sys

from checkpoint import AtomicWrite, OutputError

BOS, EOS = 1, 2


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message names the file."""


def _c_string(piece):
    """The piece as C sees it: strcmp and printf stop at the first NUL byte."""
    nul = piece.find(b"\0")
    return piece if nul < 0 else piece[:nul]


def _parse_byte_piece(piece):
    """The byte of a '<0xHH>' piece, as sscanf(piece, "<0x%02hhX>") reads it, else None."""
    if not piece.startswith(b"<0x"):
        return None
    rest = piece[3:].lstrip(b" \t\n\v\f\r")  # %X skips leading white space
    sign = 1
    if rest[:1] in (b"+", b"-"):
        sign, rest = (-1 if rest[:1] == b"-" else 1), rest[1:]
        digits = rest[:1]  # the sign used one of the field's two characters
    else:
        digits = rest[:2]
    n = 0
    for c in digits:
        if chr(c) not in "0123456789abcdefABCDEF":
            break
        n += 1
    if n == 0:
        return None
    return (sign * int(digits[:n], 16)) & 0xFF


def printable(piece):
    """What safe_printf writes: nothing for a lone byte that is neither printable ASCII nor white space."""
    if len(piece) == 1:
        b = piece[0]
        if not (0x20 <= b <= 0x7E or b in b"\t\n\v\f\r"):
            return b""
    return piece


class TextStream:
    """The pieces of a generation turned into what is written, and into the text it spells.

    Default (run.c's output): each piece as safe_printf prints it, so a byte
    token that is not printable ASCII vanishes, and a character outside the
    vocabulary with it. utf8=True: the bytes themselves, with an incomplete
    UTF-8 sequence held back until it completes and an invalid one written as
    U+FFFD, so everything written is valid UTF-8 at every flush. In both
    modes `text` is the correctly decoded string (invalid bytes as U+FFFD).
    """

    def __init__(self, utf8=False):
        import codecs
        self.utf8 = utf8
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._text = codecs.getincrementaldecoder("utf-8")("replace")
        self.parts = []

    def push(self, piece):
        """Bytes to write for the next piece."""
        if len(piece) == 1 and piece[0] < 0x80:
            piece = printable(piece)  # ASCII control bytes are dropped in both modes, as safe_printf does
        self.parts.append(self._text.decode(piece))
        if not self.utf8:
            return printable(piece)
        return self._out.decode(piece).encode("utf-8")

    def finish(self):
        """Bytes still held back (an incomplete sequence at the end: U+FFFD)."""
        self.parts.append(self._text.decode(b"", final=True))
        return self._out.decode(b"", final=True).encode("utf-8") if self.utf8 else b""

    @property
    def text(self):
        return "".join(self.parts)


class Tokenizer:
    """vocab[i] (bytes), vocab_scores[i] (float32 values), encode and decode."""

    def __init__(self, path, vocab_size):
        self.path = path
        self.vocab_size = vocab_size
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise TokenizerError(f"cannot open tokenizer {path}: {e.strerror or e}") from None
        if len(data) < 4:
            raise TokenizerError(f"tokenizer {path} is {len(data)} bytes: too short to be a tokenizer.bin")
        (self.max_token_length,) = struct.unpack_from("<i", data, 0)
        off = 4
        self.vocab, self.vocab_scores = [], []
        for i in range(vocab_size):
            if off + 8 > len(data):
                break
            score, length = struct.unpack_from("<fi", data, off)
            off += 8
            if length < 0 or off + length > len(data):
                raise TokenizerError(f"tokenizer {path} is corrupt: piece {i} claims {length} bytes, "
                                     f"{len(data) - off} remain")
            self.vocab.append(_c_string(data[off:off + length]))
            self.vocab_scores.append(score)
            off += length
        if len(self.vocab) < vocab_size:
            raise TokenizerError(f"tokenizer {path} holds {len(self.vocab)} pieces but the model's "
                                 f"vocabulary has {vocab_size}: is it the tokenizer for this model? (-z PATH)")
        self.lookup = {}
        for i, piece in enumerate(self.vocab):
            self.lookup.setdefault(piece, i)
        self.byte_of = [_parse_byte_piece(p) for p in self.vocab]

    # ---- encoding -----------------------------------------------------------

    def _initial_tokens(self, text):
        """Dummy prefix, then one id per UTF-8 code point, or one per byte as fallback."""
        tokens = []
        if text:
            space = self.lookup.get(b" ")
            if space is None:
                raise TokenizerError(f"tokenizer {self.path} has no ' ' piece for the dummy prefix")
            tokens.append(space)
        n = len(text)
        i = 0
        while i < n:
            # a code point: this byte plus the continuation bytes (10xxxxxx) after it, at most 4 in all
            j = i + 1
            while j < n and (text[j] & 0xC0) == 0x80 and j - i < 4:
                j += 1
            cp = text[i:j]
            tid = self.lookup.get(cp)
            if tid is not None:
                tokens.append(tid)
            else:
                for b in cp:
                    if b + 3 >= self.vocab_size:
                        raise TokenizerError(f"tokenizer {self.path}: byte 0x{b:02X} has no byte-fallback "
                                             f"token in a {self.vocab_size}-piece vocabulary")
                    tokens.append(b + 3)
            i = j
        return tokens

    def encode(self, text, bos=True, eos=False):
        """Token ids of text (str or bytes), as run.c's encode produces them."""
        if isinstance(text, str):
            text = text.encode("utf-8", "surrogateescape")
        text = _c_string(text)
        tokens = self._initial_tokens(text)
        tokens = self._merge(tokens)
        return ([BOS] if bos else []) + tokens + ([EOS] if eos else [])

    def _merge(self, tokens):
        """Repeatedly merge the adjacent pair whose joined piece scores highest (leftmost on ties).

        Tokens form a linked list indexed by their original position, so the
        leftmost of two candidates is the one with the smaller index; heap
        entries whose neighbours have changed since are skipped when popped.
        """
        n = len(tokens)
        vocab, scores, lookup = self.vocab, self.vocab_scores, self.lookup
        ids = list(tokens)
        nxt = list(range(1, n + 1))  # n marks the end of the list
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []

        def push(i):
            j = nxt[i]
            if j < n:
                tid = lookup.get(vocab[ids[i]] + vocab[ids[j]])
                if tid is not None and scores[tid] > -1e10:  # run.c's starting best score
                    heapq.heappush(heap, (-scores[tid], i, j, ids[i], ids[j], tid))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, j, left, right, tid = heapq.heappop(heap)
            if not (alive[i] and alive[j] and nxt[i] == j and ids[i] == left and ids[j] == right):
                continue  # stale: a neighbour was merged away since this entry was made
            ids[i] = tid
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        out, i = [], 0
        while i < n:
            out.append(ids[i])
            i = nxt[i]
        return out

    # ---- decoding -----------------------------------------------------------

    def decode(self, prev_token, token):
        """Bytes of token; a leading space is dropped after BOS; '<0xHH>' is that raw byte."""
        piece = self.vocab[token]
        if prev_token == BOS and piece[:1] == b" ":
            piece = piece[1:]
            byte = _parse_byte_piece(piece)
        else:
            byte = self.byte_of[token]
        if byte is not None:
            piece = bytes([byte]) if byte else b""  # byte 0 is an empty C string
        return piece


# ----------------------------------------------------------------------------
# export: sentencepiece .model -> tokenizer.bin

def export(model_path, out_path=None, force=False):
    """Write the tokenizer.bin of a sentencepiece model; returns its path."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise TokenizerError("export needs the sentencepiece package: pip install sentencepiece") from None
    if not os.path.isfile(model_path):
        raise TokenizerError(f"cannot open sentencepiece model {model_path}: no such file")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(model_path)
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"{model_path} is not a sentencepiece model: {e}") from None
    if out_path is None:
        out_path = os.path.splitext(model_path)[0] + ".bin"
    pieces, scores = [], []
    for i in range(sp.GetPieceSize()):
        t = sp.IdToPiece(i)
        if i == sp.bos_id():
            t = "\n<s>\n"
        elif i == sp.eos_id():
            t = "\n</s>\n"
        pieces.append(t.replace("\u2581", " ").encode("utf-8"))  # sentencepiece writes spaces as U+2581
        scores.append(sp.GetScore(i))
    try:
        with AtomicWrite(out_path, force, inputs=[model_path]) as f:
            f.write(struct.pack("<I", max(len(b) for b in pieces)))
            for b, s in zip(pieces, scores):
                f.write(struct.pack("<fI", s, len(b)))
                f.write(b)
    except OutputError as e:
        raise TokenizerError(str(e)) from None
    return out_path


def main(argv):
    usage = "usage: python tokenizer.py export MODEL.model [-o OUT.bin] [--force]"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    if argv[0] != "export":
        print(f"tokenizer.py: error: unknown command {argv[0]!r}; {usage}", file=sys.stderr)
        return 2
    args, out, force = [], None, False
    it = iter(argv[1:])
    for a in it:
        if a == "--force":
            force = True
        elif a in ("-o", "--output"):
            out = next(it, None)
            if out is None:
                print(f"tokenizer.py: error: {a} needs a file name", file=sys.stderr)
                return 2
        elif a.startswith("-"):
            print(f"tokenizer.py: error: unknown option {a}; {usage}", file=sys.stderr)
            return 2
        else:
            args.append(a)
    if len(args) != 1:
        print(f"tokenizer.py: error: export takes one sentencepiece model; {usage}", file=sys.stderr)
        return 2
    try:
        path = export(args[0], out, force)
    except TokenizerError as e:
        print(f"tokenizer.py: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))  # Ctrl-C: quiet, no half-written file
    sys.exit(main(sys.argv[1:]))
