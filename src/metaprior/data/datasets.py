r"""Readers for the data sets of the paper and the embedded demo set.

Every reader returns a list of float32 tensors in [0, 1] of shape (C, H, W) (C = 1 for
grayscale), so images of different sizes can be kept side by side. Files are read from a data
root given by ``--data-root`` or the ``METAPRIOR_DATA`` environment variable::

    <root>/bsds500/{train,test,val}/*.{png,jpg}
    <root>/set3c/*.png
    <root>/fastmri/knee_mc_val_rss/*.npy   (320×320 magnitude slices, raw scanner scale)
    <root>/fastmri/splits.json             ({"finetune": [...], "test": [...]})
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ENV_VAR = "METAPRIOR_DATA"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
HOW_TO_SET = f"pass --data-root DIR or set {ENV_VAR}=DIR"


class DataRootError(FileNotFoundError):
    """A data folder is missing or empty; the message is one line naming it and the fix."""


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_root`` if given, else ``$METAPRIOR_DATA``.

    Raises:
        DataRootError: neither is set, or the folder does not exist.
    """
    value = data_root if data_root is not None else os.environ.get(ENV_VAR)
    if not value:
        raise DataRootError(f"no data root given: {HOW_TO_SET}")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataRootError(f"data root {root} is not a folder: {HOW_TO_SET}")
    return root


def list_images(folder: str | os.PathLike, flag: str = "") -> list[Path]:
    """Image files in ``folder``, sorted by name: a folder of the data root, or with ``flag``
    the folder a user gave to that option.

    Raises:
        DataRootError (FileNotFoundError, ValueError with ``flag``): the folder is missing or
        holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if flag:
            raise FileNotFoundError(f"{flag} {folder} is not a folder of images")
        raise DataRootError(f"data folder {folder} does not exist: {HOW_TO_SET}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files and flag:
        raise ValueError(f"{flag} {folder} holds no images (png, jpg, tif, bmp): add some or "
                         f"choose another folder")
    if not files:
        raise DataRootError(f"data folder {folder} holds no image: {HOW_TO_SET}")
    return files


#: The smallest image side read from a user's folder (the denoisers work at half resolution).
MIN_SIDE = 8


def read_images(folder: str | os.PathLike, color: bool, flag: str = "--images"
                ) -> list[Tensor]:
    """The images of the folder a user gave to option ``flag``, each (C, H, W) in [0, 1]
    (C = 3 with ``color``, else 1); one-line errors for a missing or empty folder, an
    unreadable image or one smaller than ``MIN_SIDE`` a side."""
    images = []
    for path in list_images(folder, flag):
        image = load_image(path, gray=not color)
        if min(image.shape[-2:]) < MIN_SIDE:
            h, w = image.shape[-2:]
            raise ValueError(f"{flag}: {path} is {h}x{w} pixels: images must be at least "
                             f"{MIN_SIDE}x{MIN_SIDE}")
        images.append(image)
    return images


def _to_tensor(array: np.ndarray, gray: bool) -> Tensor:
    """(H, W) or (H, W, C) uint8/uint16/float array -> (C, H, W) float32 in [0, 1]."""
    from skimage.color import gray2rgb, rgb2gray
    from skimage.util import img_as_float32

    img = img_as_float32(array)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if gray and img.ndim == 3:
        img = rgb2gray(img).astype(np.float32)  # ITU-R 709 luma
    elif not gray and img.ndim == 2:
        img = gray2rgb(img)
    t = torch.from_numpy(np.array(img, order="C"))  # a writable copy
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def load_image(path: str | os.PathLike, gray: bool = True) -> Tensor:
    """Read an image file as a (C, H, W) float32 tensor in [0, 1] (C = 1 if ``gray``)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            if _sixteen_bit_colour(im):  # Pillow would keep 8 of the 16 bits
                return _to_tensor(_sixteen_bit_colour_array(im, path), gray)
            im.load()
            return _to_tensor(_array_at_scale(ImageOps.exif_transpose(im), path), gray)
    # PIL: unreadable, truncated or unknown format, or over its pixel limit (a decompression bomb)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"image {path} cannot be read ({str(e).splitlines()[0][:200]})"
                         ) from None


def _sixteen_bit_colour(im) -> bool:
    """Whether a PIL image, before it is loaded, stores 16 bits a colour channel."""
    args = im.tile[0].args if im.tile else None
    raw = args if isinstance(args, str) else (args[0] if args else "")
    return im.mode in ("RGB", "RGBA", "RGBX") and ";16" in str(raw)


def _sixteen_bit_colour_array(im, path) -> np.ndarray:
    """The uint16 pixels of a 16-bit colour TIFF (``tifffile``, a dependency of scikit-image);
    other 16-bit colour formats are refused: Pillow reads them at 8 bits."""
    if im.format != "TIFF":
        raise ValueError(f"image {path} is 16-bit colour, which would be read at 8 bits: save "
                         f"it as a 16-bit TIFF (read at its full precision) or as 8-bit")
    import tifffile

    try:
        pixels = np.asarray(tifffile.imread(path))
    except (ValueError, KeyError, ImportError, NotImplementedError) as e:  # LZW: imagecodecs
        raise ValueError(f"image {path}: its 16-bit colour cannot be decoded "
                         f"({str(e).splitlines()[0][:200]}): save it uncompressed or with "
                         f"deflate, or pip install imagecodecs") from None
    if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
        raise ValueError(f"image {path} holds an array of shape {tuple(pixels.shape)}, not one "
                         f"RGB picture (several pages?): save the picture alone")
    if pixels.shape[-1] == 4 and pixels[..., 3].min() < 65535:
        raise _transparent(path)
    return pixels


def _transparent(path) -> ValueError:
    """The error for a picture with transparent pixels, whose colour is undefined."""
    return ValueError(f"image {path} has transparent pixels (its alpha channel), whose colour "
                      f"is undefined: flatten it onto a background first")


def _array_at_scale(im, path) -> np.ndarray:
    """The pixels of a PIL image as an array whose dtype gives their scale: uint8 (8-bit),
    uint16 (16-bit grayscale, read at its true scale, not saturated) or float32 in [0, 1]."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.uint16)
    if im.mode == "I":  # 32-bit integer pixels: PNG stores 16-bit grayscale this way too
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"image {path}: 32-bit integer pixels outside [0, 65535]; save "
                             f"it as 8- or 16-bit")
        return arr.astype(np.uint16)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"image {path}: float pixels must be finite and in [0, 1]")
        return arr
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if "A" in im.getbands() and im.getchannel("A").getextrema()[0] < 255:
        raise _transparent(path)
    if im.mode in ("L", "LA"):
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))


def bsds500(
    data_root: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train", "test"),
    gray: bool = True,
) -> list[Tensor]:
    """BSDS500 images; the paper meta-trains on ``("train", "test")`` (400 images) and uses
    ``("val",)`` (100 images) for the outer loss."""
    root = resolve_data_root(data_root)
    for split in splits:
        if split not in ("train", "test", "val"):
            raise ValueError(f"splits must be among train/test/val, got {split!r}")
    return [load_image(p, gray) for s in splits for p in list_images(root / "bsds500" / s)]


def set3c(data_root: str | os.PathLike | None = None, gray: bool = False) -> list[Tensor]:
    """Set3C (butterfly, leaves, starfish): 3 × (3, 256, 256) RGB, or (1, 256, 256) if ``gray``."""
    root = resolve_data_root(data_root)
    return [load_image(p, gray) for p in list_images(root / "set3c")]


def fastmri_split(data_root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The canonical MRI ×4 split: ``{"finetune": [...], "test": [...], ...}`` slice names."""
    path = resolve_data_root(data_root) / "fastmri" / "splits.json"
    if not path.is_file():
        raise DataRootError(f"split file {path} does not exist: {HOW_TO_SET}")
    split = json.loads(path.read_text())
    return {k: v for k, v in split.items() if isinstance(v, list)}


def fastmri_knee(
    data_root: str | os.PathLike | None = None, names: Sequence[str] | str = "test"
) -> list[Tensor]:
    """fastMRI knee magnitude slices, each (1, 320, 320) float32 normalised to max 1.

    Args:
        data_root: data root (see module docstring).
        names: slice names (file stems), or a split name from ``splits.json``
            (``"finetune"`` or ``"test"``).
    """
    root = resolve_data_root(data_root)
    folder = root / "fastmri" / "knee_mc_val_rss"
    if isinstance(names, str):
        split = fastmri_split(root)
        if names not in split:
            raise ValueError(f"names must be a split among {sorted(split)} or a list of slice "
                             f"names, got {names!r}")
        names = split[names]
    if not folder.is_dir():
        raise DataRootError(f"data folder {folder} does not exist: {HOW_TO_SET}")
    slices = []
    for name in names:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise DataRootError(f"slice {path} does not exist: {HOW_TO_SET}")
        x = torch.from_numpy(np.load(path).astype(np.float32))
        slices.append((x / x.max()).unsqueeze(0))
    return slices


#: scikit-image's shipped images (no download): natural textures and objects.
DEMO_TRAIN = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "coins")
DEMO_TEST = ("camera", "moon", "clock")


def demo_images(split: str = "train", size: int = 128, gray: bool = True) -> list[Tensor]:
    """The embedded demo set: scikit-image's shipped images, centre-cropped to a square and
    resized to ``size``×``size`` (anti-aliased). ``split="train"`` gives 8 images for
    (meta-)training, ``split="test"`` 3 held-out ones (camera, moon, clock)."""
    import skimage.data
    from skimage.transform import resize

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    out = []
    for name in DEMO_TRAIN if split == "train" else DEMO_TEST:
        img = _to_tensor(getattr(skimage.data, name)(), gray)
        h, w = img.shape[-2:]
        s = min(h, w)
        img = img[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        arr = resize(img.numpy(), (img.shape[0], size, size), anti_aliasing=True)
        out.append(torch.from_numpy(arr.astype(np.float32)).clamp_(0, 1))
    return out
