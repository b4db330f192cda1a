"""Damaged checkpoints, failed writes, foreign checkpoints and concurrent runs (docs/reliability.md, "Crash safety
and exact resume").

Damage: each checkpoint file in turn is truncated, zero-filled, corrupted or deleted in the newest checkpoint;
resume=auto names it, falls back to the previous one, and the finished run equals an uninterrupted one.
Write failures come from the kernel: RLIMIT_FSIZE (EFBIG, allowed without root) while torch and safetensors
write, and a full tmpfs (ENOSPC) mounted in a user and mount namespace (`unshare -rm`; skipped where
unprivileged user namespaces are disabled, as mounting a tmpfs otherwise needs root).
"""

import errno
import fcntl
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator, PartialState
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file

from debertav3.data import train_tokenizer
from debertav3.train import load_config, main
from debertav3.train.checkpoint import (CONFIG_FILE, checkpoint_dirs, complete_checkpoints, prune, read_state,
                                        verify_checkpoint, write_failure)
from debertav3.train.lock import LOCK_FILE, claim_output_dir
from debertav3.train.loop import train
from debertav3.train.manifest import MANIFEST_FILE, verify, write_manifest

from conftest import ROOT, SMALL_MODEL, corpus_overrides, write_corpus

SMALL = {
    "model": SMALL_MODEL,
    "data": {"max_seq_length": 64, "num_proc": 1},
    "optim": {"warmup_steps": 2},
    "train": {"batch_size": 4, "max_steps": 6, "save_every": 2, "keep_last": 3, "eval_every": 1000,
              "eval_batches": 1, "log_every": 1000, "embedding_stats_every": 1000, "progress": False},
}
STEP = "step-{:08d}".format


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 60_000, 10_000)


def overrides(corpus, output_dir, *extra):
    return [*corpus_overrides(corpus), f"train.output_dir={output_dir}", *extra]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory, one_thread):
    """An uninterrupted 6-step run: checkpoints at steps 2, 4 and 6."""
    out = tmp_path_factory.mktemp("reference")
    train(load_config(SMALL, None, overrides(corpus, out)))
    assert [p.name for p in complete_checkpoints(out)] == [STEP(2), STEP(4), STEP(6)]
    return out


def interrupted_copy(reference, out, last_step=4):
    """`out` as if the reference run had been stopped after saving `last_step`."""
    shutil.copytree(reference / "checkpoints", out / "checkpoints",
                    ignore=lambda d, names: [n for n in names if n.startswith("step-") and int(n[5:]) > last_step])
    return out / "checkpoints"


def final_weights(output_dir):
    return load_file(complete_checkpoints(output_dir)[-1] / "model.safetensors")


def refused(capsys, corpus, output_dir, *extra):
    """main() as the command line runs it, expected to refuse: returns its one `error: ...` line."""
    with pytest.raises(SystemExit) as info:
        main(SMALL, overrides(corpus, output_dir, *extra))
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any(line.startswith("error") for line in lines[:-1]), err
    return lines[-1]


def truncate(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def zero_fill(path):
    path.write_bytes(bytes(path.stat().st_size))


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def garbage_but_resealed(checkpoint):
    """Whole by its manifest, yet unloadable: load_state itself fails, after it has loaded the model."""
    (checkpoint / "optimizer.bin").write_bytes(b"not a pickle")
    write_manifest(checkpoint)


DAMAGE = {  # what is done to the newest checkpoint -> the reason resume gives for skipping it
    "truncated model.safetensors": (lambda c: truncate(c / "model.safetensors"),
                                    "model.safetensors is truncated ("),
    "zero-filled optimizer.bin": (lambda c: zero_fill(c / "optimizer.bin"), "optimizer.bin is corrupted"),
    "truncated trainer_state.json": (lambda c: truncate(c / "trainer_state.json"), "trainer_state.json is truncated"),
    "deleted random_states_0.pkl": (lambda c: (c / "random_states_0.pkl").unlink(), "random_states_0.pkl is missing"),
    "zero-filled random_states_0.pkl": (lambda c: zero_fill(c / "random_states_0.pkl"),
                                        "random_states_0.pkl is corrupted"),
    "corrupted scheduler": (lambda c: flip_a_byte(c / "custom_checkpoint_0.pkl"),
                            "custom_checkpoint_0.pkl is corrupted"),
    "deleted manifest.json": (lambda c: (c / MANIFEST_FILE).unlink(), f"no {MANIFEST_FILE}"),
    "whole but unloadable": (garbage_but_resealed, "loading failed (UnpicklingError"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_skipped_and_the_run_still_matches(damage, corpus, reference, tmp_path, capsys):
    spoil, reason = DAMAGE[damage]
    root = interrupted_copy(reference, tmp_path)
    spoil(root / STEP(4))
    train(load_config(SMALL, None, overrides(corpus, tmp_path)))
    captured = capsys.readouterr()
    assert f"skipping checkpoint {root / STEP(4)}: {reason}" in captured.err, captured.err
    assert f"resumed from {root / STEP(2)} at step 2" in captured.out
    assert verify_checkpoint(root / STEP(4)) is None  # saved again over the damaged one
    expected, got = final_weights(reference), final_weights(tmp_path)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_verification_names_what_differs(tmp_path):
    """The reasons of the cases the runs above do not produce."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"1234")
    write_manifest(tmp_path)
    assert verify(tmp_path) is None
    with open(tmp_path / "sub" / "a.bin", "ab") as fh:
        fh.write(b"5")
    assert verify(tmp_path) == "sub/a.bin has grown (5 bytes, 4 in the manifest)"
    (tmp_path / MANIFEST_FILE).write_text('{"files": ')
    assert verify(tmp_path) == f"{MANIFEST_FILE} is not a valid manifest"
    assert verify(tmp_path / "nowhere") == "no such directory"


def test_an_explicit_damaged_checkpoint_is_refused(corpus, reference, tmp_path, capsys):
    root = interrupted_copy(reference, tmp_path)
    zero_fill(root / STEP(2) / "random_states_0.pkl")
    line = refused(capsys, corpus, tmp_path, f"train.resume={root / STEP(2)}")
    assert line == (f"error: train.resume={root / STEP(2)}: not a usable checkpoint (random_states_0.pkl is "
                    "corrupted (its SHA-256 differs from the manifest's)); use train.resume=auto or another "
                    "step-XXXXXXXX directory")


def test_checkpoints_none_of_which_is_whole_are_not_trained_over(corpus, reference, tmp_path, capsys):
    root = interrupted_copy(reference, tmp_path)
    for checkpoint in checkpoint_dirs(tmp_path):
        truncate(checkpoint / "optimizer.bin")
    line = refused(capsys, corpus, tmp_path)
    assert line.startswith(f"error: {root} holds 2 checkpoint(s) and none is usable (newest {STEP(4)}: "
                           "optimizer.bin is truncated (")
    assert line.endswith(f"move {root} aside to start afresh, or choose another train.output_dir")
    assert [p.name for p in checkpoint_dirs(tmp_path)] == [STEP(2), STEP(4)] and not (tmp_path / "tensorboard").exists()


def snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("resume", ["never", "other run"])
def test_checkpoints_of_another_run_are_never_overwritten(resume, corpus, reference, tmp_path, capsys):
    """resume=never, or a checkpoint of another output_dir, in an output_dir holding checkpoints: refused before
    anything is built or written."""
    interrupted_copy(reference, tmp_path)
    before = snapshot(tmp_path)
    resume = "never" if resume == "never" else str(reference / "checkpoints" / STEP(2))
    line = refused(capsys, corpus, tmp_path, f"train.resume={resume}")
    assert line == (f"error: {tmp_path} already holds checkpoints of another run (newest {STEP(4)}); use a new "
                    "train.output_dir, or train.resume=auto to continue it")
    assert snapshot(tmp_path).keys() - {tmp_path / LOCK_FILE} == before.keys()
    assert all(snapshot(tmp_path)[p] == before[p] for p in before)


@pytest.fixture(scope="module")
def other_tokenizer(corpus):
    return train_tokenizer([str(corpus / "train.txt")], 600, corpus.parent / "tokenizer600", seed=1).directory


@pytest.mark.parametrize("change", ["model", "seed", "batch", "lr groups", "lr groups, older checkpoint", "tokenizer",
                                    "train files", "processes"])
def test_resuming_with_what_changes_the_state_meaning_is_refused(change, corpus, reference, tmp_path, capsys,
                                                                  other_tokenizer):
    root = interrupted_copy(reference, tmp_path / "run", last_step=2)
    checkpoint = root / STEP(2)
    extra = {"model": ["model.intermediate_size=256"], "seed": ["train.seed=7"], "batch": ["train.batch_size=2"],
             "tokenizer": [f"data.tokenizer={other_tokenizer}"]}.get(change, [])
    if change.startswith("lr groups"):  # two parameter groups saved, four wanted: torch could not load them
        extra = ["optim.discriminator_lr_scale=2"]
    if change == "lr groups, older checkpoint":  # saved before the key existed: it ran with the default, 1
        saved = OmegaConf.load(checkpoint / CONFIG_FILE)
        del saved.optim["discriminator_lr_scale"]
        OmegaConf.save(saved, checkpoint / CONFIG_FILE)
        write_manifest(checkpoint)
    if change == "train files":  # the same name and place, one more line
        moved = write_corpus(tmp_path / "moved", 60_000, 10_000)
        with open(moved / "train.txt", "a") as fh:
            fh.write("one more line\n")
        extra = corpus_overrides(moved)
    if change == "processes":  # as if saved by a 2-process launch
        (checkpoint / "trainer_state.json").write_text(json.dumps(read_state(checkpoint) | {"num_processes": 2}))
        write_manifest(checkpoint)
    line = refused(capsys, corpus, tmp_path / "run", *extra)
    size = (corpus / "train.txt").stat().st_size
    expected = {
        "model": "was trained with a different model.intermediate_size (128 then, 256 now); resume with the same "
                 "setting",
        "seed": "was trained with a different train.seed (42 then, 7 now)",
        "batch": "was trained with a different train.batch_size (4 then, 2 now)",
        "lr groups": "was trained with a different optim.discriminator_lr_scale (1.0 then, 2.0 now)",
        "lr groups, older checkpoint": "was trained with a different optim.discriminator_lr_scale (1.0 then, 2.0 now)",
        "tokenizer": f"was trained with another tokenizer; resume with that one (a copy is in {checkpoint}/tokenizer)",
        "train files": f"was trained on other data.train_files (file 1: train.txt of {size} bytes then, train.txt of "
                       f"{size + 14} bytes now); resume with the same files",
        "processes": "was saved by 2 process(es) and this launch has 1; launch 2 to continue it exactly",
    }[change]
    assert line.startswith(f"error: {checkpoint} {expected}") and "train.resume=never" not in line, line
    assert line.endswith("or start a new run with a new train.output_dir"), line


def lower_file_size_limit_during_second_save(monkeypatch, limit):
    """Kernel-enforced write failures (EFBIG) while accelerate saves the second checkpoint."""
    real_save, calls = Accelerator.save_state, []

    def save_state(self, *args, **kwargs):
        calls.append(1)
        if len(calls) != 2:
            return real_save(self, *args, **kwargs)
        previous = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, previous[1]))
        try:
            return real_save(self, *args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, previous)
            signal.signal(signal.SIGXFSZ, handler)

    monkeypatch.setattr(Accelerator, "save_state", save_state)


def assert_step_2_whole_and_nothing_partial(output_dir):
    assert [p.name for p in checkpoint_dirs(output_dir)] == [STEP(2)]
    assert verify_checkpoint(checkpoint_dirs(output_dir)[0]) is None
    assert not list((Path(output_dir) / "checkpoints").glob(".step-*"))


@pytest.mark.parametrize("writer, limit, cause", [
    ("safetensors", 1 << 20, "File too large"),  # model.safetensors (5 MB) is the first file written
    ("torch.save", 7 << 20, "torch.save failed: [enforce fail at inline_container.cc"),  # optimizer.bin (10 MB)
])
def test_a_failed_write_ends_in_one_line_and_keeps_the_last_checkpoint(writer, limit, cause, corpus, tmp_path,
                                                                       capsys, monkeypatch):
    lower_file_size_limit_during_second_save(monkeypatch, limit)
    line = refused(capsys, corpus, tmp_path, "train.max_steps=4")
    assert line.startswith(f"error: could not write checkpoint step 4 in {tmp_path / 'checkpoints'} ({cause}"), line
    assert line.endswith(f"the earlier checkpoints are untouched (latest {STEP(2)}); free space or fix the disk, "
                         "then run again with train.resume=auto")
    assert_step_2_whole_and_nothing_partial(tmp_path)


def can_mount_tmpfs():
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /tmp"],
                           capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs unprivileged user namespaces (unshare -rm) for a tmpfs")
def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(corpus, tmp_path):
    """A 24 MB tmpfs: the step-2 checkpoint (15 MB) fits, the step-4 one fills it while torch writes
    optimizer.bin. The tmpfs lives as long as its namespace, so the script copies the output out."""
    mount, kept = tmp_path / "tmpfs", tmp_path / "kept"
    mount.mkdir()
    command = [sys.executable, str(ROOT / "recipes" / "rtd_tiny.py"), *overrides(corpus, mount / "run"),
               "train.max_steps=4", *(f"{section}.{k}={v}" for section in ("model", "data", "optim", "train")
                                      for k, v in SMALL[section].items() if k != "max_steps")]
    script = 'mount -t tmpfs -o size=24m tmpfs "$0" && "$@"; rc=$?; cp -a "$0/run" "$KEPT"; exit $rc'
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(mount), *command], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "KEPT": str(kept)})
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: could not write checkpoint step 4 in {mount / 'run' / 'checkpoints'} (No space left on device); "
        f"the earlier checkpoints are untouched (latest {STEP(2)}); free space or fix the disk, then run again "
        "with train.resume=auto")
    assert_step_2_whole_and_nothing_partial(kept)


@pytest.mark.parametrize("error, cause", [
    (OSError(errno.EIO, os.strerror(errno.EIO)), "Input/output error"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS)), "Read-only file system"),
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "No space left on device"),
    (RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: Read-only file "
                  "system"), "Read-only file system"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),  # a bug: re-raised, not blamed on the disk
    (KeyError("step"), None),
])
def test_write_failures_are_told_from_other_errors(error, cause, tmp_path):
    """The forms torch, safetensors and Python give write failures (seen on a full and a read-only tmpfs)."""
    assert write_failure(error, tmp_path) == cause


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    """After a fallback from a damaged step-6 to step-2, the run saves step 3 with keep_last=1."""
    for step in (2, 4, 6, 3):
        (tmp_path / "checkpoints" / STEP(step)).mkdir(parents=True)
        write_manifest(tmp_path / "checkpoints" / STEP(step))
    prune(tmp_path, tmp_path / "checkpoints" / STEP(3), keep_last=1)
    assert [p.name for p in complete_checkpoints(tmp_path)] == [STEP(3), STEP(4), STEP(6)]


def test_a_second_run_on_a_busy_output_dir_stops_at_once(corpus, tmp_path, capsys):
    with claim_output_dir(tmp_path, PartialState()):
        line = refused(capsys, corpus, tmp_path)
    assert line.startswith(f"error: {tmp_path} is in use by another run (pid {os.getpid()} on host "
                           f"{socket.gethostname()}, since ")
    assert line.endswith("); wait for it or choose another train.output_dir")
    assert os.listdir(tmp_path) == [LOCK_FILE]


def test_the_lock_dies_with_its_holder(corpus, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(300)",
                               str(tmp_path / "run" / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert "is in use by another run" in refused(capsys, corpus, tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    main(SMALL, overrides(corpus, tmp_path / "run", "train.max_steps=2"))
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == [STEP(2)]
    with open(tmp_path / "run" / LOCK_FILE) as fh:  # released when that run ended
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
