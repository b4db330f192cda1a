"""Which checkpoint a run continues from, and the checks that make continuing it safe and exact.

- `refuse_foreign_checkpoints`: a run that would not continue the checkpoints already in its output_dir
  (`train.resume=never`, or a checkpoint elsewhere) is refused before it writes anything, since its saves and
  pruning would replace and delete them.
- `restore`: `train.resume=auto` loads the newest checkpoint that is whole (every file as its manifest records)
  and loads; each one skipped is named on stderr with the reason. If checkpoints exist but none is whole the run
  is refused rather than started from zero beside them. An explicit `train.resume=DIR` that is not whole is
  refused. (accelerate itself would silently skip a missing or unreadable random_states file: the manifest
  catches both.)
- `check_compatible`: a checkpoint is continued only with what gives its state its meaning unchanged: the model,
  objective and data settings of its config.yaml, the tokenizer, the training files, the seed and batch layout,
  and the number of processes (each restores its own random state).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate.utils import broadcast_object_list, gather_object
from omegaconf import OmegaConf

from ..data.corpus import BUNDLED_TRAIN
from ..data.sources import resolve_files
from .checkpoint import (CONFIG_FILE, checkpoint_dirs, checkpoint_root, read_state, remove_stale_temporaries,
                         verify_checkpoint)
from ..errors import UserError

# Config keys whose change alters what a saved state means: the architecture, the objective, which blocks and
# masks step k sees, the optimizers and their parameter groups (one optimizer or two, one lr or the
# discriminator's apart), which steps train the generator alone. The rest (learning rate, logging, evaluation,
# paths) may change on resume.
COMPARED = ("objective", "model", "rtd.embedding_sharing", "rtd.schedule", "rtd.generator_warmup_steps", "mt",
            "data", "train.seed", "train.batch_size", "train.gradient_accumulation_steps",
            "optim.discriminator_lr_scale")
# Exempt: initial weights only matter before step 1; the files and the tokenizer are compared by content
# (RunIdentity), not by path, so a corpus may move; the rest touch evaluation or speed only.
EXEMPT = ("model.init_discriminator", "model.init_generator", "model.generator_start", "data.train_files",
          "data.tokenizer", "data.valid_files", "data.max_valid_blocks", "data.num_proc", "data.num_workers", "data.cache_dir")
NEW_RUN = "start a new run with a new train.output_dir"


@dataclass(frozen=True)
class RunIdentity:
    """What, beyond the config, fixes the meaning of a run's state; saved in trainer_state.json."""

    train_files: tuple  # ((file name, size in bytes), ...) of the resolved data.train_files; () for a hub dataset
    tokenizer_sha256: str  # of the SentencePiece model
    num_processes: int

    @classmethod
    def of(cls, cfg, tokenizer, num_processes: int) -> "RunIdentity":
        data = cfg.data
        files = () if data.dataset_name else resolve_files(data.train_files or [str(BUNDLED_TRAIN)],
                                                           "data.train_files", data.text_field)
        return cls(tuple((os.path.basename(f), os.path.getsize(f)) for f in files),
                   hashlib.sha256(tokenizer.sp.serialized_model_proto()).hexdigest(), num_processes)

    def as_state(self) -> dict:
        return {**asdict(self), "train_files": [list(f) for f in self.train_files]}


def refuse_foreign_checkpoints(output_dir: str | os.PathLike, resume: str) -> None:
    """UserError if `output_dir` holds checkpoints that this run would not continue (see the module doc)."""
    found = checkpoint_dirs(output_dir)
    if not found or resume == "auto":
        return
    if resume != "never" and Path(resume).resolve().parent == checkpoint_root(output_dir).resolve():
        return  # a checkpoint of this same run: continuing it from an earlier step
    raise UserError(f"{output_dir} already holds checkpoints of another run (newest {found[-1].name}); use a new "
                    "train.output_dir, or train.resume=auto to continue it")


def restore(accelerator, output_dir: str | os.PathLike, resume: str, cfg, identity: RunIdentity
            ) -> tuple[Path, dict] | None:
    """Load the checkpoint to continue from into `accelerator` (every process calls this): (it, its trainer
    state), or None to start from step 0. UserError if no checkpoint can be continued (see the module doc)."""
    if accelerator.is_main_process:
        remove_stale_temporaries(output_dir)
    accelerator.wait_for_everyone()
    if resume == "never":
        return None  # refuse_foreign_checkpoints made sure there is nothing here to continue
    candidates = checkpoint_dirs(output_dir)[::-1] if resume == "auto" else [Path(resume)]
    newest_problem = None
    for checkpoint in candidates:
        # The main process reads and hashes the files; the others need only its verdict.
        problem = broadcast_object_list([verify_checkpoint(checkpoint) if accelerator.is_main_process else None])[0]
        if problem is None:
            check_compatible(checkpoint, cfg, identity)
            problem = load(accelerator, checkpoint)
        if problem is None:
            return checkpoint, read_state(checkpoint)
        if resume != "auto":
            raise UserError(f"train.resume={resume}: not a usable checkpoint ({problem}); use train.resume=auto "
                            "or another step-XXXXXXXX directory")
        accelerator.print(f"skipping checkpoint {checkpoint}: {problem}", file=sys.stderr)
        newest_problem = newest_problem or problem
    if candidates:
        root = checkpoint_root(output_dir)
        raise UserError(f"{root} holds {len(candidates)} checkpoint(s) and none is usable (newest "
                        f"{candidates[0].name}: {newest_problem}); move {root} aside to start afresh, or choose "
                        "another train.output_dir")
    return None


def load(accelerator, checkpoint: Path) -> str | None:
    """Load `checkpoint` on every process: None, or why it failed on some process (all then fall back alike).

    A later successful load overwrites whatever a failed one had already restored (model, optimizer, scheduler
    and RNG states are all loaded again)."""
    try:
        accelerator.load_state(str(checkpoint))
        failure = None
    except Exception as exc:  # whole, yet unreadable (e.g. saved by an incompatible torch): the caller falls back
        detail = str(exc).strip().splitlines()
        failure = f"loading failed ({type(exc).__name__}{': ' + detail[0] if detail else ''})"
    failures = [f for f in gather_object([failure]) if f]
    return failures[0] if failures else None


def check_compatible(checkpoint: Path, cfg, identity: RunIdentity) -> None:
    """UserError naming the first setting that differs between `checkpoint`'s run and this one."""
    saved, current, defaults = (dict(flat(OmegaConf.to_container(c))) for c in
                                (OmegaConf.load(checkpoint / CONFIG_FILE), OmegaConf.structured(cfg),
                                 OmegaConf.structured(type(cfg))))
    # A key the saved config lacks was added by a later version, with the old behaviour as its default.
    saved = defaults | saved
    for key, value in current.items():
        compared = any(key == k or key.startswith(f"{k}.") for k in COMPARED)
        exempt = any(key == k or key.startswith(f"{k}.") for k in EXEMPT)
        if compared and not exempt and saved[key] != value:
            raise UserError(f"{checkpoint} was trained with a different {key} ({saved[key]!r} then, {value!r} now); "
                            f"resume with the same setting, or {NEW_RUN}")
    state = read_state(checkpoint)
    if state["tokenizer_sha256"] != identity.tokenizer_sha256:
        raise UserError(f"{checkpoint} was trained with another tokenizer; resume with that one (a copy is in "
                        f"{checkpoint / 'tokenizer'}), or {NEW_RUN}")
    then, now = [tuple(f) for f in state["train_files"]], list(identity.train_files)
    if then != now:
        raise UserError(f"{checkpoint} was trained on other data.train_files ({files_difference(then, now)}); "
                        f"resume with the same files, or {NEW_RUN}")
    if state["num_processes"] != identity.num_processes:
        raise UserError(f"{checkpoint} was saved by {state['num_processes']} process(es) and this launch has "
                        f"{identity.num_processes}; launch {state['num_processes']} to continue it exactly "
                        f"(each restores its own random state), or {NEW_RUN}")


def flat(tree: dict, prefix: str = ""):
    """(dotted key, value) of every leaf of a nested dict."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def files_difference(then: list[tuple], now: list[tuple]) -> str:
    """The first difference between two (name, size) lists, as a phrase."""
    if len(then) != len(now):
        return f"{len(then)} file(s) then, {len(now)} now"
    index, (old, new) = next((i, pair) for i, pair in enumerate(zip(then, now)) if pair[0] != pair[1])
    return f"file {index + 1}: {old[0]} of {old[1]} bytes then, {new[0]} of {new[1]} bytes now"
