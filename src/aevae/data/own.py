"""A team's own images: one NumPy .npz file, or a folder of image files (torchvision's ImageFolder layout).

Both end as uint8 arrays (N, H, W) for grey or (N, C, H, W) for colour (aevae.data), converted with Pillow:

- npz: `x_train` (required), `y_train`, `x_test`, `y_test` (the Keras convention; without `y_` arrays the
  data is unlabelled). Layout rule for 4-d images: (N, H, W, C) when only the last axis is 1, 3 or 4 long,
  (N, C, H, W) when only axis 1 is; when both or neither are, the layout is ambiguous and refused.
  3-d images are (N, H, W) grey.
- folder: `root/<class>/<image>` (class names: the sorted folder names, labels 0..K-1), or
  `root/train/<class>/...` with `root/test/<class>/...` (the same classes), or images directly in `root`
  (unlabelled). Every non-hidden file must be an image Pillow reads.
- Pixels: 8-bit only (uint8 arrays; Pillow modes 1, L, LA, P, RGB, RGBA). 16-bit and float images are
  refused, not scaled: their range (0-65535? 0-1? HDR?) cannot be told from the file.
- Alpha (RGBA, LA, 4-channel arrays) is composited on `background`, a grey level 0-255 for every channel.
- `image_size` (H, W) resizes with Pillow's antialiased Lanczos filter; `channels` 1 or 3 converts grey to
  colour (the grey repeated) or colour to grey (ITU-R 601-2 luma, Pillow's "L"). Without them images keep
  their size and channels, and every image of a source must have the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aevae.errors import UserError

_KEYS = ("x_train", "y_train", "x_test", "y_test")
_MODES = {"1": "L", "L": "L", "P": "RGBA", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA"}  # 8-bit modes -> working mode


def _composite(image, background: int):
    """A Pillow image without alpha: an LA or RGBA image is composited on a flat `background` grey level."""
    from PIL import Image

    if image.mode not in ("LA", "RGBA"):
        return image
    ground = Image.new(image.mode, image.size, (background, 255) if image.mode == "LA" else (background,) * 3 + (255,))
    return Image.alpha_composite(ground.convert("RGBA"), image.convert("RGBA")).convert(image.mode[:-1] or "L")


def convert(image, where: str, image_size: tuple[int, int] | None, channels: int | None, background: int) -> np.ndarray:
    """One Pillow image -> uint8 (H, W) grey or (H, W, 3) colour, converted as the module docstring says.

    Raises: UserError (naming `where`) for a 16-bit, 32-bit or float image.
    """
    if image.mode not in _MODES:
        raise UserError(
            f"{where}: {image.mode} pixels (16-bit, 32-bit or float); aevae takes 8-bit images: save"
            " it as 8-bit (0-255) grey or RGB"
        )
    image = _composite(image.convert(_MODES[image.mode]), background)
    if channels is not None:
        image = image.convert("L" if channels == 1 else "RGB")
    if image_size is not None and image.size != (image_size[1], image_size[0]):
        from PIL import Image

        image = image.resize((image_size[1], image_size[0]), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def stack(images: list[np.ndarray], names: list[str]) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 images -> (N, H, W) or (N, 3, H, W).

    Raises: UserError naming the first image whose size or channels differ from the first one's.
    """
    first = images[0].shape
    for image, name in zip(images, names):
        if image.shape != first:
            raise UserError(
                f"{name} is {_describe(image.shape)} but {names[0]} is {_describe(first)}; set"
                " data.image_size (and data.channels) to bring every image to one size"
            )
    out = np.stack(images)
    return out if out.ndim == 3 else np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _describe(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]} {'grey' if len(shape) == 2 else 'colour'}"


# ------------------------------------------------------------------------------------------------------ npz


def _npz_layout(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) per the layout rule. Raises: UserError for an ambiguous or wrong layout."""
    if x.ndim == 3:
        return x
    if x.ndim != 4:
        raise UserError(f"{path}: {key} has shape {x.shape}; images must be (N, H, W), (N, H, W, C) or (N, C, H, W)")
    last, first = x.shape[3] in (1, 3, 4), x.shape[1] in (1, 3, 4)
    if last == first:
        raise UserError(
            f"{path}: {key} has shape {x.shape}, an ambiguous layout (channels must be 1, 3 or 4 on"
            " exactly one of axes 1 and 3); save it as (N, H, W, C)"
        )
    return x if last else x.transpose(0, 2, 3, 1)


def _npz_labels(y: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise UserError(
            f"{path}: {key} holds {y.dtype} values of shape {y.shape}; labels must be a 1-d array of"
            " integers 0..K-1 (one per image): map class names to integers first"
        )
    if len(y) != n:
        raise UserError(f"{path}: {key} has {len(y)} labels for {n} images; give one label per image")
    if len(y) and (y.min() < 0 or y.max() > 255):
        raise UserError(f"{path}: {key} holds labels outside 0-255; number the classes 0..K-1")
    return y.astype(np.uint8)


def _npz_images(x: np.ndarray, path: Path, key: str, image_size, channels, background) -> np.ndarray:
    from PIL import Image

    if x.dtype != np.uint8:
        raise UserError(
            f"{path}: {key} is {x.dtype}; aevae takes uint8 pixels 0-255 (16-bit and float images are"
            " refused, not scaled): scale them to 0-255 and cast to uint8"
        )
    x = _npz_layout(x, path, key)
    if len(x) == 0:
        raise UserError(f"{path}: {key} holds no images; check the file")
    if x.ndim == 3 and image_size is None and channels is None:
        return x  # already (N, H, W) grey: nothing to convert
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if x.ndim == 4 and x.shape[3] in (1, 3) and image_size is None and channels in (None, x.shape[3]):
        return x[..., 0] if x.shape[3] == 1 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    pil = [
        Image.fromarray(
            im if im.ndim == 2 else (im[..., 0] if im.shape[2] == 1 else im), modes[1 if im.ndim == 2 else im.shape[2]]
        )
        for im in x
    ]
    return stack(
        [convert(im, f"{path}: {key}[{i}]", image_size, channels, background) for i, im in enumerate(pil)],
        [f"{key}[{i}]" for i in range(len(pil))],
    )


def read_npz(path: Path, image_size=None, channels=None, background: int = 0) -> dict:
    """{train_images, train_labels, test_images, test_labels} from a Keras-style .npz (labels or test None).

    Raises: UserError for a missing or unreadable file, no x_train, non-integer labels, a y_ without its
    x_ (or an x_test without y_test in labelled data), non-uint8 pixels, an ambiguous layout.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"npz file {path} not found; set data.path to a .npz holding x_train (and y_train, ...)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _KEYS if k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(
            f"{path}: cannot read it as a NumPy .npz ({str(exc).splitlines()[0]}); save it with numpy.savez"
        ) from None
    if "x_train" not in arrays:
        raise UserError(
            f"{path} has no x_train array; save the training images under that name"
            " (numpy.savez(path, x_train=..., y_train=...))"
        )
    for split in ("train", "test"):
        if f"y_{split}" in arrays and f"x_{split}" not in arrays:
            raise UserError(f"{path} has y_{split} but no x_{split}; save both or neither")
    labelled = "y_train" in arrays
    if "x_test" in arrays and labelled != ("y_test" in arrays):
        raise UserError(
            f"{path}: y_train and y_test must come together (labelled data) or both be left out"
            " (unlabelled); add the missing one or drop the other"
        )
    out = {}
    for split in ("train", "test"):
        x = arrays.get(f"x_{split}")
        out[f"{split}_images"] = (
            None if x is None else _npz_images(x, path, f"x_{split}", image_size, channels, background)
        )
        y = arrays.get(f"y_{split}")
        out[f"{split}_labels"] = None if y is None else _npz_labels(y, len(x), path, f"y_{split}")
    return out


# --------------------------------------------------------------------------------------------------- folder


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_image(path: Path, image_size, channels, background) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return convert(image, str(path), image_size, channels, background)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(
            f"{path}: not an image Pillow can read ({type(exc).__name__}); remove or replace the file"
        ) from None


def _read_classes(root: Path, image_size, channels, background) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(images, labels, class names) of one ImageFolder tree; images directly in `root`: unlabelled."""
    classes = _subdirs(root)
    loose = _files(root)
    if classes and loose:
        raise UserError(
            f"{root} holds both class folders and the file {loose[0].name}; move that file into a class"
            " folder, or out of the image folder"
        )
    if not classes:
        if not loose:
            raise UserError(f"{root} holds no images; put them in <class>/ folders (or directly there, unlabelled)")
        images = [_read_image(p, image_size, channels, background) for p in loose]
        return stack(images, [str(p) for p in loose]), None, []
    if len(classes) == 1:
        raise UserError(
            f"{root} holds one class folder ({classes[0].name}); the comparison needs two classes or"
            " more: add a folder per class"
        )
    paths, labels = [], []
    for k, folder in enumerate(classes):
        files = _files(folder)
        if not files:
            raise UserError(f"class folder {folder} is empty; add its images or remove the folder")
        if len(files) < 2:
            raise UserError(
                f"class folder {folder} holds one image; a class needs at least 2 (split into train and"
                " validation): add images or remove the folder"
            )
        paths += files
        labels += [k] * len(files)
    images = [_read_image(p, image_size, channels, background) for p in paths]
    return stack(images, [str(p) for p in paths]), np.asarray(labels, dtype=np.uint8), [c.name for c in classes]


def read_folder(root: Path, image_size=None, channels=None, background: int = 0) -> dict:
    """{train_images, train_labels, test_images, test_labels, class_names} from an image folder (see module doc).

    Raises: UserError for a missing folder, a corrupt or non-image file, an empty class folder, a class with
    one image, a single class, images of mixed sizes without image_size, 16-bit or float images, or
    train/ and test/ folders whose classes differ.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder {root} not found; set data.path to a folder of <class>/<image> files")
    names = {p.name for p in _subdirs(root)}
    if "train" in names and ("test" in names) and names <= {"train", "test"}:
        train = _read_classes(root / "train", image_size, channels, background)
        test = _read_classes(root / "test", image_size, channels, background)
        if train[2] != test[2]:
            only = sorted(set(train[2]) ^ set(test[2]))
            raise UserError(
                f"{root / 'train'} and {root / 'test'} hold different classes (only in one: {only});"
                " give both the same class folders"
            )
        return {
            "train_images": train[0],
            "train_labels": train[1],
            "test_images": test[0],
            "test_labels": test[1],
            "class_names": train[2],
        }
    images, labels, classes = _read_classes(root, image_size, channels, background)
    return {
        "train_images": images,
        "train_labels": labels,
        "test_images": None,
        "test_labels": None,
        "class_names": classes,
    }
