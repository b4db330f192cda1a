"""Checkpoints under `<output_dir>/checkpoints/step-XXXXXXXX/`, written so a crash never leaves a loadable bad one.

A checkpoint holds accelerate's state (model.safetensors, optimizer.bin, the scheduler as custom_checkpoint_0.pkl,
per-process random_states_N.pkl), our `trainer_state.json` (step, tokens seen, data position, what identifies
the run's data), the effective `config.yaml`, the `tokenizer/`, and last `manifest.json` (every other file's size
and SHA-256, see manifest.py). Every process writes into `.step-XXXXXXXX.tmp`; once all are done the main process
writes `trainer_state.json`, then the manifest, and renames the directory. A checkpoint is complete when its
manifest exists: the rename happens only after it, so a `step-*` directory without one was not written by this
version (or was copied incompletely), and is never loaded. `verify_checkpoint` checks a checkpoint against its
manifest before it is loaded (resume.py).

A failed write (disk full, I/O error, read-only filesystem) ends in one line naming the step and the cause; the
partial temporary directory is removed and the earlier checkpoints stay as they were.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from safetensors import SafetensorError

from ..io_utils import apply_umask, fsync_directory
from ..errors import UserError
from .manifest import MANIFEST_FILE, verify, write_manifest

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
NAME = re.compile(r"^step-(\d{8})$")
# torch.save's C++ writer reports a failed write as a RuntimeError without errno (on a full disk
# "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534", caused by "basic_ios::clear: iostream
# error"; other versions "PytorchStreamWriter failed writing file data/0: file write failed").
TORCH_WRITE_FAILURE = ("inline_container.cc", "PytorchStreamWriter", "file write failed", "iostream error")
TORCH_STRERROR = re.compile(r"strerror: (.+)$")  # torch's failure to open a file names the cause
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # safetensors writes with Rust's std::fs
NEARLY_FULL = 1 << 20


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def step_of(checkpoint: Path) -> int:
    return int(NAME.match(checkpoint.name).group(1))


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Every `step-*` directory, complete or not, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if NAME.match(p.name) and p.is_dir()), key=step_of)


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints whose manifest exists (they were completely written; `verify_checkpoint` says if still whole),
    oldest first."""
    return [p for p in checkpoint_dirs(output_dir) if (p / MANIFEST_FILE).is_file()]


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None if `checkpoint` is whole (every file as its manifest records, trainer_state.json readable), else why
    not, as a phrase."""
    problem = verify(checkpoint)
    if problem is None:
        try:
            read_state(checkpoint)
        except (OSError, ValueError):  # the manifest does not list it, or it was written unreadable
            problem = f"{STATE_FILE} is missing or not valid JSON"
    return problem


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, state: dict, config_yaml: str,
                    tokenizer, keep_last: int) -> Path:
    """Write checkpoint `step` atomically (all processes call this), then keep only the last `keep_last`.

    UserError if a file cannot be written: the partial checkpoint is removed, the earlier ones are untouched."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".{final.name}.tmp"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / CONFIG_FILE).write_text(config_yaml)
            tokenizer.save(tmp / "tokenizer")
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            apply_umask(tmp)  # safetensors writes model.safetensors 0600
            write_manifest(tmp)  # fsyncs every file, then marks the directory complete
            if final.exists():  # the same step saved again (train.nonfinite=stop right after a save)
                discard(final)
            os.replace(tmp, final)
            fsync_directory(root)
    except Exception as exc:
        reason = write_failure(exc, root)
        if reason is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        earlier = [p.name for p in complete_checkpoints(output_dir) if step_of(p) < step]
        kept = f"the earlier checkpoints are untouched (latest {earlier[-1]})" if earlier else "none was saved before"
        raise UserError(f"could not write checkpoint step {step} in {root} ({reason}); {kept}; free space or fix "
                        "the disk, then run again with train.resume=auto") from None
    if accelerator.is_main_process:
        prune(output_dir, final, keep_last)
    accelerator.wait_for_everyone()
    return final


def write_failure(exc: BaseException, directory: Path) -> str | None:
    """The cause (e.g. "No space left on device") if `exc` is a failure to write a file, else None: any other
    error is a bug to re-raise, not to report as a disk problem."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for error in chain:
        if isinstance(error, OSError):
            return error.strerror or str(error)
        if isinstance(error, SafetensorError) and (found := RUST_OS_ERROR.search(str(error))):
            return os.strerror(int(found.group(1)))
    torch_errors = [str(e) for e in chain if isinstance(e, RuntimeError)
                    and any(s in str(e) for s in TORCH_WRITE_FAILURE)]
    if not torch_errors:
        return None
    named = [found.group(1) for text in torch_errors if (found := TORCH_STRERROR.search(text))]
    return (named[0] if named else filesystem_problem(directory)) or \
        f"torch.save failed: {torch_errors[0].splitlines()[0]}"


def filesystem_problem(directory: Path) -> str | None:
    """Why nothing can be written in `directory` (full or read-only filesystem), as strerror would say it."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if stats.f_bavail * stats.f_frsize < NEARLY_FULL:  # what the failed write left free
        return os.strerror(errno.ENOSPC)
    return None


def prune(output_dir: str | os.PathLike, written: Path, keep_last: int) -> None:
    """Keep `written` and the `keep_last - 1` complete checkpoints before it; delete the older ones.

    Checkpoints after `written` are left alone: they are ones resume skipped as damaged (or left behind by
    resuming an earlier step), and are replaced when the run saves their step again."""
    before = [p for p in complete_checkpoints(output_dir) if step_of(p) < step_of(written)]
    for old in before[:max(0, len(before) - (keep_last - 1))]:
        discard(old)


def discard(checkpoint: Path) -> None:
    """Rename first, then delete: a crash mid-delete must not leave a partial `step-*` that still looks complete."""
    doomed = checkpoint.with_name(f".{checkpoint.name}.old")
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_stale_temporaries(output_dir: str | os.PathLike) -> None:
    """Delete what a crash left behind while writing or deleting a checkpoint (never loadable, only taking space)."""
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for leftover in [*root.glob(".step-*.tmp"), *root.glob(".step-*.old")]:
            shutil.rmtree(leftover, ignore_errors=True)
