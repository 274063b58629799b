"""Headers and pixels of the files a microscopy dump comes in, always in the source dtype (no rescaling).

Images are grey or RGB, 8 or 16 bit: PNG, JPEG, BMP through Pillow; TIFF headers through tifffile, TIFF pixels
through Pillow's C decoders where Pillow holds them exactly and through tifffile otherwise (16-bit RGB, planar
layouts). Pixels come back as ``H x W x C`` arrays, ``C`` = 1 or 3. MedMNIST ``.npz`` archives are read member by
member. Every failure is an :class:`InputError` naming the file.
"""

import contextlib
import functools
import os
import zipfile
from typing import NamedTuple

import numpy as np
import tifffile
from PIL import Image

from cytodml.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
#: operating-system droppings that a copied class folder may hold beside the images
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})

#: Pillow mode -> (channels, dtype) for the modes a microscopy dump is expected to hold
_PIL_MODES = {
    "L": (1, "uint8"),
    "RGB": (3, "uint8"),
    "I;16": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "I;16N": (1, "uint16"),
}
_DTYPES = frozenset({"uint8", "uint16"})
_PILLOW_RESIZABLE = frozenset({"L", "RGB", "I;16"})
#: Pillow modes that hold a TIFF's unsigned samples exactly, with their bits per sample
_PILLOW_TIFF_BITS = {"L": 8, "RGB": 8, "I;16": 16, "I;16B": 16}
BITS_PER_SAMPLE, SAMPLE_FORMAT = 258, 339  # TIFF tags


class ImageHeader(NamedTuple):
    height: int
    width: int
    channels: int
    dtype: str


def is_ignored(name: str) -> bool:
    """Hidden files and folders (``.DS_Store``, ``._x.tif``, ``.ipynb_checkpoints``) and Windows thumbnail caches."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def is_image(path) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def read_header(path) -> ImageHeader:
    """Size, channel count and dtype of an image, from its header only (no pixel decoding)."""
    with _reading(path):
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                page = _single_page(tif, path)
                height, width, channels = _tiff_geometry(page, path)
                return _checked(ImageHeader(height, width, channels, str(page.dtype)), path)
        with Image.open(path) as image:
            channels, dtype = _pillow_mode(image, path)
            return ImageHeader(image.height, image.width, channels, dtype)


class Decoded(NamedTuple):
    """Decoded pixels, ``H x W x C`` in the source dtype, and the same pixels as a Pillow image where Pillow
    decoded them in a mode it can resize (so that resizing need not copy the pixels back into Pillow)."""

    pixels: np.ndarray
    pillow: Image.Image | None


def decode(path, at_least: int | None = None) -> Decoded:
    """Pixels of an image file, with the Pillow image that holds them where there is one.

    ``at_least``: the caller needs no more than that many pixels along each side, so a JPEG may be decoded at 1/2,
    1/4 or 1/8 scale in the DCT domain (Pillow's draft mode) as long as both sides stay at least that long: the
    cheapest way down to a small patch, and as deterministic per file as a full decode.
    """
    with _reading(path):
        if _is_tiff(path):
            pixels, pillow = _pillow_tiff(path) or (_tifffile_pixels(path), None)
        else:
            with Image.open(path) as image:
                _pillow_mode(image, path)
                if at_least and image.format == "JPEG":
                    image.draft(image.mode, (at_least, at_least))
                pixels = np.asarray(image)
                pillow = image if image.mode in _PILLOW_RESIZABLE else None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return Decoded(pixels.astype(pixels.dtype.newbyteorder("="), copy=False), pillow)


def npz_members(path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{member: (shape, dtype)}`` of a ``.npz`` from the array headers, without decompressing the arrays."""
    members = {}
    with _reading(path), zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with archive.open(name) as handle:
                version = np.lib.format.read_magic(handle)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(handle)
            members[name.removesuffix(".npy")] = (tuple(shape), str(dtype))
    return members


@functools.lru_cache(maxsize=1)
def read_npz_member(path: str, member: str) -> np.ndarray:
    """One array of a ``.npz``, kept for the next call: patching reads a member's rows chunk after chunk."""
    with _reading(path), np.load(path) as archive:
        if member not in archive.files:
            raise InputError(f"{path}: no array '{member}' (it has {archive.files})")
        return archive[member]


@contextlib.contextmanager
def _reading(path):
    """Turn whatever a decoder raises on a broken file into an :class:`InputError` that names the file."""
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError as error:
        raise InputError(f"{path}: file not found") from error
    except Exception as error:  # Pillow, tifffile, zipfile and the codecs raise many types for a corrupt file
        raise InputError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error


def _is_tiff(path) -> bool:
    return os.path.splitext(path)[1].lower() in TIFF_SUFFIXES


def _pillow_mode(image: Image.Image, path) -> tuple[int, str]:
    if image.mode not in _PIL_MODES:
        raise InputError(f"{path}: pixel mode '{image.mode}' is not grey or RGB at 8 or 16 bit")
    return _PIL_MODES[image.mode]


def _pillow_tiff(path) -> tuple[np.ndarray, Image.Image | None] | None:
    """A TIFF decoded by Pillow where Pillow holds its samples exactly (unsigned, 8-bit grey or RGB, 16-bit grey),
    else None. Pillow's C decoders read the PackBits and LZW of IDEAS and CellProfiler exports several times faster
    than tifffile's Python fallbacks (tifffile needs the optional imagecodecs for C speed)."""
    try:
        image = Image.open(path)
    except (OSError, ValueError):
        return None
    with image:
        bits = set(np.atleast_1d(image.tag_v2.get(BITS_PER_SAMPLE, 1)).tolist())
        formats = set(np.atleast_1d(image.tag_v2.get(SAMPLE_FORMAT, 1)).tolist())
        if getattr(image, "n_frames", 1) != 1 or bits != {_PILLOW_TIFF_BITS.get(image.mode)} or formats != {1}:
            return None
        return np.asarray(image), image if image.mode in _PILLOW_RESIZABLE else None


def _tifffile_pixels(path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        page = _single_page(tif, path)
        _checked(ImageHeader(*_tiff_geometry(page, path), str(page.dtype)), path)
        pixels = page.asarray()
        return np.moveaxis(pixels, 0, -1) if page.axes.startswith("S") else pixels  # planar: one plane per sample


def _single_page(tif: tifffile.TiffFile, path) -> tifffile.TiffPage:
    if len(tif.pages) == 0:
        raise InputError(f"{path}: cannot read image (no readable TIFF page)")
    if len(tif.pages) != 1:
        raise InputError(f"{path}: {len(tif.pages)} pages; expected one image per file (one file per channel)")
    return tif.pages[0]


def _tiff_geometry(page: tifffile.TiffPage, path) -> tuple[int, int, int]:
    """``(height, width, channels)`` of a TIFF page, whether its samples are interleaved (YXS) or planar (SYX)."""
    axes, shape = page.axes, page.shape
    if axes == "YX":
        return shape[0], shape[1], 1
    if axes == "YXS":
        return shape[0], shape[1], shape[2]
    if axes == "SYX":
        return shape[1], shape[2], shape[0]
    raise InputError(f"{path}: TIFF axes '{axes}' (shape {shape}); expected a single grey or RGB image")


def _checked(header: ImageHeader, path) -> ImageHeader:
    if header.dtype not in _DTYPES or header.channels not in (1, 3):
        raise InputError(
            f"{path}: {header.channels}-channel {header.dtype} image; expected grey or RGB, uint8 or uint16"
        )
    return header
