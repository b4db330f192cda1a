"""Auto-regressive DeBERTa (the DeBERTa paper's generation variant, appendix A.4) sized for 2 CPU cores.

    python recipes/arlm_tiny.py [--config file.yaml] [key=value ...]
    python recipes/arlm_tiny.py objective=mt                       # DeBERTa-MT: MLM and ARLM on one network
    python recipes/arlm_tiny.py model.enhanced_mask_decoder=false model.position_biased_input=true   # DeBERTa-AP

One 128 x 4-layer network, causal in every layer and in the enhanced mask decoder, predicting the next token
through the tied head; the bundled English slice and its 8k vocabulary, sequences of 128 tokens. The width, the
initialisation (std 0.05 for a 128-wide network) and no dropout are the quick start's (recipes/rtd_tiny.py and
docs/training-dynamics.md give the reasons); the peak lr 4e-3 was chosen among 1e-3, 2e-3 and 4e-3 on the run's
own held-out books (docs/generation.md). The run ends with the held-out perplexity beside the unigram
baseline's, over all 256 held-out blocks it keeps (data.max_valid_blocks; 16 batches of 16). Then
`python tools/generate.py runs/arlm_tiny --prompt "..."` samples from it, and `python tools/perplexity.py
runs/arlm_tiny FILE` scores any text (FILE = the bundled valid books with --max-windows 256: the run's figure).
docs/generation.md compares the variants.
"""

from debertav3.train import main

RECIPE = {
    "objective": "arlm",
    "model": {"vocab_size": 8064, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
              "intermediate_size": 512, "initializer_range": 0.05, "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0},
    "data": {"max_seq_length": 128},
    "optim": {"lr": 4e-3, "warmup_steps": 100},
    "train": {"output_dir": "runs/arlm_tiny", "batch_size": 16, "max_steps": 1000, "log_every": 10,
              "eval_every": 200, "eval_batches": 16, "embedding_stats_every": 100, "save_every": 500},
}

if __name__ == "__main__":
    main(RECIPE, description=__doc__)
