"""The towers and the maths: the encoder backbone, the losses, large-batch gradients (pure torch)."""
