"""Bad input to every entry point: one line `error: ...` that names the problem and the fix, exit status 2, no
traceback, nothing written; Ctrl-C outside the training loop: one line `interrupted: ...`, status 130; a bug of
ours still shows its traceback. docs/reliability.md ("Bad input") lists every case with its message."""

import gzip
import importlib.util
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from conftest import BUNDLED_CORPUS, ROOT, SMALL_MODEL, the_line, write_corpus
from debertav3 import ModelConfig
from debertav3.ablation.cli import main as ablate
from debertav3.ablation.sweep_cli import main as sweep
from debertav3.data import Tokenizer
from debertav3.train.export import main as export
from debertav3.finetune import cli as finetune_cli
from debertav3.data.labelled import read_split
from debertav3.interop.hf import config_to_hf
from debertav3.train import load_config, main as pretrain
from debertav3.train.checkpoint import complete_checkpoints
from debertav3.train.config_io import to_yaml
from debertav3.errors import ScheduleWarning

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers", reason="fine-tuning runs transformers' DebertaV2 classes")

SMALL = {"model": SMALL_MODEL, "data": {"max_seq_length": 64, "num_proc": 1}, "optim": {"warmup_steps": 1},
         "train": {"batch_size": 4, "max_steps": 2, "save_every": 2, "eval_every": 2, "eval_batches": 1,
                   "progress": False}}
_spec = importlib.util.spec_from_file_location("train_tokenizer_tool", ROOT / "tools" / "train_tokenizer.py")
train_tokenizer_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_tokenizer_tool)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small corpus and every kind of broken input file."""
    folder = write_corpus(tmp_path_factory.mktemp("inputs"), 60_000, 10_000)
    (folder / "a_file").write_text("not a directory")
    (folder / "syntax.yaml").write_text("train:\n  max_steps: [3\n")
    (folder / "list.yaml").write_text("- train.max_steps=3\n")
    (folder / "a_dir").mkdir()
    (folder / "garbage_tokenizer").mkdir()
    (folder / "garbage_tokenizer" / "spm.model").write_bytes(b"not a sentencepiece model" * 40)
    text = (folder / "train.txt").read_text()
    whole = gzip.compress(text.encode())
    (folder / "short.txt.gz").write_bytes(whole[:len(whole) // 2])  # breaks off in its first document
    paragraphs = gzip.compress("\n\n".join(text.split()[:20_000]).encode())  # one word per document
    (folder / "late.txt.gz").write_bytes(paragraphs[:len(paragraphs) // 2])  # breaks off after many documents
    pq.write_table(pa.table({"text": pa.array([1, 2, 3], pa.int64())}), folder / "ints.parquet")
    (folder / "damaged_model").mkdir()
    (folder / "damaged_model" / "config.json").write_text("{}")
    (folder / "damaged_model" / "model.safetensors").write_bytes(b"\x10" + bytes(200))  # a header cut short
    return folder


# --- pretraining: the recipes (debertav3.train.main) -----------------------------------------------------------

PRETRAIN = {
    "learning rate inf": (["optim.lr=inf"], "optim.lr must be a finite number > 0, got inf"),
    "learning rate nan": (["optim.lr=nan"], "optim.lr must be a finite number > 0, got nan"),
    "negative max_grad_norm": (["optim.max_grad_norm=-1"], "optim.max_grad_norm must be a finite number > 0"),
    "zero eps": (["optim.eps=0"], "optim.eps must be a finite number > 0, got 0.0"),
    "beta2 of 1": (["optim.beta2=1"], "optim.beta2 must be in [0, 1), got 1.0"),
    "infinite weight decay": (["optim.weight_decay=inf"], "optim.weight_decay must be a finite number >= 0"),
    "temperature nan": (["rtd.temperature=nan"], "rtd.temperature must be a finite number > 0, got nan"),
    "rtd_weight nan": (["rtd.rtd_weight=nan"], "rtd.rtd_weight must be a finite number >= 0, got nan"),
    "mask_prob masks nothing": (["data.mask_prob=0.001"], "raise data.mask_prob to >= 0.0161"),
    "layer_norm_eps nan": (["model.layer_norm_eps=nan"], "model.layer_norm_eps must be a finite number > 0"),
    "initializer_range inf": (["model.initializer_range=inf"], "model.initializer_range must be a finite number"),
    "no validation blocks": (["data.max_valid_blocks=0"], "data.max_valid_blocks must be positive, got 0"),
    "zero generator layers": (["model.generator_layers=0"], "model.generator_layers must be positive"),
    "generator wider than the discriminator": (["model.generator_hidden_size=4096"],
                                               "model.generator_hidden_size must be in [1, model.hidden_size"),
    "negative seed": (["train.seed=-1"], "train.seed must be in [0, 2^32), got -1"),
    "override that is not YAML": (["data.train_files=[a.txt"], "its value is not valid YAML"),
    "YAML syntax error": (["--config", "{files}/syntax.yaml"], "is not valid YAML at line 3, column 1"),
    "YAML list": (["--config", "{files}/list.yaml"], "holds a list, not a mapping of sections"),
    "config is a directory": (["--config", "{files}/a_dir"], "is a directory; give a YAML file"),
    "unknown option": (["--confg", "x.yaml"], "unrecognized arguments: --confg"),
    "damaged spm.model": (["data.tokenizer={files}/garbage_tokenizer"], "is not a SentencePiece model"),
    "corpus truncated early": (["data.train_files=[{files}/short.txt.gz]"], "short.txt.gz cannot be read to its end"),
    "corpus truncated late": (["data.train_files=[{files}/late.txt.gz]"], "late.txt.gz cannot be read to its end"),
    "corpus truncated late, two processes": (["data.num_proc=2", "data.train_files=[{files}/late.txt.gz,"
                                              "{files}/train.txt]"], "late.txt.gz cannot be read to its end"),
    "parquet column of integers": (["data.train_files=[{files}/ints.parquet]"], "'text' column of int64"),
    "corpus is a directory": (["data.train_files=[{files}/a_dir]"], "a_dir is a directory; name its files"),
    "init from damaged weights": (["model.init_discriminator={files}/damaged_model"], "cannot be read"),
    "cache_dir under a file": (["data.cache_dir={files}/a_file/cache"], "data.cache_dir {files}/a_file/cache cannot"),
}


def pretrain_line(capsys, files, output_dir, *overrides) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        pretrain(SMALL, [f"data.train_files=[{files / 'train.txt'}]", f"data.valid_files=[{files / 'valid.txt'}]",
                         f"train.output_dir={output_dir}", *overrides])
    return info.value.code, the_line(capsys.readouterr().err)


@pytest.mark.parametrize("name", PRETRAIN)
def test_pretraining(name, files, tmp_path, capsys):
    overrides, expected = PRETRAIN[name]
    code, line = pretrain_line(capsys, files, tmp_path / "run", *[o.format(files=files) for o in overrides])
    assert code == 2 and expected.format(files=files) in line, line
    assert not complete_checkpoints(tmp_path / "run")


def test_unreadable_config_file(files, tmp_path, capsys, monkeypatch):
    """The tests may run as root, who reads any file: the permission error is raised where the file is opened."""
    def denied(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(OmegaConf, "load", denied)
    code, line = pretrain_line(capsys, files, tmp_path / "run", "--config", str(files / "syntax.yaml"))
    assert code == 2 and "cannot be read (Permission denied); check its permissions" in line
    assert not (tmp_path / "run").exists()


def test_unreachable_hub_dataset(files, tmp_path, capsys, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/nothing' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SystemExit) as info:
        pretrain(SMALL, ["data.dataset_name=someone/nothing", f"train.output_dir={tmp_path / 'run'}"])
    line = the_line(capsys.readouterr().err)
    assert info.value.code == 2 and "data.dataset_name 'someone/nothing' cannot be loaded" in line


def test_warmup_longer_than_the_run_warns():
    with pytest.warns(ScheduleWarning, match=r"optim.warmup_steps \(10\) is longer than train.max_steps \(5\)"):
        load_config(None, None, ["train.max_steps=5", "optim.warmup_steps=10"])


# --- fine-tuning: tools/finetune.py -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny DebertaV2 directory with our tokenizer, and broken copies of it."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for name, vocab in (("good", SMALL_MODEL["vocab_size"]), ("small_vocab", 1000)):
        config = transformers.DebertaV2Config(**config_to_hf(ModelConfig(**{**SMALL_MODEL, "vocab_size": vocab}),
                                                             ["DebertaV2Model"]))
        transformers.DebertaV2Model(config).save_pretrained(root / name)
        Tokenizer.load().save(root / name)
    shutil.copytree(root / "good", root / "no_tokenizer")
    (root / "no_tokenizer" / "spm.model").unlink()
    shutil.copytree(root / "good", root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return root


def write(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_text(text, encoding=encoding)
    return str(path)


FINETUNE = {
    "model without spm.model": (dict(model="no_tokenizer"), "has no tokenizer (no spm.model or tokenizer.json)"),
    "truncated weights": (dict(model="truncated"), "cannot be loaded by transformers"),
    "tokenizer larger than the embeddings": (dict(model="small_vocab"), "its tokenizer has 8001 ids but the"),
    "regression label nan": (dict(task_type="regression", dev="s\tlabel\ngood\t1.5\nbad\tnan\n"),
                             "dev.tsv line 3: label 'nan' is not a finite number"),
    "one label only": (dict(train="s\tlabel\ngood\t1\nbad\t1\n"), "has the label '1'; a classifier needs two"),
    "missing label column": (dict(train="s\tscore\ngood\t1\nbad\t0\n"), "has no column 'label'"),
    "empty file": (dict(train=""), "train.tsv is empty"),
    ".txt without tabs": (dict(train="good,1\nbad,0\n", suffix=".txt"), "its first line has no tab"),
    "not UTF-8": (dict(train="s\tlabel\ncaf\xe9\t1\nbad\t0\n", encoding="latin-1"), "is not UTF-8 text"),
    "data file is a directory": (dict(train_dir=True), "is a directory; give a .tsv"),
    "learning rate nan": (dict(extra=["--lr", "nan"]), "--lr must be a finite number > 0, got nan"),
    "max length without room for text": (dict(extra=["--max-length", "2"]), "--max-length 2 leaves no room"),
    "negative seed": (dict(extra=["--seed", "-1"]), "--seed must be in [0, 2^32), got -1"),
    "output under a file": (dict(output="a_file/out"), "a_file is a file, not a directory; choose another"),
    "epochs not a number": (dict(extra=["--epochs", "many"]), "argument --epochs: invalid int value: 'many'"),
}


def finetune_args(models: Path, tmp: Path, model="good", train="s\tlabel\ngood\t1\nbad\t0\n",
                  dev="s\tlabel\nfine\t1\n", suffix=".tsv", encoding="utf-8", task_type="classification",
                  output="out", train_dir=False, extra=()) -> list[str]:
    (tmp / "a_file").write_text("")
    train_file = str(tmp) if train_dir else write(tmp / f"train{suffix}", train, encoding)
    return ["--model", str(models / model), "--train", train_file, "--dev", write(tmp / "dev.tsv", dev),
            "--text-columns", "s", "--label-column", "label", "--task-type", task_type, "--output",
            str(tmp / output), "--epochs", "1", "--no-progress", *extra]


def exit_status(main, argv: list[str]) -> int:
    """What the command would exit with: `main`'s return value, or the status it exits with (argparse's errors)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("name", FINETUNE)
def test_finetuning(name, models, tmp_path, capsys):
    changes, expected = FINETUNE[name]
    code = exit_status(finetune_cli.main, finetune_args(models, tmp_path, **changes))
    line = the_line(capsys.readouterr().err)
    assert code == 2 and expected in line, line
    assert not (tmp_path / "out").exists()


def test_bom_and_mrpc_files_are_read(tmp_path):
    """GLUE's MRPC files: tab-separated .txt, a UTF-8 byte-order mark before the header, columns with spaces."""
    mrpc = write(tmp_path / "msr_paraphrase_train.txt", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                                         "1\t1\t2\tA cat sat.\tThe cat sat.\n")
    split = read_split(mrpc, ["#1 String", "#2 String"], "Quality")
    assert split.texts == [("A cat sat.", "The cat sat.")] and split.labels == ["1"]


# --- the other tools ----------------------------------------------------------------------------------------------

def checkpoint_like(tmp: Path, config_yaml: str, spm: bytes) -> str:
    """What export reads before any weight: trainer_state.json, config.yaml, tokenizer/spm.model."""
    checkpoint = tmp / "step-00000002"
    (checkpoint / "tokenizer").mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"step": 2}')
    (checkpoint / "model.safetensors").write_bytes(b"")
    (checkpoint / "config.yaml").write_text(config_yaml)
    (checkpoint / "tokenizer" / "spm.model").write_bytes(spm)
    return str(checkpoint)


def ablation_args(tmp: Path, *extra: str) -> list[str]:
    """A one-seed, two-step ablation on a two-line CoLA (the errors come before anything runs)."""
    cola = tmp / "data" / "cola"
    cola.mkdir(parents=True)
    for split in ("in_domain_train.tsv", "in_domain_dev.tsv"):
        (cola / split).write_text("src\t1\t\tgood\nsrc\t0\t\tbad\n")
    return ["--max-steps", "2", "--seeds", "1", "--tasks", "cola", "--data-dir", str(tmp / "data"), *extra]


def tokenizer_args(corpus: Path, output: Path, *extra: str) -> list[str]:
    return ["--input", str(corpus), "--vocab-size", "300", "--output", str(output), *extra]


# name -> (entry point, its arguments from (files, tmp_path), expected part of the line)
TOOLS = {
    "export: output under a file": (export, lambda f, t: [str(t / "none"), str(f / "a_file" / "out")],
                                    "output directory {files}/a_file/out cannot be created"),
    "export: YAML syntax error in config.yaml": (
        export, lambda f, t: [checkpoint_like(t, "model: [\n", b""), str(t / "out")], "is not valid YAML"),
    "export: damaged spm.model": (
        export, lambda f, t: [checkpoint_like(t, to_yaml(load_config(SMALL)), b"junk" * 10), str(t / "out")],
        "no usable tokenizer/spm.model"),
    "train_tokenizer: output under a file": (
        train_tokenizer_tool.main, lambda f, t: tokenizer_args(f / "train.txt", f / "a_file" / "out"),
        "--output {files}/a_file/out cannot be created"),
    "train_tokenizer: truncated input": (
        train_tokenizer_tool.main, lambda f, t: tokenizer_args(f / "late.txt.gz", t / "out"),
        "late.txt.gz cannot be read to its end"),
    "train_tokenizer: parquet column of integers": (
        train_tokenizer_tool.main, lambda f, t: tokenizer_args(f / "ints.parquet", t / "out"), "column of int64"),
    "train_tokenizer: character coverage": (
        train_tokenizer_tool.main,
        lambda f, t: tokenizer_args(f / "train.txt", t / "out", "--character-coverage", "0.5"),
        "--character-coverage must be in [0.98, 1], got 0.5"),
    "train_tokenizer: negative seed": (
        train_tokenizer_tool.main, lambda f, t: tokenizer_args(f / "train.txt", t / "out", "--seed", "-1"),
        "--seed must be in [0, 2^32), got -1"),
    "ablate: fine-tuning lr nan": (
        ablate, lambda f, t: ablation_args(t, "--output", str(t / "out"), "--finetune-lr", "nan"),
        "--finetune-lr must be a finite number > 0, got nan"),
    "ablate: output under a file": (ablate, lambda f, t: ablation_args(t, "--output", str(f / "a_file" / "out")),
                                    "--output {files}/a_file/out cannot be created"),
    "sweep: output under a file": (sweep, lambda f, t: ["--variant", "a=", "--output", str(f / "a_file" / "out")],
                                   "--output {files}/a_file/out cannot be created"),
    "sweep: variant with a bad value": (
        sweep, lambda f, t: ["--variant", "a=rtd.temperature=0", "--output", str(t / "out")],
        "variant a: rtd.temperature must be a finite number > 0, got 0.0"),
}


@pytest.mark.parametrize("name", TOOLS)
def test_tools(name, files, tmp_path, capsys):
    main, arguments, expected = TOOLS[name]
    code = exit_status(main, arguments(files, tmp_path))
    line = the_line(capsys.readouterr().err)
    assert code == 2 and expected.format(files=files) in line, line
    assert not (tmp_path / "out").exists()


# --- Ctrl-C and bugs -------------------------------------------------------------------------------------------

@pytest.fixture
def sigint_restored():
    """An interrupted command leaves SIGINT to end the process at once (usage.py): put pytest's handler back."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("cleanup", [None, TimeoutError])
def test_ctrl_c_while_fine_tuning(models, tmp_path, capsys, monkeypatch, sigint_restored, cleanup):
    """Ctrl-C, or an error of the cleanup it sets off (datasets' pool waits for its workers in a `finally` and
    raises TimeoutError), ends in one line and status 130."""
    def interrupted(cfg):
        try:
            raise KeyboardInterrupt
        finally:
            if cleanup:
                raise cleanup("waiting for the workers")

    monkeypatch.setattr(finetune_cli, "finetune", interrupted)
    assert finetune_cli.main(finetune_args(models, tmp_path)) == 130
    line = the_line(capsys.readouterr().err, "interrupted")
    assert line == "interrupted: nothing was written; rerun the same command to start again"


def test_bug_keeps_its_traceback(models, tmp_path, monkeypatch):
    def bug(cfg):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(finetune_cli, "finetune", bug)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        finetune_cli.main(finetune_args(models, tmp_path))


HALF_BUILT_AFTER_CTRL_C = """
import sys
from debertav3 import usage

class HalfBuilt:  # a pool cut off inside __init__: its __del__ reads an attribute that was never set
    def __del__(self):
        self._state

def work():
    global leftover
    leftover = HalfBuilt()
    raise KeyboardInterrupt

status, _ = usage.guarded(work, "nothing was kept")
del leftover
sys.exit(status)
"""


def test_ctrl_c_leaves_no_traceback_from_half_built_objects():
    result = subprocess.run([sys.executable, "-c", HALF_BUILT_AFTER_CTRL_C], capture_output=True, text=True)
    assert result.returncode == 130
    assert "Exception ignored" not in result.stderr
    assert the_line(result.stderr, "interrupted") == "interrupted: nothing was kept"


def test_ctrl_c_twice_while_tokenizing(tmp_path):
    """Two Ctrl-C from a terminal (SIGINT to the whole process group: the pretraining process, datasets' pool and
    manager) while two processes tokenize: one line, status 130 (or death by the second SIGINT, which a shell
    also reports as 130), no traceback from any process, no checkpoint."""
    with gzip.open(BUNDLED_CORPUS, "rt") as fh:
        text = fh.read(4_000_000)
    for i in range(2):
        (tmp_path / f"part{i}.txt").write_text(text[i * 2_000_000:(i + 1) * 2_000_000])
    command = [sys.executable, str(ROOT / "recipes" / "rtd_tiny.py"), f"train.output_dir={tmp_path / 'run'}",
               f"data.train_files=[{tmp_path / 'part0.txt'},{tmp_path / 'part1.txt'}]", "data.num_proc=2",
               f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=2", "optim.warmup_steps=1"]
    env = {k: v for k, v in os.environ.items() if k != "HF_DATASETS_DISABLE_PROGRESS_BARS"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
                               env={**env, "OMP_NUM_THREADS": "1"})
    try:
        err, deadline = b"", time.monotonic() + 60
        while b"tokenize and pack" not in err and time.monotonic() < deadline and process.poll() is None:
            if select.select([process.stderr], [], [], 1)[0]:
                err += os.read(process.stderr.fileno(), 1 << 16)
        assert b"tokenize and pack" in err, err.decode()
        for _ in range(2):
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.2)
        err += process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode in (130, -signal.SIGINT), err.decode()
    assert the_line(err.decode(), "interrupted") == \
        "interrupted: no checkpoint was saved; rerun the same command to start again"
    assert not complete_checkpoints(tmp_path / "run")
