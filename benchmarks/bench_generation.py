"""Generation with the key-value cache against recomputing the window for every token, alternating in one process.

    python benchmarks/bench_generation.py --size tiny --new-tokens 100 --rounds 3 --output results.json

A randomly initialised auto-regressive DeBERTa of the recipes' sizes (tiny: arlm_tiny's 128 x 4 with a 128-token
window; base: 768 x 12 with a 512-token window and the 8k vocabulary), with the EMD, draws `--new-tokens` tokens
after a 10-token prompt, greedily, once with `debertav3.lm.generate(cache=True)` and once with `cache=False`, in
turn, `--rounds` times; each figure is the median time per generated token. Both draw the same tokens (checked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import gemm_peak, machine
from debertav3.io_utils import atomic_write_text
from debertav3.lm.load import CausalLM
from debertav3.lm.sample import generate
from debertav3.model import MaskedLMModel
from debertav3.model.config import preset

SIZES = {"tiny": (dict(vocab_size=8064, hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=512), 128),
         "base": (dict(vocab_size=8064), 512)}


class Tokens:
    pad_id, cls_id, sep_id = 0, 1, 2
    special_ids = (0, 1, 2, 3, 4)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gemm-seconds", type=float, default=2.0, help="how long to measure the GEMM peak")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    overrides, window = SIZES[args.size]
    torch.manual_seed(0)
    config = preset("base", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides)
    lm = CausalLM(MaskedLMModel(config).eval(), Tokens(), window)
    prompt = torch.randint(5, config.vocab_size, (10,), generator=torch.Generator().manual_seed(1)).tolist()
    seconds = {"cache": [], "recompute": []}
    drawn = {}
    for _ in range(args.rounds):
        for name in seconds:
            started = time.perf_counter()
            drawn[name] = generate(lm, prompt, args.new_tokens, temperature=0.0, cache=name == "cache")
            seconds[name].append((time.perf_counter() - started) / args.new_tokens)
    assert drawn["cache"] == drawn["recompute"], "the cache changed the tokens drawn"
    result = {"size": args.size, "window": window, "prompt_tokens": len(prompt), "new_tokens": args.new_tokens,
              "seconds_per_token": {k: statistics.median(v) for k, v in seconds.items()}, "all": seconds,
              "threads": torch.get_num_threads(), "machine": machine(),
              "gemm_peak_gflops": gemm_peak(args.gemm_seconds) / 1e9}
    result["speedup"] = result["seconds_per_token"]["recompute"] / result["seconds_per_token"]["cache"]
    print(json.dumps({k: result[k] for k in ("size", "seconds_per_token", "speedup", "gemm_peak_gflops")}))
    if args.output:
        atomic_write_text(args.output, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
