"""Training runs: building them from a config, fitting, picking the best checkpoint, writing results."""
