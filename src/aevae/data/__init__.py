"""Data: reading sources (IDX, torchvision, bundled), splitting, the prepared arrays."""
