"""RTD pretraining of a CPU-sized DeBERTa-v3 (the quick start): about 5 minutes on 2 CPU cores.

    python recipes/rtd_tiny.py [--config file.yaml] [key=value ...]
    accelerate launch recipes/rtd_tiny.py

Discriminator 128 x 4 layers, generator 128 x 2, v3 attention settings, sequences of 128 tokens, the bundled
English slice and its 8k SentencePiece vocabulary.
"""

from debertav3.train import main

RECIPE = {
    "model": {"vocab_size": 8064, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
              "intermediate_size": 512},
    "data": {"max_seq_length": 128},
    "optim": {"lr": 1e-3, "warmup_steps": 50},
    "train": {"output_dir": "runs/rtd_tiny", "batch_size": 16, "max_steps": 600, "log_every": 10,
              "eval_every": 100, "eval_batches": 8, "embedding_stats_every": 50, "save_every": 200},
}

if __name__ == "__main__":
    main(RECIPE, description=__doc__)
