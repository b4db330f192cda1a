"""Perplexity of a text file under an auto-regressive DeBERTa (a run of objective arlm or mt).

    python tools/perplexity.py runs/arlm_tiny ../shared/data/wikitext2_raw_test/test.txt
    python tools/perplexity.py exported/arlm_tiny FILE --stride 64      # each token with more context

Each token is scored once; with the default stride the windows are the trainer's own blocks, so the figure equals
the run's evaluation on the same file. See docs/generation.md. Bad input prints one line `error: ...` on stderr
and exits with status 2.
"""

import sys

from debertav3.lm.cli import perplexity_main

if __name__ == "__main__":
    sys.exit(perplexity_main())
