"""tools/sweep.py end to end on a tiny budget: curves per variant, continuing without redoing work, one-line errors."""

from __future__ import annotations

import json

import pytest

from debertav3.ablation.sweep import parse_variant
from debertav3.ablation.sweep_cli import main
from debertav3.data.corpus import BUNDLED_TRAIN, BUNDLED_VALID

from test_ablation import corpus_slice

VARIANTS = ["--variant", "base=", "--variant", "lr_high=optim.lr=3e-3 optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, one_thread):
    """(argument list, output directory) of a 2-variant, 1-seed, 6-step sweep of a 32-wide model."""
    tmp = tmp_path_factory.mktemp("sweep")
    train = corpus_slice(BUNDLED_TRAIN, tmp / "train.txt.gz", 200_000)
    valid = corpus_slice(BUNDLED_VALID, tmp / "valid.txt.gz", 40_000)
    argv = [*VARIANTS, "--seeds", "1", "--output", str(tmp / "out"),
            "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
            "model.intermediate_size=64", "data.max_seq_length=64", "train.batch_size=4", "train.max_steps=6",
            "train.eval_every=3", "train.eval_batches=2", "train.save_every=3",
            f"data.train_files=[{train}]", f"data.valid_files=[{valid}]"]
    return argv, tmp / "out"


def test_sweep_records_each_variants_eval_curves_and_continues_without_rerunning(sweep, capsys):
    argv, out = sweep
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["runs"]] == ["base", "lr_high"]
    for record in results["runs"]:
        assert sorted(record["curves"]["eval/rtd_auc"]) == ["3", "6"]  # JSON keys: the eval steps
        assert all(0.0 <= v <= 1.0 for v in record["curves"]["eval/rtd_auc"].values())
        assert record["wall_seconds"] > 0
    assert results["runs"][1]["overrides"] == ["optim.lr=3e-3", "optim.warmup_steps=1"]
    assert (out / "curves.png").stat().st_size > 0
    # The two variants trained differently: their curves differ.
    assert results["runs"][0]["curves"] != results["runs"][1]["curves"]

    events = sorted((out / "runs").rglob("events.out.tfevents.*"))
    assert main(argv) == 0  # everything finished: nothing is trained again, the wall times are kept
    assert sorted((out / "runs").rglob("events.out.tfevents.*")) == events
    again = json.loads((out / "results.json").read_text())
    assert [r["wall_seconds"] for r in again["runs"]] == [r["wall_seconds"] for r in results["runs"]]


@pytest.mark.parametrize("variant, message", [
    ("noequals", "is not NAME=OVERRIDES"),
    ("bad=optim.lr=-1", "variant bad: optim.lr"),
    ("typo=optim.lrr=1e-3", "variant typo"),
])
def test_bad_variants_stop_with_one_line(tmp_path, capsys, variant, message):
    assert main(["--variant", variant, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out" / "runs").exists()


def test_parse_variant_splits_name_and_overrides():
    assert parse_variant("a=x.y=1 z.w=2") == ("a", ["x.y=1", "z.w=2"])
    assert parse_variant("paper=") == ("paper", [])
