"""Continue a prompt with an auto-regressive DeBERTa (a run of objective arlm or mt).

    python tools/generate.py runs/arlm_tiny --prompt "It was a dark and stormy night" --max-new-tokens 40
    python tools/generate.py runs/arlm_tiny --prompt "..." --temperature 0.8 --top-p 0.9 --seed 1

Seeded: the same arguments print the same text. See docs/generation.md. Bad input prints one line `error: ...` on
stderr and exits with status 2.
"""

import sys

from debertav3.lm.cli import generate_main

if __name__ == "__main__":
    sys.exit(generate_main())
