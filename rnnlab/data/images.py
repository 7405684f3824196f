"""Images read row by row: scikit-learn's 8x8 digits (bundled) and Fashion-MNIST from Debian's
`dataset-fashion-mnist` package, through an IDX reader."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """1,797 images (N, 8, 8) in [0, 1] and labels (N,)."""
    raw = gzip.decompress(resources.files(__package__).joinpath("digits.csv.gz").read_bytes())
    table = np.loadtxt(raw.decode().splitlines(), delimiter=",")
    images = torch.tensor(table[:, :64] / 16.0, dtype=torch.float32).reshape(-1, 8, 8)
    return images, torch.tensor(table[:, 64], dtype=torch.long)


def read_idx(path: str | Path) -> torch.Tensor:
    """An IDX file (the MNIST format; gzipped or not) as a tensor of its declared shape and type."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"read_idx: {path} is not an IDX file "
                         f"(magic must be 00 00 <type> <ndim>; got {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    body = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"read_idx: {path} declares shape {shape} but holds {body.size} values")
    return torch.from_numpy(body.reshape(shape).astype(dtype.newbyteorder("="), copy=True))


def load_fashion_mnist(root: str | Path = FASHION_MNIST):
    """((train_images, train_labels), (test_images, test_labels)); images (N, 28, 28) in [0, 1]."""
    root = Path(root)
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST not found under {root} (missing {', '.join(missing)}); install it with "
                                f"`apt-get install dataset-fashion-mnist` (Debian) or pass its folder")
    a, b, c, d = (read_idx(root / n) for n in names)
    return (a.float() / 255, b.long()), (c.float() / 255, d.long())


def read_image(path: str | Path) -> torch.Tensor:
    """A picture file (PNG, or any format Pillow reads) as a grey image (rows, columns) in [0, 1],
    ink bright on dark as the bundled digits are: a picture on a light background is inverted."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
        raise ValueError(f"read_image: path must be an image file; got {str(path)!r}, which {what}")
    try:
        with Image.open(path) as picture:
            picture.load()
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                # transparent pixels are paper: compose the picture onto white before reading its grey
                picture = picture.convert("RGBA")
                white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
                picture = Image.alpha_composite(white, picture)
            full_scale = 65535.0 if picture.mode.startswith("I") else 255.0  # 16-bit greys
            grey = np.asarray(picture.convert("F"), dtype=np.float32) / full_scale  # (rows, columns)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"read_image: {path} must be an image (PNG, JPEG, ...); could not read it ({error})") from None
    if grey.size and grey[[0, -1]].mean() > 0.5 and grey[:, [0, -1]].mean() > 0.5:  # a light border: dark ink
        grey = 1.0 - grey
    return torch.from_numpy(grey.copy())
