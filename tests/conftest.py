"""Test set-up: the in-process tests run the strict serial build (--no-fastmath --threads 1).

The mode must be in the environment before model.py imports numba; the other
modes are exercised through the command line in subprocesses.
"""

import os
import sys

os.environ.setdefault("LLAMA2_FASTMATH", "off")
os.environ.setdefault("LLAMA2_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
for p in (ROOT, TESTS):
    if p not in sys.path:
        sys.path.insert(0, p)

SHARED_MODELS = os.path.join(ROOT, "..", "shared", "models")
