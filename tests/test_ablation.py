"""tools/ablate.py end to end on a tiny budget: every report file, resume without redoing work, one-line errors."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from conftest import GLUE_FIXTURES, the_line
from debertav3.ablation.cli import main
from debertav3.ablation.runner import STAGES_FILE
from debertav3.data.corpus import BUNDLED_TRAIN, BUNDLED_VALID

DATA = GLUE_FIXTURES  # CoLA's layout and format, synthetic sentences (tests/fixtures/glue)
MODES = ["es", "gdes", "random"]  # mlm costs another pretraining; its export is tested in test_export.py
PLOTS = ["curves.png", "learning.png", "embeddings.png", "downstream.png"]


def corpus_slice(source: Path, target: Path, chars: int) -> str:
    """The first `chars` characters of a bundled file: tokenising a few hundred KB keeps the test quick."""
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        text = fh.read(chars)
    with gzip.open(target, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return str(target)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(argument list, output directory, exit code) of a tiny ablation run once to the end: 3 modes,
    1 seed, 6 steps, CoLA with 32 examples (each fine-tuning costs seconds of fixed overhead, so one task keeps the
    test quick). Tests that change it work on a copy (`copy_of`), so no test depends on another's order."""
    tmp = tmp_path_factory.mktemp("ablation")
    train = corpus_slice(BUNDLED_TRAIN, tmp / "train.txt.gz", 200_000)
    valid = corpus_slice(BUNDLED_VALID, tmp / "valid.txt.gz", 40_000)
    argv = ["--modes", ",".join(MODES), "--seeds", "1", "--max-steps", "6", "--tasks", "cola",
            "--output", str(tmp / "out"), "--data-dir", str(DATA), "--finetune-examples", "32",
            "--finetune-epochs", "1", "--finetune-lr", "1e-4",
            "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
            "model.intermediate_size=64", "data.max_seq_length=64", "train.batch_size=4", "train.log_every=1",
            "train.embedding_stats_every=2", "train.eval_every=3", "train.eval_batches=1", "train.save_every=3",
            f"data.train_files=[{train}]", f"data.valid_files=[{valid}]"]
    code = main(argv)
    return argv, tmp / "out", code


@pytest.fixture()
def ablation(finished, tmp_path):
    """(argument list, output directory) of a copy of the finished ablation in this test's own directory."""
    argv, out, code = finished
    assert code == 0
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return [str(copy) if a == str(out) else a for a in argv], copy


def file_stamps(out: Path) -> dict[Path, int]:
    """Modification time of every file under the ablation's runs/ (unchanged stamps: nothing was redone)."""
    return {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_end_to_end_writes_every_file(finished):
    _, out, code = finished
    assert code == 0
    for name in ["report.md", "results.json", *PLOTS]:
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert [(r["mode"], r["complete"]) for r in results["runs"]] == [(m, True) for m in MODES]
    by_mode = {r["mode"]: r["metrics"] for r in results["runs"]}
    assert by_mode["gdes"]["cosine_E_Delta"] is not None and by_mode["es"]["cosine_E_Delta"] is None
    assert by_mode["random"]["eval_mlm_loss"] is None and by_mode["es"]["eval_rtd_accuracy"] is not None
    assert 0 <= by_mode["gdes"]["eval_rtd_auc"] <= 1 and by_mode["gdes"]["eval_rtd_loss_vs_prior"] > 0
    assert 0 < by_mode["es"]["eval_mlm_accuracy_unigram"] < 1 and by_mode["random"]["eval_rtd_auc"] is None
    assert all(by_mode[m]["cola"] is not None and by_mode[m]["cola_majority"] is not None for m in MODES)
    assert results["summary"]["es"]["mlm_loss@100%"]["n"] == 1
    assert {c["verdict"] for c in results["claims"]} <= {"holds", "does not hold", "not measured"}
    report = (out / "report.md").read_text()
    assert "3 of 3 runs complete" in report and "| eval RTD AUC | RTD loss / prior |" in report
    assert all(f"]({p})" in report for p in PLOTS)
    # the random baseline never pretrains; the others stop exactly at --max-steps
    assert not (out / "runs" / "random-seed0" / "pretrain").exists()
    assert (out / "runs" / "es-seed0" / "pretrain" / "checkpoints" / "step-00000006").is_dir()


@pytest.mark.slow
def test_resume_redoes_nothing_and_only_what_is_missing(ablation, capsys):
    argv, out = ablation
    capsys.readouterr()
    stamps = file_stamps(out)
    code, stdout, _ = run(argv, capsys)
    assert code == 0 and "[ablation]" not in stdout
    assert file_stamps(out) == stamps
    # forget one finished stage: exactly that one is run again
    marker = out / "runs" / "es-seed0" / STAGES_FILE
    done = json.loads(marker.read_text())["done"]
    marker.write_text(json.dumps({"done": [s for s in done if s != "finetune:cola"]}))
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    assert [line for line in stdout.splitlines() if line.startswith("[ablation]")] == ["[ablation] es-seed0: finetune:cola"]


@pytest.mark.slow
def test_a_changed_budget_is_refused(ablation, capsys):
    argv, out = ablation
    changed = [a if a != "6" else "7" for a in argv]  # --max-steps 7
    code, _, err = run(changed, capsys)
    # Loading the changed configs may warn first (7 steps < the recipe's warm-up); the error is one line.
    assert code == 2 and "max_steps" in the_line(err)


@pytest.mark.slow
def test_first_seed_adds_seeds_to_the_same_directory(ablation, capsys):
    argv, out = ablation
    capsys.readouterr()
    stamps = file_stamps(out)
    more = [a if a != ",".join(MODES) else "random" for a in argv] + ["--first-seed", "1"]
    code, stdout, _ = run(more, capsys)
    assert code == 0
    assert [line for line in stdout.splitlines() if line.startswith("[ablation]")] == [
        "[ablation] random-seed1: export", "[ablation] random-seed1: finetune:cola"]
    assert {p: t for p, t in file_stamps(out).items() if p in stamps} == stamps  # seed 0's runs left as they were
    results = json.loads((out / "results.json").read_text())
    assert [(r["mode"], r["seed"], r["complete"]) for r in results["runs"]] == [("random", 1, True)]


@pytest.mark.parametrize("args, fragment", [
    (["--first-seed", "-1"], "--first-seed must be 0 or more"),
    (["--modes", "es,bogus"], "mode 'bogus' is unknown"),
    (["--recipe", "no_such_recipe"], "recipe 'no_such_recipe' not found"),
    (["--data-dir", "/no/such/dir"], "--data-dir /no/such/dir is not a directory"),
    (["model.no_such_key=1"], "no_such_key"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, fragment):
    code, _, err = run(["--max-steps", "2", "--output", str(tmp_path / "out"), *args], capsys)
    assert code == 2
    assert err.startswith("error: ") and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_finished_runs_need_only_their_small_files(ablation, capsys):
    """A finished run's stages.json, TensorBoard events and metrics.json are what the report reads and what resume
    checks: with checkpoints and the exported model deleted (as when only those are kept from another machine),
    nothing is redone and the report is the same."""
    argv, out = ablation
    before = json.loads((out / "results.json").read_text())
    for directory in (out / "runs").iterdir():
        shutil.rmtree(directory / "pretrain" / "checkpoints", ignore_errors=True)
        shutil.rmtree(directory / "model")
    capsys.readouterr()
    code, stdout, _ = run(argv, capsys)
    assert code == 0 and "[ablation]" not in stdout
    after = json.loads((out / "results.json").read_text())
    assert after["runs"] == before["runs"] and after["summary"] == before["summary"]


def test_rtd_overrides_apply_to_the_rtd_modes_only(tmp_path):
    """`rtd.*` overrides given to the whole ablation set up its RTD runs; the mlm run, which a pretraining with
    rtd keys refuses, leaves them out."""
    from debertav3.ablation.runner import AblationSpec, Run, run_config

    spec = AblationSpec(recipe="rtd_tiny", modes=["gdes", "mlm"], seeds=[0], max_steps=2, tasks=["cola"],
                        output=str(tmp_path), overrides=["rtd.rtd_weight=20", "train.batch_size=4"])
    gdes, mlm = (run_config(spec, Run(mode, 0, tmp_path / mode)) for mode in ("gdes", "mlm"))
    assert (gdes.objective, gdes.rtd.rtd_weight, gdes.train.batch_size) == ("rtd", 20.0, 4)
    assert (mlm.objective, mlm.rtd.rtd_weight, mlm.train.batch_size) == ("mlm", 50.0, 4)
