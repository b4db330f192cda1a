"""Auto-regressive runs end to end: training (arlm, mt), the run's perplexity against tools/perplexity.py, export
to our loader and to transformers, tools/generate.py, and every bad input of the two tools in one line, exit 2."""

import re

import pytest
import torch

from debertav3.lm import load_causal_lm
from debertav3.lm.cli import generate_main, perplexity_main
from debertav3.train import load_config
from debertav3.train.export import main as export_main
from debertav3.train.loop import train

from conftest import SMALL_MODEL, corpus_overrides, the_line, write_corpus
from test_train import scalars

RUN = {
    "objective": "arlm",
    "model": {**SMALL_MODEL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "data": {"max_seq_length": 64, "num_proc": 1},
    "optim": {"lr": 2e-3, "warmup_steps": 2},
    "train": {"batch_size": 1, "log_every": 1, "eval_every": 4, "eval_batches": 1000, "save_every": 1000,
              "progress": False, "max_steps": 4},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 100_000, 4_000)


def run(corpus, output_dir, *overrides):
    cfg = load_config(RUN, None, [*corpus_overrides(corpus), f"train.output_dir={output_dir}", *overrides])
    return train(cfg)


@pytest.fixture(scope="module")
def arlm_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("arlm")
    return out, run(corpus, out)


def printed_perplexity(out: str) -> tuple[int, float]:
    match = re.search(r": ([\d,]+) tokens in .* perplexity ([\d.]+) \(unigram baseline [\d.]+\)", out)
    return int(match.group(1).replace(",", "")), float(match.group(2))


def test_the_tool_gives_the_runs_own_evaluation_on_the_same_blocks(arlm_run, corpus, capsys):
    out, logged = arlm_run
    assert 1 < logged["eval/perplexity"] < float("inf") and 1 < logged["eval/perplexity_unigram"] < 8064
    capsys.readouterr()
    assert perplexity_main([str(out), str(corpus / "valid.txt"), "--no-progress"]) == 0
    tokens, value = printed_perplexity(capsys.readouterr().out)
    assert value == pytest.approx(logged["eval/perplexity"], rel=1e-4, abs=0.01)
    assert tokens > 100
    # A smaller stride scores the same tokens, each with more context.
    assert perplexity_main([str(out), str(corpus / "valid.txt"), "--stride", "16", "--no-progress"]) == 0
    assert printed_perplexity(capsys.readouterr().out)[0] == tokens
    assert perplexity_main([str(out), str(corpus / "valid.txt"), "--max-windows", "2", "--no-progress"]) == 0
    assert 2 <= printed_perplexity(capsys.readouterr().out)[0] < tokens


def test_mt_alternates_its_tasks_and_logs_and_evaluates_both(corpus, tmp_path):
    logged = run(corpus, tmp_path, "objective=mt", "train.log_every=2")
    steps = scalars(tmp_path)
    # Steps 1 and 3 train MLM, 2 and 4 ARLM; logged every second step, each task's latest figures are there.
    assert sorted(steps["train/mlm_loss"]) == [2, 4] and sorted(steps["train/arlm_loss"]) == [2, 4]
    assert steps["train/mlm_loss"][2] != steps["train/mlm_loss"][4]
    for key in ("eval/perplexity", "eval/perplexity_unigram", "eval/mlm_accuracy", "eval/mlm_accuracy_unigram"):
        assert key in logged, key


def test_export_keeps_the_network_for_our_loader_and_transformers(corpus, tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="transformers (the dev extra) is the reference")
    for variant, overrides in (("emd", ()), ("absolute", ("model.enhanced_mask_decoder=false",
                                                          "model.position_biased_input=true"))):
        out, exported = tmp_path / variant, tmp_path / f"{variant}-hf"
        run(corpus, out, *overrides)
        assert export_main([str(out), str(exported), "--part", "generator"]) == 0
        ids = torch.randint(5, 8000, (2, 30), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        ours = load_causal_lm(out).next_token_logits(ids, mask)
        torch.testing.assert_close(load_causal_lm(exported).next_token_logits(ids, mask), ours, rtol=0, atol=0)
        theirs = transformers.DebertaV2ForMaskedLM.from_pretrained(exported).eval()
        triangle = torch.ones(30, 30, dtype=torch.long).tril().expand(2, 30, 30)
        with torch.no_grad():
            hidden = theirs.deberta.encoder(theirs.deberta.embeddings(input_ids=ids, mask=mask), triangle)
            logits = theirs.lm_predictions(hidden.last_hidden_state, theirs.deberta.embeddings.word_embeddings)
        if variant == "absolute":  # no EMD: transformers computes the same network, given the triangular mask
            torch.testing.assert_close(logits, ours, rtol=0, atol=1e-4)
        else:  # transformers has no EMD: it runs the plain last layer, a different network
            assert not torch.allclose(logits, ours, atol=1e-2)
    capsys.readouterr()


def test_generate_prints_a_continuation(arlm_run, capsys):
    out, _ = arlm_run
    args = [str(out), "--prompt", "It was a dark night", "--max-new-tokens", "12", "--seed", "1"]
    assert generate_main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("It was a dark night") and len(first.split()) > 5
    assert generate_main(args) == 0 and capsys.readouterr().out == first  # seeded


def test_bad_inputs_are_one_line_with_exit_2(arlm_run, corpus, tmp_path, capsys):
    out, _ = arlm_run
    rtd = tmp_path / "rtd"
    run(corpus, rtd, "objective=rtd", "train.batch_size=2", "train.eval_batches=1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    long_prompt = "word " * 100
    cases = [
        (generate_main, [str(tmp_path / "missing"), "--prompt", "x"], "is not a directory"),
        (generate_main, [str(tmp_path / "empty"), "--prompt", "x"], "is not a complete checkpoint"),
        (generate_main, [str(rtd), "--prompt", "x"], "was pretrained with objective rtd, not causally"),
        (generate_main, [str(out), "--prompt", ""], "--prompt is empty"),
        (generate_main, [str(out), "--prompt", long_prompt], "longer than the model's window allows (61"),
        (generate_main, [str(out), "--prompt", "x", "--top-k", "-1"], "--top-k -1 is out of range"),
        (perplexity_main, [str(out), str(tmp_path / "blank.txt")], "has no text to score"),
        (perplexity_main, [str(out), str(tmp_path / "nothing.txt")], "FILE"),
        (perplexity_main, [str(out), str(corpus / "valid.txt"), "--stride", "0"], "--stride 0 is outside [1, 62]"),
        (perplexity_main, [str(tmp_path / "empty"), str(corpus / "valid.txt")], "is not a complete checkpoint"),
        (export_main, [str(out), str(tmp_path / "disc")], "objective arlm and has no discriminator; export its "
                                                          "network with --part generator"),
    ]
    capsys.readouterr()
    for main, argv, message in cases:
        assert main(argv) == 2, argv
        line = the_line(capsys.readouterr().err)
        assert message in line, (argv, line)


def test_resume_refuses_another_task_mix(corpus, tmp_path):
    from debertav3.errors import UserError

    run(corpus, tmp_path, "objective=mt", "train.max_steps=2")
    with pytest.raises(UserError, match="different mt.arlm_fraction"):
        run(corpus, tmp_path, "objective=mt", "train.max_steps=4", "mt.arlm_fraction=0.25")
