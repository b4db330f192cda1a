"""RTD pretraining of a CPU-sized DeBERTa-v3 (the quick start), sized for 2 CPU cores (wall times: docs/performance.md).

    python recipes/rtd_tiny.py [--config file.yaml] [key=value ...]
    accelerate launch recipes/rtd_tiny.py

Discriminator 128 x 4 layers, generator 16 x 2 on the shared 128-wide table (an eighth of the discriminator's
width: ELECTRA's smaller generator, one step narrower), v3 attention settings, sequences of 128 tokens, the
bundled English slice and its 8k SentencePiece vocabulary, GDES.

Set for a short run of a narrow model (docs/training-dynamics.md has the measurements): weights drawn with std
0.05, not the paper's 0.02, which is sized for 768-wide layers (0.02 * sqrt(768 / 128) keeps each layer's output
scale); no dropout, since a block is seen about twice; a peak lr of 1e-3 after 100 warm-up steps (2e-3 learns faster
on a fixed task but let longer runs collapse to a constant output); a generator an eighth as wide (ELECTRA's
finding, measured here at 128, 32 and 16: the narrower the generator, the easier the discriminator's early task,
16 fine-tuned best on CoLA and tied on SST-2); the discriminator (and E_Delta) at twice the generator's lr, which
trains the discriminator faster without making its task easier (the generator keeps its own lr).
"""

from debertav3.train import main

RECIPE = {
    "model": {"vocab_size": 8064, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
              "intermediate_size": 512, "initializer_range": 0.05, "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0, "generator_hidden_size": 16},
    "data": {"max_seq_length": 128},
    "optim": {"lr": 1e-3, "warmup_steps": 100, "discriminator_lr_scale": 2.0},
    "train": {"output_dir": "runs/rtd_tiny", "batch_size": 16, "max_steps": 1200, "log_every": 10,
              "eval_every": 200, "eval_batches": 8, "embedding_stats_every": 100, "save_every": 400,
              "collapse_check_step": 600, "collapse_auc": 0.55},
}

if __name__ == "__main__":
    main(RECIPE, description=__doc__)
