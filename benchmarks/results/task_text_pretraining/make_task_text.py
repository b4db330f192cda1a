"""Write the unlabelled task text for task-adaptive pretraining (RULES.md beside this file).

    python make_task_text.py SST2_POOL_TSV COLA_TRAIN_TSV OUT.txt [--copies 12]

The sentences of SST-2's pool.tsv (SST-2 train less the held-out split, ../sst2_lr_selection/make_split.py) and
of CoLA's in_domain_train.tsv, labels dropped. Each copy shuffles them with its own seed and joins them into
paragraphs of at least 400 characters (about 100 tokens: one 128-token block each), separated by blank lines, so
the trainer's default `data.documents=blank_line` reads each paragraph as a document. `--copies` sets the text's
share beside gutenberg_en's train split (97.5 MB): 12 copies of its 3.9 MB make a third of the bytes and,
in 128-token blocks with the bundled tokenizer, about two fifths of the blocks (shorter documents).
"""

import argparse
import os
import random

from debertav3.data.labelled import read_split

PARAGRAPH_CHARS = 400


def read_sentences(sst2_pool: str, cola_train: str) -> list[str]:
    """SST-2's `sentence` column, then CoLA's fourth column (its files have no header), with fine-tuning's reader."""
    sst2 = read_split(sst2_pool, ["sentence"], "label")
    cola = read_split(cola_train, ["3"], "1", header=False)
    return [s for (text,) in sst2.texts + cola.texts if (s := text.strip())]


def paragraphs(sentences: list[str], seed: int):
    order = sentences[:]
    random.Random(seed).shuffle(order)
    current = []
    for sentence in order:
        current.append(sentence)
        if sum(len(s) + 1 for s in current) >= PARAGRAPH_CHARS:
            yield " ".join(current)
            current = []
    if current:
        yield " ".join(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sst2_pool")
    parser.add_argument("cola_train")
    parser.add_argument("output")
    parser.add_argument("--copies", type=int, default=12)
    args = parser.parse_args()
    sentences = read_sentences(args.sst2_pool, args.cola_train)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        for copy in range(args.copies):
            for paragraph in paragraphs(sentences, seed=copy):
                f.write(paragraph + "\n\n")
    os.replace(tmp, args.output)
    size = os.path.getsize(args.output)
    print(f"{len(sentences)} sentences x {args.copies} copies -> {args.output} ({size:,} bytes)")


if __name__ == "__main__":
    main()
