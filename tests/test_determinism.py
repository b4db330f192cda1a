"""Run-to-run determinism on CPU with several threads: same config, same thread count -> bit-identical weights.

Float addition is not associative, so any kernel that accumulates in an order decided by thread timing makes two
runs drift apart (by ~1e-7 at first; Adam's normalised updates then amplify it). The one such kernel the model
used was indexing's backward (`index_put_` with accumulate) for the EMD's position-embedding lookup, whose indices
repeat; with more than ~32k elements it runs on several threads with atomic adds. These tests use 2 threads and
sizes above that threshold (the quick start's), where the old code differed in every repetition, and a
competing CPU load, so that a test on a loaded machine is what runs.
"""

import contextlib
import subprocess
import sys

import torch
from safetensors.torch import load_file

from debertav3 import preset
from debertav3.model import MaskedLMModel
from debertav3.objective.rtd import prediction_positions
from debertav3.train import load_config
from debertav3.train.checkpoint import complete_checkpoints
from debertav3.train.loop import train

from conftest import SMALL_MODEL, corpus_overrides, write_corpus


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def competing_cpu_load():
    """A busy process beside the test, so that thread timing varies as on a loaded machine."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


def test_generator_gradients_repeat_exactly_with_two_threads():
    torch.manual_seed(0)
    model = MaskedLMModel(preset("tiny", hidden_size=128, num_attention_heads=2, intermediate_size=512,
                                 num_hidden_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 1000, (16, 128), generator=gen)
    mask = torch.ones_like(ids)
    masked = torch.rand(ids.shape, generator=gen) < 0.15
    positions = prediction_positions(ids.masked_fill(~masked, -100))

    def gradients():
        model.zero_grad(set_to_none=True)
        model(ids, mask, positions).logsumexp(-1).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    with threads(2), competing_cpu_load():
        reference = gradients()
        for _ in range(3):
            again = gradients()
            differing = [name for name in reference if not torch.equal(reference[name], again[name])]
            assert not differing, differing


def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one_under_load(tmp_path):
    """Two runs of one config at the quick start's size, 2 threads, a busy process beside them; the second is
    stopped after its step-2 checkpoint and resumed. Holds only if both runs are deterministic and resume exact."""
    corpus = write_corpus(tmp_path / "corpus", 100_000, 20_000)
    model = {**SMALL_MODEL, "hidden_size": 128, "intermediate_size": 512}
    recipe = {"model": model, "data": {"max_seq_length": 128, "num_proc": 1},
              "optim": {"lr": 1e-3, "warmup_steps": 2},
              "train": {"batch_size": 16, "max_steps": 4, "save_every": 2, "eval_every": 4, "eval_batches": 1,
                        "progress": False}}

    def config(run):
        return load_config(recipe, None, [*corpus_overrides(corpus), f"train.output_dir={tmp_path / run}"])

    with threads(2), competing_cpu_load():
        train(config("straight"))
        train(config("resumed"), stop_after_steps=2)
        train(config("resumed"))
    a, b = (load_file(complete_checkpoints(tmp_path / run)[-1] / "model.safetensors") for run in ("straight", "resumed"))
    assert a.keys() == b.keys()
    differing = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differing, differing
