"""Data: reading sources (IDX, torchvision, bundled), splitting, the prepared arrays.

IMAGE_SHAPE is the MNIST format every source must have; models, metrics and
the classifier read it from here (through aevae.core.models) rather than spelling 28.
"""

from typing import NamedTuple

IMAGE_SHAPE = (1, 28, 28)  # (channels, height, width) of every image the pipeline handles
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]  # 784

# MNIST-style datasets label their images 0-9; the reference classifier (aevae.evaluation.classifier) has this many
# outputs, so a label outside range(N_CLASSES) is refused where the data enters (aevae.data.prepare).
N_CLASSES = 10


class ClassNames(NamedTuple):
    """How figures and text name the labels of a dataset: the noun ("digit" for MNIST) and one name per label."""

    noun: str
    names: tuple[str, ...]  # names[c] for label c in range(N_CLASSES)

    def name(self, label: int) -> str:
        return self.names[int(label)]


# The one list of class names per dataset (params.yaml data.dataset); figures' legends and tick labels and the
# report's text read it. Fashion-MNIST's names and order: Xiao et al. 2017, arXiv:1708.07747, Table 1.
CLASS_NAMES: dict[str, ClassNames] = {
    "mnist": ClassNames("digit", tuple(str(c) for c in range(N_CLASSES))),
    "fashion-mnist": ClassNames("class", ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                          "Sneaker", "Bag", "Ankle boot")),
    "idx": ClassNames("class", tuple(f"class {c}" for c in range(N_CLASSES))),
}


def class_names(dataset: str) -> ClassNames:
    """The class names of `dataset` (the prepared manifest's "dataset"); an unknown one gets "class 0".."class 9"."""
    return CLASS_NAMES.get(dataset, CLASS_NAMES["idx"])
