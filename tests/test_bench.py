"""benchmarks/bench.py's helpers that do arithmetic or touch the checkpoint file."""

import hashlib
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench  # noqa: E402


def test_paired_ratios_are_per_round():
    # round by round: 2/1, 3/1, 4/4 -> ratios 2, 3, 1: median 2, range 1-3 (a ratio of
    # medians would give 3/1 = 3)
    results = {"fast-math, 2 threads": [2.0, 3.0, 4.0], "llama2.c runomp": [1.0, 1.0, 4.0]}
    table = bench.paired_table(results)
    print(table)
    row = [line for line in table.splitlines() if line.startswith("| fast-math")]
    assert row == ["| fast-math, 2 threads | 2.00x (1.00-3.00) |"]


def _major_faults_touching(path):
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    bench._map_and_touch(str(path))[0].close()
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt - before


def test_page_cache_refill_reads_the_whole_file_back_and_leaves_it_alone(tmp_path):
    path = tmp_path / "m.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(8 * 1024 * 1024 + 123))
        f.flush()
        os.fsync(f.fileno())  # dirty pages cannot be dropped
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if _major_faults_touching(path) == 0:
        import pytest
        pytest.skip("dropping this file's pages from the page cache had no effect here (tmpfs?)")
    bench.refill_page_cache(str(path))  # drops the pages, then reads them back
    assert _major_faults_touching(path) == 0  # every page cached again
    share = bench.page_cache_huge_fraction(str(path))
    assert share is None or 0.0 <= share <= 1.0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
