"""Deterministic global micro-batches: the same blocks, masks and samples whatever the number of processes.

Micro-batch k of the run is a pure function of (seed, k) and of its task (masked, or causal for objectives arlm
and mt: blocks unmasked, with next-token labels, objective/arlm.py): map-style datasets are visited in a fresh
seeded permutation every epoch, streaming ones in file order (restarting when exhausted). Every process builds the whole
global micro-batch, masks it with a generator seeded by (seed, k), draws the sampling uniforms from the same
generator, and keeps its own rows. Every micro-batch has the same shapes: blocks padded to `data.max_seq_length`,
`Masker.max_predictions` prediction slots per sequence (objective/rtd.py), so a compiled step never recompiles and
the forward pass needs no host sync. Hence also:
  - resuming needs only k (the data position) to continue exactly where the run stopped;
  - 2 processes x batch b see exactly what 1 process x batch 2b sees (losses use global denominators).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..data import Masker, pad_blocks
from ..constants import IGNORE_INDEX
from ..objective.arlm import next_token_labels
from ..objective.rtd import prediction_positions


@dataclass
class MicroBatch:
    """One process's share of a global micro-batch, plus the global counts its losses are divided by."""

    # input_ids, attention_mask, labels [B, L]; mask_positions, uniforms [B, M]; denominators [2]: (masked
    # positions, non-pad tokens) of the global batch / processes, what each process's summed losses are divided by.
    # A causal micro-batch: input_ids, attention_mask, labels (the next tokens), denominators (labelled positions,
    # non-pad tokens), and causal=True.
    inputs: dict
    global_tokens: int

    def to(self, device) -> "MicroBatch":
        return MicroBatch({k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                           for k, v in self.inputs.items()}, self.global_tokens)


def micro_batch_seed(seed: int, position: int) -> int:
    return seed * 1_000_003 + position


class BlockSource:
    """Blocks of the training set in a fixed order that depends only on the seed."""

    def __init__(self, dataset, seed: int, streaming: bool):
        self.dataset, self.seed, self.streaming = dataset, seed, streaming
        self._epoch, self._order, self._stream, self._stream_position = -1, None, None, 0

    def blocks(self, start: int, count: int) -> list:
        """Blocks number start .. start + count - 1 of the infinite sequence (epochs concatenated)."""
        return self._streamed(start, count) if self.streaming else [self._indexed(i) for i in range(start, start + count)]

    def _indexed(self, position: int):
        size = len(self.dataset)
        epoch, offset = divmod(position, size)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        return self.dataset[self._order[offset]]

    def _streamed(self, start: int, count: int) -> list:
        if self._stream is None or start < self._stream_position:
            # (Re)open and skip to `start`: on resume this replays the consumed blocks' reading once.
            self._stream = itertools.chain.from_iterable(itertools.repeat(self.dataset))
            self._stream = itertools.islice(self._stream, start, None)
            self._stream_position = start
        elif start > self._stream_position:
            self._stream = itertools.islice(self._stream, start - self._stream_position, None)
            self._stream_position = start
        out = list(itertools.islice(self._stream, count))
        self._stream_position += len(out)
        return out


def make_causal_micro_batch(blocks: list, special_ids: torch.Tensor, pad_id: int, length: int, process_index: int,
                            num_processes: int) -> MicroBatch:
    """The global micro-batch unmasked, with next-token labels (objective/arlm.py), this process's rows kept."""
    batch = pad_blocks(blocks, pad_id, length)
    labels = next_token_labels(batch["input_ids"], batch["attention_mask"], special_ids)
    num_tokens = int(batch["attention_mask"].sum())
    denominators = torch.tensor([int((labels != IGNORE_INDEX).sum()) / num_processes, num_tokens / num_processes])
    rows = _rows(len(blocks), process_index, num_processes)
    inputs = dict(input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows],
                  labels=labels[rows], denominators=denominators, causal=True)
    return MicroBatch(inputs, num_tokens)


def _rows(global_batch: int, process_index: int, num_processes: int) -> slice:
    per_process = global_batch // num_processes
    return slice(process_index * per_process, (process_index + 1) * per_process)


def make_micro_batch(blocks: list, masker: Masker, pad_id: int, length: int, seed: int, process_index: int,
                     num_processes: int) -> MicroBatch:
    """Pad to `length`, mask and draw sampling uniforms for the global micro-batch, then keep this process's rows.

    One uniform per masked position, drawn in row-major order of the masked positions; the slots that pad a row
    get 1.0 and draw nothing that is kept."""
    batch = pad_blocks(blocks, pad_id, length)
    generator = torch.Generator().manual_seed(seed)
    input_ids, labels = masker(batch["input_ids"], batch["attention_mask"], generator)
    masked = labels != IGNORE_INDEX
    positions = prediction_positions(labels, masker.max_predictions(length))
    predicted = labels.gather(1, positions) != IGNORE_INDEX
    uniforms = torch.ones(positions.shape)
    uniforms[predicted] = 1.0 - torch.rand(int(masked.sum()), generator=generator)  # in (0, 1]
    rows = _rows(len(blocks), process_index, num_processes)
    num_tokens = int(batch["attention_mask"].sum())
    denominators = torch.tensor([int(masked.sum()) / num_processes, num_tokens / num_processes])
    inputs = dict(input_ids=input_ids[rows], attention_mask=batch["attention_mask"][rows], labels=labels[rows],
                  mask_positions=positions[rows], uniforms=uniforms[rows], denominators=denominators)
    return MicroBatch(inputs, num_tokens)
