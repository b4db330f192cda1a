"""train.keep_freed_memory: glibc keeps freed blocks for the next step instead of returning them to the OS."""

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import sys, torch
    from debertav3.train.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def rss():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024
    before = rss()
    block = torch.ones(64 * 2 ** 20)  # 256 MiB, touched
    del block
    print(rss() - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux-only")
def test_a_freed_block_stays_resident_only_after_keep_freed_memory():
    """By default glibc maps a 256 MiB block on its own and unmaps it on free; with the thresholds raised it comes
    from the heap and stays there for reuse. Each case runs in a fresh interpreter (mallopt is process-wide)."""
    resident = {mode: int(subprocess.check_output([sys.executable, "-c", PROBE, mode], text=True))
                for mode in ("default", "keep")}
    assert resident["default"] < 64 * 2 ** 20, resident
    assert resident["keep"] > 200 * 2 ** 20, resident
