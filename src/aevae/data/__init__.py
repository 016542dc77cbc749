"""Data: reading sources (IDX, torchvision, bundled), splitting, the prepared arrays."""

# MNIST-style datasets label their images 0-9; the reference classifier (aevae.classifier) has this many
# outputs, so a label outside range(N_CLASSES) is refused where the data enters (aevae.data.prepare).
N_CLASSES = 10
