"""Test set-up.

- The in-process tests run the strict serial build (--no-fastmath --threads 1);
  the mode must be in the environment before jit.py imports numba. The other
  modes run in subprocesses.
- Hermetic JIT cache: every test, and every subprocess it starts, compiles
  into this session's own temporary cache directory, never ~/.cache.
- `slow` marks the tests that compile extra modes or tiers in subprocesses
  or run long generations; `pytest -m "not slow"` is the quick inner loop.
"""

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("LLAMA2_FASTMATH", "off")
os.environ.setdefault("LLAMA2_THREADS", "1")
if "LLAMA2_TEST_KEEP_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="llama2-test-cache-")
    os.environ["LLAMA2_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
for p in (ROOT, TESTS):
    if p not in sys.path:
        sys.path.insert(0, p)

SHARED_MODELS = os.path.join(ROOT, "..", "shared", "models")

# seconds a run.py subprocess may take: a guard against a hang, not a speed check (compiling the parallel
# int8 build into an empty cache took 280-300+ s on a Zen 1-class host with 2 cores, and CI runs there too)
HANG_TIMEOUT = 1800


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: compiles other modes or CPU tiers in subprocesses, or runs long")
