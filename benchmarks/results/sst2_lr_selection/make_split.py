"""Writes protocol B's SST-2 split (RULES.md): heldout.tsv (2000 rows of train.tsv) and pool.tsv (the rest).

    python make_split.py ../../../../shared/data/sst2/train.tsv OUT_DIR

The train rows' indices (header excluded) are shuffled with random.Random(1234); the first 2000 are held out.
Both files keep the header and train.tsv's row order.
"""

import random
import sys
from pathlib import Path


def main(train_tsv: str, out_dir: str) -> None:
    header, *rows = Path(train_tsv).read_text(encoding="utf-8").splitlines(keepends=True)
    order = list(range(len(rows)))
    random.Random(1234).shuffle(order)
    held = set(order[:2000])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, keep in (("heldout.tsv", lambda i: i in held), ("pool.tsv", lambda i: i not in held)):
        (out / name).write_text(header + "".join(r for i, r in enumerate(rows) if keep(i)), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
