"""The trackers of train.log_with, W&B offline included."""

import glob
import struct
from pathlib import Path

import pytest
from accelerate.utils import LoggerType

import debertav3.train.loop as loop
from conftest import SMALL_MODEL, corpus_overrides, the_line, write_corpus
from debertav3.train import main

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = {"model": SMALL_MODEL, "data": {"max_seq_length": 64, "num_proc": 1}, "optim": {"warmup_steps": 1},
          "train": {"batch_size": 4, "max_steps": 3, "save_every": 3, "eval_every": 3, "eval_batches": 1,
                    "log_every": 1, "progress": False}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 40_000, 10_000)


def test_a_tracker_that_is_not_installed_is_refused(corpus, tmp_path, capsys, monkeypatch):
    """Where wandb is installed, it is made to look absent (accelerate asks the same function)."""
    monkeypatch.setattr(loop, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
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
        reason = "wandb is not installed (it is not in the dev extra: pip install wandb to run this test)"
        print(reason)
        pytest.skip(reason)
    from test_train import scalars

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    main(RECIPE, [*corpus_overrides(corpus), f"train.output_dir={out}", "train.log_with=[tensorboard,wandb]"])
    wandb.teardown()  # stops W&B's service process
    history = wandb_history(glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))[0])
    tensorboard = scalars(out)
    assert sorted(history) == [1, 2, 3]
    for step in (1, 2, 3):
        assert float(history[step]["train/loss"]) == pytest.approx(tensorboard["train/loss"][step], rel=1e-6)
    assert float(history[3]["eval/rtd_auc"]) == pytest.approx(tensorboard["eval/rtd_auc"][3], rel=1e-6)
