"""Data: reading sources (IDX, torchvision, bundled), splitting, the prepared arrays.

IMAGE_SHAPE is the MNIST format every source must have; models, metrics and
the classifier read it from here (through aevae.models) rather than spelling 28.
"""

IMAGE_SHAPE = (1, 28, 28)  # (channels, height, width) of every image the pipeline handles
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]  # 784

# MNIST-style datasets label their images 0-9; the reference classifier (aevae.classifier) has this many
# outputs, so a label outside range(N_CLASSES) is refused where the data enters (aevae.data.prepare).
N_CLASSES = 10
