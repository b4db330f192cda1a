"""Checkpoints under `<output_dir>/checkpoints/step-XXXXXXXX/`, written so a crash never leaves a loadable bad one.

A checkpoint holds accelerate's state (model.safetensors, optimizer, scheduler, per-process RNG states), our own
`trainer_state.json` (step, tokens seen, data position), the effective `config.yaml` and the `tokenizer/`.
Every process writes into `.step-XXXXXXXX.tmp`; once all are done the main process writes `trainer_state.json`
last and renames the directory. Resume only considers `step-*` directories that contain `trainer_state.json`,
so a directory a crash left behind (temporary, or missing its state) is never loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..io_utils import atomic_write_text, fsync_directory, fsync_tree

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def resolve_resume(output_dir: str | os.PathLike, resume: str) -> Path | None:
    """`auto`: the latest complete checkpoint (None if there is none); `never`: None; else that directory."""
    if resume == "never":
        return None
    if resume == "auto":
        done = complete_checkpoints(output_dir)
        return done[-1] if done else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"train.resume={resume}: no complete checkpoint there (missing {STATE_FILE}); "
                                "use train.resume=auto or a step-XXXXXXXX directory")
    return path


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, state: dict, config_yaml: str,
                    tokenizer, keep_last: int) -> Path:
    """Write checkpoint `step` atomically (all processes call this), then keep only the last `keep_last`."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / CONFIG_FILE).write_text(config_yaml)
        tokenizer.save(tmp / "tokenizer")
        fsync_tree(tmp)
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))  # last: marks the directory complete
        if final.exists():  # the same step saved again (e.g. the end of a resumed run)
            discard(final)
        os.replace(tmp, final)
        fsync_directory(root)
        for old in complete_checkpoints(output_dir)[:-keep_last]:
            discard(old)
    accelerator.wait_for_everyone()
    return final


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


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())
