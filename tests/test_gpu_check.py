"""benchmarks/gpu_check.py: its smoke mode runs every part of the GPU check on tiny sizes on the CPU and records
sane values; its arguments are checked with one-line errors. The check itself needs a GPU (docs/performance.md)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check


def finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_smoke_run_records_every_part_with_sane_values(tmp_path):
    pytest.importorskip("transformers", reason="transformers (the dev extra) is the parity reference and baseline")
    output = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--smoke",
                           "--output", str(output)], check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    for part in gpu_check.PARTS:
        assert "error" not in results[part], results[part].get("error")
    assert results["mode"] == "smoke" and f"GPU check (smoke) on {results['machine']['device']}" in done.stdout
    assert finite_positive(results["peak"]["median_tflops"])

    parity = results["parity"]
    assert parity["passed"] and set(parity["implementations"]) == {"eager", "sdpa"}
    for rows in parity["implementations"].values():
        assert any(name.endswith("_causal") for name in rows) and any("_" not in name for name in rows)
        for row in rows.values():
            for key, tolerance in parity["tolerances"].items():
                assert 0 <= row[key] <= tolerance, (key, row[key])

    for row in (r for r in results["timing"].values() if isinstance(r, dict)):
        assert finite_positive(row["ratio"])
        for label in ("ours", "ours_eager_attention", "transformers"):
            step = row[label]
            assert all(finite_positive(step[key]) for key in ("tokens_per_s", "flops_per_token", "mfu")), step
        assert row["ours_eager_attention"]["attention"] == ["eager"]

    for row in results["profile"]["shapes"].values():
        assert row["calls"] > 0 and row["backward_us"] > 0 and 0 < row["share"] < 1, row  # backward found too

    training = results["training"]
    assert training["eval_step"] == 8 and "train.max_steps=8" in training["overrides"]
    assert 0 < training["eval_rtd_auc"] < 1 and finite_positive(training["eval_rtd_loss_vs_prior"])
    # On the CPU the resumed run is the straight one, bit for bit.
    assert training["weights_equal"] and training["losses"]["after_resume"] == 0.0
    assert training["losses"]["logged_steps"] == 8
    assert "skipped" in results["compiled"]


@pytest.mark.parametrize("argv,message", [
    (["--device", "cpu"], "--device cpu needs --smoke"),
    (["--device", "cpu", "--smoke", "--parts", "parity,speed"], "--parts: speed; use some of"),
    (["--device", "cpu", "--smoke", "--budget-s", "0"], "--budget-s must be positive"),
])
def test_bad_arguments_get_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"error: {message}" in err.strip().splitlines()[-1]


def test_output_names_the_device():
    assert gpu_check.device_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_check.device_slug("NVIDIA H200") == "h200"
    assert gpu_check.device_slug("Some GPU") == "some_gpu"
