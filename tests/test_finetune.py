"""Fine-tuning: file reading, metrics, SiFT, an SST-2 slice that beats chance, one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import GLUE_FIXTURES, SMALL_MODEL
from debertav3 import ModelConfig
from debertav3.data import Tokenizer
from debertav3.finetune import FinetuneConfig, SiFT, classification_metrics, finetune, regression_metrics
from debertav3.finetune.cli import main
from debertav3.data.labelled import encode_labels, label_vocabulary, read_split
from debertav3.finetune.sift import symmetric_kl
from debertav3.interop.hf import config_to_hf

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers", reason="fine-tuning runs transformers' DebertaV2 classes")

DATA = GLUE_FIXTURES  # SST-2 and CoLA layouts and formats, synthetic sentences (tests/fixtures/glue)
TINY = config_to_hf(ModelConfig(**SMALL_MODEL), ["DebertaV2Model"])  # DeBERTa-v3 attention, tiny sizes



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny DeBERTa-v3-shaped directory written by transformers itself (not by our exporter) + our tokenizer."""
    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    transformers.DebertaV2Model(transformers.DebertaV2Config(**TINY)).save_pretrained(out)
    Tokenizer.load().save(out)
    return out


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --- metrics ---------------------------------------------------------------------------------------------------

def test_metrics_match_scikit_learn_and_scipy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for classes in (2, 3):
        labels, predictions = rng.integers(0, classes, 200), rng.integers(0, classes, 200)
        ours = classification_metrics(labels, predictions, classes)
        assert ours["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions))
        average = "binary" if classes == 2 else "macro"
        assert ours["f1"] == pytest.approx(sklearn_metrics.f1_score(labels, predictions, average=average))
        assert ours["mcc"] == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, predictions))
    gold = rng.integers(0, 5, 100).astype(float)  # many ties, as in STS-B's half points
    guess = gold + rng.normal(0, 1, 100).round()
    ours = regression_metrics(gold, guess)
    assert ours["pearson"] == pytest.approx(stats.pearsonr(gold, guess)[0])
    assert ours["spearman"] == pytest.approx(stats.spearmanr(gold, guess)[0])
    assert classification_metrics([1, 1, 1], [1, 1, 1], 2)["mcc"] == 0.0  # undefined: 0, not NaN


# --- files -----------------------------------------------------------------------------------------------------

def test_reads_tsv_csv_jsonl_and_headerless_files(tmp_path):
    tsv = write(tmp_path / "a.tsv", 'sentence\tlabel\nit is "fine"\t1\n\nbad\t0\n')
    split = read_split(tsv, ["sentence"], "label")
    assert split.texts == [('it is "fine"',), ("bad",)] and split.labels == ["1", "0"] and split.lines == [2, 4]
    csv_file = write(tmp_path / "a.csv", 'premise,hypothesis,score\n"a, b",c,0.5\nd,e,4\n')
    pairs = read_split(csv_file, ["premise", "hypothesis"], "score")
    assert pairs.texts[0] == ("a, b", "c") and encode_labels(pairs, "regression", None) == [0.5, 4.0]
    jsonl = write(tmp_path / "a.jsonl", '{"text": "x", "label": 2}\n{"text": "y", "label": 10}\n')
    split = read_split(jsonl, ["text"], "label")
    assert label_vocabulary(split) == ["2", "10"]  # integer labels sort as numbers
    cola = read_split(DATA / "cola" / "in_domain_dev.tsv", ["3"], "1", header=False)  # CoLA's headerless form
    assert len(cola) == 64 and set(cola.labels) == {"0", "1"} and cola.texts[0][0].endswith(".")


@pytest.mark.parametrize("content,columns,label,header,message", [
    ("sentence\tlabel\nx\t1\n", ["text"], "label", True, "no column 'text'"),
    ("sentence\tlabel\nx\t1\n", ["0"], "1", True, "--no-header"),
    ("x\t1\n", ["sentence"], "1", False, "not an index"),
    ("sentence\tlabel\nx\n", ["sentence"], "label", True, "line 2 has 1 fields"),
    ("sentence\tlabel\nx\t \n", ["sentence"], "label", True, "empty label"),
])
def test_bad_files_raise_one_line(tmp_path, content, columns, label, header, message):
    with pytest.raises(ValueError, match=message) as error:
        read_split(write(tmp_path / "f.tsv", content), columns, label, header)
    assert "\n" not in str(error.value)


# --- SiFT ------------------------------------------------------------------------------------------------------

def tiny_classifier(num_labels: int = 3):
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(**{**TINY, "vocab_size": 100}, num_labels=num_labels)
    return transformers.DebertaV2ForSequenceClassification(config).eval()


def test_symmetric_kl_is_both_kl_directions():
    p, q = torch.randn(4, 3), torch.randn(4, 3)
    log_p, log_q = p.log_softmax(-1), q.log_softmax(-1)
    both = (torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
            + torch.nn.functional.kl_div(log_p, log_q, log_target=True, reduction="batchmean"))
    assert symmetric_kl(p, q).item() == pytest.approx(both.item(), rel=1e-5)


def test_sift_hook_leaves_clean_function_and_ascends():
    model = tiny_classifier()
    ids = torch.randint(4, 100, (4, 12))
    mask = torch.ones_like(ids)
    norm = model.deberta.embeddings.LayerNorm
    with torch.no_grad():
        clean = model(input_ids=ids, attention_mask=mask).logits
        with SiFT(norm).perturbed(torch.zeros_like):  # standardise + zero: the same function
            assert (model(input_ids=ids, attention_mask=mask).logits - clean).abs().max() <= 1e-5

    def divergence(step: float) -> torch.Tensor:
        torch.manual_seed(1)  # the same initial perturbation for both
        return SiFT(norm, step=step)(lambda: model(input_ids=ids, attention_mask=mask).logits, clean)

    still, moved = divergence(0.0), divergence(0.05)
    assert 0 < still.item() < moved.item()  # the gradient step on the perturbation increases the divergence
    moved.backward()
    assert model.classifier.weight.grad.abs().sum() > 0 and model.deberta.encoder.layer[0].output.dense.weight.grad \
        .abs().sum() > 0


# --- end to end ------------------------------------------------------------------------------------------------

def test_sst2_slice_beats_chance(model_dir, tmp_path):
    # 200 training sentences, evaluated on the 200 held-out dev sentences; a random tiny model learns enough
    # sentiment words in 6 epochs to beat both constant predictors (50% / 50%) clearly.
    cfg = FinetuneConfig.from_preset("sst2", DATA, model=str(model_dir), output=str(tmp_path / "sst2"),
                                     max_train_examples=200, epochs=6, lr=3e-3, batch_size=16, max_length=64, seed=0,
                                     progress=False)
    result = finetune(cfg)
    chance = max(result["majority_accuracy"], 1 - result["majority_accuracy"])
    assert result["dev"]["accuracy"] >= chance + 0.04 and result["dev"]["mcc"] > 0.08
    assert result["train_examples"] == 200 and result["dev_examples"] == 200 and len(result["history"]) == 6
    assert json.loads((tmp_path / "sst2" / "metrics.json").read_text()) == result


def test_sift_classification_and_regression_run(model_dir, tmp_path, capsys):
    rows = [("good fun", 1, 4.5), ("dull and bad", 0, 0.5), ("great acting", 1, 4.0), ("awful", 0, 1.0)] * 4
    train = write(tmp_path / "train.jsonl", "".join(json.dumps({"s": s, "y": y, "r": r}) + "\n" for s, y, r in rows))
    common = ["--model", str(model_dir), "--train", train, "--dev", train, "--text-columns", "s", "--epochs", "1",
              "--batch-size", "8", "--sift", "--no-progress"]
    assert main([*common, "--label-column", "y", "--output", str(tmp_path / "cls")]) == 0
    assert main([*common, "--label-column", "r", "--task-type", "regression", "--random-init",
                 "--output", str(tmp_path / "reg")]) == 0
    classified = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    regressed = json.loads((tmp_path / "reg" / "metrics.json").read_text())
    assert classified["sift"] and set(classified["dev"]) >= {"accuracy", "f1", "mcc"}
    assert regressed["random_init"] and set(regressed["dev"]) >= {"pearson", "spearman"}
    assert "dev accuracy" in capsys.readouterr().out


def test_random_init_keeps_architecture_not_weights(model_dir, tmp_path):
    from debertav3.finetune.loop import load_model

    cfg = dict(model=str(model_dir), train="", dev="", text_columns=["s"], label_column="y", output=str(tmp_path))
    loaded, _ = load_model(FinetuneConfig(**cfg), ["0", "1"])
    fresh, _ = load_model(FinetuneConfig(**cfg, random_init=True), ["0", "1"])
    saved = transformers.AutoModel.from_pretrained(model_dir).embeddings.word_embeddings.weight
    assert torch.equal(loaded.deberta.embeddings.word_embeddings.weight, saved)
    assert not torch.equal(fresh.deberta.embeddings.word_embeddings.weight, saved)
    assert fresh.config.to_dict()["num_hidden_layers"] == loaded.config.to_dict()["num_hidden_layers"]


@pytest.mark.parametrize("problem,message", [
    ("column", "no column 'sentence2'"), ("dev_label", "label 'maybe' never occurs"),
    ("model", "not a model directory"), ("options", "missing: --dev"),
])
def test_bad_input_is_one_line_and_writes_nothing(model_dir, tmp_path, capsys, problem, message):
    train = write(tmp_path / "train.tsv", "sentence\tlabel\ngood\tyes\nbad\tno\n")
    dev = write(tmp_path / "dev.tsv", "sentence\tlabel\nfine\tmaybe\n" if problem == "dev_label"
                else "sentence\tlabel\nfine\tyes\n")
    out = tmp_path / "out"
    args = ["--model", str(tmp_path if problem == "model" else model_dir), "--train", train, "--dev", dev,
            "--text-columns", "sentence,sentence2" if problem == "column" else "sentence", "--label-column", "label",
            "--output", str(out), "--no-progress"]
    if problem == "options":
        args = args[:4] + args[6:]  # drop --dev
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
