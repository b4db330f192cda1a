"""How hard a run's generator makes the discriminator's task (tools/task_difficulty.py).

For each checkpoint of a run, on the trainer's eval batches (same blocks, masks and sampling uniforms):
- the discriminator's ROC-AUC of the "replaced" class, as `eval/rtd_auc` reports it;
- a count-based bigram detector's (debertav3.objective.bigram, counted on the run's training text) on the same
  replacements: how much of the generator's current task plain local statistics solve;
- the discriminator and the detector on unigram samples at the same masked positions: the task a generator that
  knows only word frequencies would set, the same for every run and checkpoint, so it compares what
  discriminators have learned whatever their generators;
- how often the generator's sample is the original token (those positions are labelled "original").
A discriminator below the bigram detector on its own task has not yet learned what the counts know.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import torch

from ..constants import IGNORE_INDEX
from ..train.export import load_rtd_model, read_checkpoint_config, read_tokenizer, resolve_checkpoint
from ..objective.bigram import BigramDetector
from ..objective.metrics import roc_auc
from ..errors import CheckpointError, UserError
from ..train.checkpoint import STATE_FILE, checkpoint_dirs, checkpoint_root
from ..usage import ArgumentParser, guarded


def checkpoints_of(source: str) -> list[Path]:
    """`source` itself when it is a checkpoint, else every checkpoint of the output_dir `source` that
    `resolve_checkpoint` accepts (whole, or written before manifests existed)."""
    path = Path(source)
    if checkpoint_root(path).is_dir() and not (path / STATE_FILE).is_file():
        found = []
        for candidate in checkpoint_dirs(path):
            try:
                found.append(resolve_checkpoint(candidate))
            except CheckpointError:  # damaged or unfinished: the others are still worth measuring
                continue
        if found:
            return found
    return [resolve_checkpoint(path)]


def counted_blocks(train, max_tokens: int):
    """The first training blocks holding about `max_tokens` tokens (a streamed corpus has no length)."""
    total = 0
    for block in iter(train):
        if total >= max_tokens:
            return
        total += len(block)
        yield block


def measure(source: str, batches: int | None, max_tokens: int) -> list[dict]:
    """One row per checkpoint: step, rtd_auc, bigram_auc, rtd_auc_unigram_samples, bigram_auc_unigram_samples,
    sample_is_original."""
    from ..data import Masker, build_datasets
    from ..train.batches import make_micro_batch, micro_batch_seed

    checkpoints = checkpoints_of(source)
    cfg = read_checkpoint_config(checkpoints[-1])
    if cfg.objective != "rtd":
        raise UserError(f"{source} was trained with objective={cfg.objective}: it has no discriminator to measure")
    tokenizer = read_tokenizer(checkpoints[-1], cfg.model.vocab_size)
    train, valid = build_datasets(cfg.data, tokenizer, cfg.train.seed)
    detector = BigramDetector(counted_blocks(train, max_tokens), cfg.model.vocab_size)
    sampling = detector.log_unigram.exp()
    sampling[list(tokenizer.special_ids)] = 0
    masker = Masker(tokenizer, cfg.data.mask_prob, cfg.mask_mode, cfg.data.whole_word_mask)
    size, limit = cfg.train.batch_size, batches or cfg.train.eval_batches
    starts = list(itertools.islice(range(0, len(valid) - size + 1, size), limit))
    if not starts:
        raise UserError(f"the run's held-out set has {len(valid)} blocks, fewer than one batch of {size}")
    rows = []
    for checkpoint in checkpoints:
        model = load_rtd_model(checkpoint, read_checkpoint_config(checkpoint), tokenizer)
        draws = torch.Generator().manual_seed(0)
        found = {k: [] for k in ("logits", "targets", "bigram", "unigram_logits", "unigram_bigram", "unigram_targets",
                                 "same")}
        with torch.no_grad():
            for i, start in enumerate(starts):
                batch = make_micro_batch([valid[j] for j in range(start, start + size)], masker, tokenizer.pad_id,
                                         cfg.data.max_seq_length, micro_batch_seed(cfg.train.seed, -1 - i), 0, 1)
                inputs = batch.inputs
                out = model(**inputs)
                real, masked = inputs["attention_mask"].bool(), inputs["labels"] != IGNORE_INDEX
                original = torch.where(masked, inputs["labels"], inputs["input_ids"])
                unigram_input = original.clone()
                unigram_input[masked] = torch.multinomial(sampling, int(masked.sum()), True, generator=draws)
                found["logits"].append(out.rtd_logits[real].double())
                found["targets"].append(out.rtd_labels[real].double())
                found["bigram"].append(detector.scores(out.discriminator_input_ids)[real])
                found["unigram_logits"].append(model.discriminator(unigram_input, inputs["attention_mask"],
                                                                   model.discriminator_embedding())[real].double())
                found["unigram_bigram"].append(detector.scores(unigram_input)[real])
                found["unigram_targets"].append((unigram_input != original)[real].double())
                found["same"].append((out.discriminator_input_ids == original)[masked].double())
        cat = {k: torch.cat(v) for k, v in found.items()}
        rows.append({"checkpoint": str(checkpoint), "step": int(checkpoint.name.split("-")[-1]),
                     "rtd_auc": float(roc_auc(cat["logits"], cat["targets"])),
                     "bigram_auc": float(roc_auc(cat["bigram"], cat["targets"])),
                     "rtd_auc_unigram_samples": float(roc_auc(cat["unigram_logits"], cat["unigram_targets"])),
                     "bigram_auc_unigram_samples": float(roc_auc(cat["unigram_bigram"], cat["unigram_targets"])),
                     "sample_is_original": float(cat["same"].mean())})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description="Compare a run's discriminator with a count-based bigram detector on the "
                                        "same eval replacements (see docs/training-dynamics.md).")
    parser.add_argument("run", help="a training output_dir (every whole checkpoint) or one checkpoints/step-* dir")
    parser.add_argument("--batches", type=int, default=None, help="eval batches (default: the run's train.eval_batches)")
    parser.add_argument("--count-tokens", type=int, default=5_000_000,
                        help="training tokens the bigram counts are taken from (default 5M)")
    args = parser.parse_args(argv)
    status, rows = guarded(lambda: measure(args.run, args.batches, args.count_tokens),
                           "nothing is written by this tool; rerun the same command")
    if status:
        return status
    print("ROC-AUC of the replaced class        its generator's samples     unigram samples")
    print("  step  sample = original   discriminator     bigram   discriminator     bigram")
    for r in rows:
        print(f"{r['step']:>6}  {r['sample_is_original']:>17.3f}  {r['rtd_auc']:>14.3f}  {r['bigram_auc']:>9.3f}  "
              f"{r['rtd_auc_unigram_samples']:>14.3f}  {r['bigram_auc_unigram_samples']:>9.3f}")
    return 0
