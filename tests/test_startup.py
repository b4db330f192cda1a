"""What a run shows and writes before its first step: the header (not the whole config), config.yaml, no
`datasets` progress bars for reading the corpus; the trackers of train.log_with, W&B offline included."""

import glob
import re
import struct
from pathlib import Path

import pytest
from accelerate.utils import LoggerType

import debertav3.train.runtime as runtime
from conftest import SMALL_MODEL, corpus_overrides, the_line, write_corpus
from debertav3.ablation.curves import read_scalars
from debertav3.train import load_config, main

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = {"model": SMALL_MODEL, "data": {"max_seq_length": 64, "num_proc": 1}, "optim": {"warmup_steps": 1},
          "train": {"batch_size": 4, "max_steps": 3, "save_every": 3, "eval_every": 3, "eval_batches": 1,
                    "log_every": 1, "progress": False}}
HEADER = ("pretraining rtd with gdes embedding sharing in {out}",
          "  discriminator  64 x 2 layers: ",
          "  generator      64 x 1 layer: ",
          "  embeddings     E_G 8,064 x 64, E_Delta 8,064 x 64: 1,032,192 parameters",
          "  global batch   4 sequences of 64 tokens, 256 tokens per step (1 x 4 x 1: ",
          "  learning rate  0.001 (optim.lr_scaling=sqrt: 0.004 x sqrt(256 / 4,096 tokens per step); set optim.lr to "
          "choose it); optim.warmup_steps=1, train.max_steps=3",
          "  schedule       joint: one step on L_MLM + 50 L_RTD (rtd.schedule=joint)",
          "  precision      fp32 (train.mixed_precision=no) on cpu, 1 process",
          "  logging        none (train.log_with=[])",
          "  config         {out}/config.yaml (every key)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 40_000, 10_000)


def test_the_first_screen_is_the_header(corpus, tmp_path, capsys):
    """A fresh datasets cache, so that the documents are read (where `datasets` drew its "Generating train split"
    bars); the lr chosen by the sqrt rule: 4e-3 x sqrt(256 / 4096) = 1e-3."""
    out = tmp_path / "run"
    main(RECIPE, [*corpus_overrides(corpus), f"train.output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}",
                  "optim.lr=4e-3", "optim.lr_scaling=sqrt", "optim.lr_reference_tokens=4096",
                  "train.mixed_precision=no", "train.log_with=[]"])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    for line, expected in zip(lines, HEADER):
        assert line.startswith(expected.format(out=out)), (line, expected)
    assert re.fullmatch(r"  discriminator  64 x 2 layers: [\d,]+ parameters without the word embeddings", lines[1])
    assert "vocab_size" not in captured.out and "objective:" not in captured.out  # no config dump
    assert "Generating train split" not in captured.err and "tokenize and pack" in captured.err
    saved = load_config(None, str(out / "config.yaml"))  # the resolved config: it trains at the same lr again
    assert (saved.optim.lr, saved.optim.lr_scaling, saved.train.output_dir) == (pytest.approx(1e-3), "none", str(out))
    assert not (out / "tensorboard").exists()


def test_a_tracker_that_is_not_installed_is_refused(corpus, tmp_path, capsys, monkeypatch):
    """Where wandb is installed, it is made to look absent (accelerate asks the same function)."""
    monkeypatch.setattr(runtime, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
    with pytest.raises(SystemExit) as info:
        main(RECIPE, [*corpus_overrides(corpus), f"train.output_dir={tmp_path / 'run'}", "train.log_with=wandb"])
    assert info.value.code == 2
    assert the_line(capsys.readouterr().err) == ("error: train.log_with names wandb, which is not installed; pip "
                                                 "install wandb, or leave it out of train.log_with")
    assert not (tmp_path / "run").exists()


def wandb_history(run_file: str) -> dict[int, dict[str, str]]:
    """step -> {metric: value as JSON} of an offline W&B run's history, read from its .wandb file: a LevelDB-style
    log (32 KiB blocks of records with a 7-byte header: CRC, length, type) of protobuf `Record`s, after a 7-byte
    file header."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending, history = Path(run_file).read_bytes(), 7, b"", {}
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or kind == 0:  # the block's zero padding
            position += left
            continue
        pending, position = pending + data[position + 7:position + 7 + length], position + 7 + length
        if kind in (1, 4):  # a whole record, or its last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
                history[int(items["_step"])] = items
    return history


def test_wandb_offline_gets_what_tensorboard_gets(corpus, tmp_path, monkeypatch):
    try:
        import wandb
    except ImportError:
        reason = "wandb is not installed (pip install -e '.[dev]' brings it)"
        print(reason)
        pytest.skip(reason)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    main(RECIPE, [*corpus_overrides(corpus), f"train.output_dir={out}", "train.log_with=[tensorboard,wandb]"])
    wandb.teardown()  # stops W&B's service process
    history = wandb_history(glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))[0])
    tensorboard = read_scalars(out / "tensorboard")
    assert sorted(history) == [1, 2, 3]
    for step in (1, 2, 3):
        assert float(history[step]["train/loss"]) == pytest.approx(tensorboard["train/loss"][step], rel=1e-6)
    assert float(history[3]["eval/rtd_auc"]) == pytest.approx(tensorboard["eval/rtd_auc"][3], rel=1e-6)
