"""The eval-time linear probe: its logistic regression against scikit-learn's, its accuracy and majority baseline
on a task whose answer is known, and a pretraining run that reports it."""

import numpy as np
import pytest
import torch

from debertav3.data import Tokenizer
from debertav3.train import load_config
from debertav3.errors import UserError
from debertav3.train.loop import train
from debertav3.train.probe import Probe, fit_logistic_regression
from debertav3.train.config import ProbeConfig

from conftest import SMALL_MODEL, corpus_overrides, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")


def test_logistic_regression_matches_scikit_learn():
    """Mean cross-entropy + l2 ||W||^2 is scikit-learn's multinomial 0.5 ||W||^2 + C sum(cross-entropy) with
    C = 1 / (2 N l2): the same optimum, so the same probabilities."""
    linear_model = pytest.importorskip("sklearn.linear_model", reason="scikit-learn (dev extra) is the reference")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen)
    y = (x[:, :3] + 0.8 * torch.randn(300, 3, generator=gen)).argmax(-1)  # 3 overlapping classes
    l2 = 0.01
    weight, bias = fit_logistic_regression(x, y, 3, l2)
    ours = torch.softmax(x @ weight + bias, -1).numpy()
    reference = linear_model.LogisticRegression(C=1 / (2 * len(x) * l2), tol=1e-10, max_iter=10_000)
    reference.fit(x.double().numpy(), y.numpy())  # float64, as our fit runs
    assert np.abs(ours - reference.predict_proba(x.double().numpy())).max() < 1e-4


def write_task(folder, name, rows):
    path = folder / f"{name}.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    return str(path)


def test_probe_on_a_task_its_features_decide(tmp_path):
    """Label 1 exactly when the sentence holds "happy": features that count that word separate the classes, so
    the probe is right on every dev sentence; the majority baseline is the training majority's dev share."""
    words = ["the cat sat", "a dog ran far", "it rained", "we walked home", "the sun set"]
    train_rows = [(f"{w} happy" if i % 3 == 0 else w, int(i % 3 == 0)) for i, w in enumerate(words * 12)]
    dev_rows = [("happy it rained", 1), ("the dog sat", 0), ("we are happy", 1), ("happy happy", 1)]
    cfg = ProbeConfig(train_file=write_task(tmp_path, "train", train_rows),
                      dev_file=write_task(tmp_path, "dev", dev_rows), examples=1000)
    tokenizer = Tokenizer.load()
    happy = set(tokenizer.encode_batch(["happy"])[0])
    probe = Probe(cfg, tokenizer, seed=0)

    def encode(ids, mask):  # one feature: is this token a piece of "happy"
        return torch.isin(ids, torch.tensor(sorted(happy))).float().unsqueeze(-1)

    result = probe.evaluate(encode, torch.device("cpu"))
    assert result["probe_accuracy"] == 1.0
    assert result["probe_majority"] == 1 / 4  # the training majority is 0; one dev sentence of 4 has it


def test_pretraining_reports_the_probe(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", 60_000, 10_000)
    rows = [(f"sentence number {i} is {'good' if i % 2 else 'bad'}", i % 2) for i in range(80)]
    probe = [f"probe.train_file={write_task(tmp_path, 'train', rows)}",
             f"probe.dev_file={write_task(tmp_path, 'dev', rows[:20])}"]
    recipe = {"model": SMALL_MODEL, "data": {"max_seq_length": 64, "num_proc": 1}, "optim": {"warmup_steps": 1},
              "train": {"batch_size": 4, "max_steps": 2, "eval_every": 2, "eval_batches": 1, "progress": False}}
    metrics = train(load_config(recipe, None, [*corpus_overrides(corpus), f"train.output_dir={tmp_path / 'run'}",
                                               *probe]))
    assert 0.0 <= metrics["eval/probe_accuracy"] <= 1.0
    assert metrics["eval/probe_majority"] == 0.5
    assert "probe accuracy" in capsys.readouterr().out
    with pytest.raises(UserError, match="missing.tsv not found"):
        train(load_config(recipe, None, [*corpus_overrides(corpus), f"train.output_dir={tmp_path / 'bad'}",
                                         probe[0], f"probe.dev_file={tmp_path / 'missing.tsv'}"]))


def test_probe_files_go_together():
    with pytest.raises(ValueError, match="probe.train_file and probe.dev_file go together"):
        ProbeConfig(train_file="train.tsv")
