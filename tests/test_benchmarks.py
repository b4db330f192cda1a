"""The RTD step benchmark (benchmarks/bench_rtd.py) on tiny shapes: what it computes from what its processes measured,
that the allocator setting reaches the child processes, and how it reads `--ours`."""

import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_rtd  # noqa: E402
import common  # noqa: E402

TINY = ["--hidden", "64", "--layers", "2", "--heads", "2", "--vocab", "1000", "--seq", "16", "--batch", "2",
        "--rounds", "2", "--warmup", "1", "--gemm-seconds", "0.05"]

# Resident MiB before and after freeing a 64 MiB block: glibc's default mmap threshold is at most 32 MiB, so the
# block is its own mapping and goes back at once; with keep_freed_memory's thresholds it stays in the heap.
FREED_BLOCK_RSS = """
import ctypes
def rss():
    return int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS'))) // 1024
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
block = libc.malloc(64 << 20)
ctypes.memset(block, 1, 64 << 20)
held = rss()
libc.free(block)
print(held, rss())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator settings are glibc's")
def test_allocator_setting_reaches_the_child(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 30))  # inherited values must not leak into "glibc"
    for setting, kept in (("glibc", False), ("keep_freed", True)):
        env = common.allocator_environment(setting)
        done = subprocess.run([sys.executable, "-c", FREED_BLOCK_RSS], env=env, capture_output=True, text=True,
                              check=True)
        held, after_free = map(int, done.stdout.split())
        assert (held - after_free < 16) == kept, (setting, held, after_free)


def test_impl_specs():
    assert common.parse_impl("auto") == {}
    assert common.parse_impl("eager") == dict.fromkeys(common.IMPL_KEYS, "eager")
    assert common.parse_impl("attention_impl=eager,dropout_impl=cpu_bits") == {
        "attention_impl": "eager", "dropout_impl": "cpu_bits"}
    for bad in ("fast", "attention=eager", "attention_impl=eager,oops"):
        with pytest.raises(ValueError, match="--ours"):
            common.parse_impl(bad)
    variant = common.Variant.parse("eager")
    assert variant.tree == common.REPO and variant.label.startswith("ours eager @ ")


def test_bad_ours_is_a_usage_error(tmp_path, capsys):
    for spec in ("fast", f"auto@{tmp_path}"):
        with pytest.raises(SystemExit):
            bench_rtd.parse_args(["--ours", spec])
        assert "--ours" in capsys.readouterr().err


@pytest.mark.slow
def test_fresh_and_alternating_on_tiny_shapes(tmp_path):
    output = tmp_path / "fresh.json"
    report = bench_rtd.main([*TINY, "--method", "fresh", "--allocator", "glibc", "--repeats", "2",
                             "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    (label,) = [v["label"] for v in report["variants"]]
    row = report["fresh"]["glibc"][label]
    rates = {}
    for side in ("ours", "theirs"):
        processes = row[side]["processes"]
        assert len(processes) == 2 and all(len(p["step_seconds"]) == 2 for p in processes)
        rates[side] = [32 / statistics.median(p["step_seconds"]) for p in processes]  # 16 x 2 tokens a step
        assert row[side]["tokens_per_second"] == pytest.approx(statistics.median(rates[side]))
        assert row[side]["peak_rss_bytes"] == statistics.median(p["peak_rss_bytes"] for p in processes)
    assert row["ratio"] == pytest.approx(statistics.median(rates["ours"]) / statistics.median(rates["theirs"]))
    assert row["per_process_ratios"] == pytest.approx([o / t for o, t in zip(rates["ours"], rates["theirs"])])
    assert row["memory_ratio"] == pytest.approx(row["ours"]["peak_rss_bytes"] / row["theirs"]["peak_rss_bytes"])
    assert set(report["flops_per_token"]) == {label, common.THEIRS}
    assert all(flops > 0 for flops in report["flops_per_token"].values())

    report = bench_rtd.main([*TINY, "--method", "alternating", "--allocator", "keep_freed", "--repeats", "1"])
    row = report["alternating"]["keep_freed"][label]
    ours, theirs = (32 / statistics.median(row[side]["processes"][0]["step_seconds"]) for side in ("ours", "theirs"))
    assert row["per_process_ratios"] == pytest.approx([ours / theirs]) and row["ratio"] == pytest.approx(ours / theirs)


def test_fast_path_comparison_times_every_variant_it_is_given(tmp_path, capsys):
    import bench_fast_paths

    variants = "eager;attention_impl=cpu_fused,mlm_loss_impl=eager,dropout_impl=eager;auto"
    out = tmp_path / "fast.json"
    times = bench_fast_paths.main(["--hidden", "64", "--layers", "2", "--heads", "2", "--vocab", "1000", "--seq",
                                   "16", "--batch", "2", "--rounds", "3", "--gemm-seconds", "0.05", "--variants",
                                   variants, "--output", str(out)])
    assert list(times) == variants.split(";") and all(len(v) == 3 and min(v) > 0 for v in times.values())
    saved = json.loads(out.read_text())
    assert saved["seconds"] == times and saved["shape"]["seq"] == 16
    table = capsys.readouterr().out
    assert table.count("| ") >= 4 * 3 and "1.000x" in table  # the first variant is the yardstick here


def test_generation_benchmark_times_both_ways_on_the_same_tokens(tmp_path):
    import bench_generation

    result = bench_generation.main(["--size", "tiny", "--new-tokens", "3", "--rounds", "1", "--gemm-seconds",
                                    "0.05", "--output", str(tmp_path / "generation.json")])
    assert set(result["seconds_per_token"]) == {"cache", "recompute"} and result["speedup"] > 0
    assert json.loads((tmp_path / "generation.json").read_text())["new_tokens"] == 3
