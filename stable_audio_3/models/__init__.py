"""Neural network modules: attention, SAME autoencoder, DiT, text conditioning, LoRA."""
