"""Train a SentencePiece vocabulary with DeBERTa-v3's special ids ([PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3, [MASK]=N).

    python tools/train_tokenizer.py --input corpus/*.txt.gz --vocab-size 32000 --output runs/tokenizer

OUTPUT then holds spm.model and tokenizer_config.json: give it as `data.tokenizer=OUTPUT` for training (with
`model.vocab_size` >= N + 1), or to `transformers.AutoTokenizer.from_pretrained`. See docs/data.md.
Bad input (checked before the training starts) prints one line `error: ...` on stderr and exits with status 2;
Ctrl-C prints one line `interrupted: ...` and exits with 130. OUTPUT appears complete or not at all.
"""

from __future__ import annotations

import sys

from debertav3.data.tokenizer import MODEL_TYPES, train_tokenizer
from debertav3.usage import ArgumentParser, guarded


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help="text (.txt, .txt.gz: a sentence or paragraph per line), .jsonl or .parquet files; globs")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="SentencePiece pieces, specials included; [MASK] gets this id")
    parser.add_argument("--output", required=True, help="new directory to write")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="unigram",
                        help="unigram (DeBERTa-v3; the only type transformers' DebertaV2Tokenizer reads) or bpe")
    parser.add_argument("--character-coverage", type=float, default=0.9995,
                        help="share of characters the vocabulary covers; the rarest others become [UNK]")
    parser.add_argument("--input-sentence-size", type=int, default=0,
                        help="train on this many lines sampled from the input (0: all); bounds memory")
    parser.add_argument("--seed", type=int, default=0, help="seed of that sampling")
    parser.add_argument("--text-field", default="text", help="the text field of .jsonl/.parquet input")
    args = parser.parse_args(argv)
    if args.model_type == "bpe":
        print("train_tokenizer: warning: transformers' DebertaV2Tokenizer reads spm.model as unigram, so its ids "
              "will differ from ours for a bpe model", file=sys.stderr)
    status, tokenizer = guarded(lambda: train_tokenizer(args.input, args.vocab_size, args.output, args.model_type,
                                                        args.character_coverage, args.input_sentence_size, args.seed,
                                                        args.text_field),
                                "nothing was written; rerun the same command to start again",
                                hint="free space or choose another --output")
    if status:
        return status
    print(f"{args.output}: {tokenizer.mask_id} pieces, [MASK]={tokenizer.mask_id}, "
          f"model.vocab_size >= {tokenizer.vocab_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
