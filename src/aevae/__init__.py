"""aevae: train AutoEncoders and Variational AutoEncoders and measure how they differ."""

__version__ = "0.1.0"
