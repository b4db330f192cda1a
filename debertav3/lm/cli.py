"""The command lines `tools/perplexity.py MODEL FILE` and `tools/generate.py MODEL --prompt TEXT`.

Bad input (no model there, a run that was not causal, an empty prompt or one longer than the model's window, a
file with no text to score, an option out of range) is one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ..data.sources import iter_documents, resolve_files
from ..errors import UserError
from ..usage import ArgumentParser, guarded
from .load import load_causal_lm
from .sample import generate
from .score import perplexity, text_windows

MODEL_HELP = "a training output_dir (latest checkpoint), a checkpoint directory, or an export of --part generator"


def score_file(model: str, file: str, stride: int | None, batch_size: int, progress: bool,
               max_windows: int | None = None) -> dict:
    lm = load_causal_lm(model)
    payload = lm.window - 2
    stride = payload if stride is None else stride
    if not 0 < stride <= payload:
        raise UserError(f"--stride {stride} is outside [1, {payload}] (the model's window of {lm.window} tokens "
                        "less [CLS] and [SEP]); choose a stride in that range")
    for name, value in (("--batch-size", batch_size), ("--max-windows", max_windows)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    path = resolve_files([file], "FILE", "text")[0]
    documents = [ids for ids in lm.tokenizer.encode_batch(list(iter_documents(path, "blank_line", "text"))) if ids]
    windows = text_windows(documents, lm.window, stride, lm.tokenizer.cls_id, lm.tokenizer.sep_id)
    windows.input_ids, windows.first_scored = windows.input_ids[:max_windows], windows.first_scored[:max_windows]
    if not windows.input_ids:
        raise UserError(f"{file} has no text to score (no document of at least 8 tokens); give a text file")
    with tqdm(total=len(windows.input_ids), desc="scoring", unit="window", disable=not progress) as bar:
        result = perplexity(lm, windows, batch_size, bar.update)
    return {**result, "windows": len(windows.input_ids), "window": lm.window, "stride": stride}


def perplexity_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description="Perplexity of a text file under an auto-regressive DeBERTa (objective "
                                        "arlm or mt), each token scored once with a sliding window.")
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("file", help="a text file (.txt, .gz, ...), documents separated by blank lines")
    parser.add_argument("--stride", type=int, default=None,
                        help="tokens scored per window (default: the whole window, i.e. the trainer's blocks; "
                             "smaller gives each token more context)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--max-windows", type=int, default=None,
                        help="score the first N windows only (a run evaluates its first train.eval_batches x "
                             "train.batch_size held-out blocks)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    status, result = guarded(lambda: score_file(args.model, args.file, args.stride, args.batch_size,
                                                not args.no_progress, args.max_windows),
                             "nothing was written; rerun the command")
    if status:
        return status
    print(f"{Path(args.file).name}: {result['tokens']:,} tokens in {result['windows']:,} windows "
          f"(window {result['window']}, stride {result['stride']}): loss {result['loss']:.4f} nats/token, "
          f"perplexity {result['perplexity']:.2f} (unigram baseline {result['unigram_perplexity']:.2f})")
    return 0


def generate_text(model: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  seed: int) -> str:
    if not prompt.strip():
        raise UserError("--prompt is empty; give the text to continue")
    for name, value, ok, allowed in (("--max-new-tokens", max_new_tokens, max_new_tokens >= 1, ">= 1"),
                                     ("--temperature", temperature, temperature >= 0, ">= 0 (0: greedy)"),
                                     ("--top-k", top_k, top_k >= 0, ">= 0 (0: off)"),
                                     ("--top-p", top_p, 0 < top_p <= 1, "in (0, 1] (1: off)")):
        if not ok:
            raise UserError(f"{name} {value} is out of range; use a value {allowed}")
    lm = load_causal_lm(model)
    prompt_ids = lm.tokenizer.encode_batch([prompt])[0]
    room = lm.window - 3
    if not prompt_ids:
        raise UserError("--prompt gives no tokens; give the text to continue")
    if len(prompt_ids) > room:
        raise UserError(f"--prompt is {len(prompt_ids)} tokens, longer than the model's window allows ({room}: "
                        f"{lm.window} less [CLS], [SEP] and the token drawn); shorten it")
    new_ids = generate(lm, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed)
    return lm.tokenizer.decode(prompt_ids + new_ids)


def generate_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description="Continue a prompt with an auto-regressive DeBERTa (objective arlm or mt).")
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: always the most probable token")
    parser.add_argument("--top-k", type=int, default=0, help="draw among the k most probable tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="draw among the most probable tokens whose "
                                                                 "probability reaches p (1: all)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed draws the same text")
    args = parser.parse_args(argv)
    status, text = guarded(lambda: generate_text(args.model, args.prompt, args.max_new_tokens, args.temperature,
                                                 args.top_k, args.top_p, args.seed), "nothing was generated")
    if status:
        return status
    print(text)
    return 0
