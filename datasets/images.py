"""Image files: how every data set decodes them, how the start-up check probes them, and ``--cache_mode``.

``decode_image`` gives an RGB image in its displayed orientation (``to_rgb`` says how each PIL mode
is converted); ``probe_image`` checks one file cheaply at start-up (``ImageInfo``); ``ImageCache``
keeps a rank's encoded files in memory (Deformable DETR's ``--cache_mode``); ``ImageSource`` loads
samples and skips unreadable ones. The official code uses ``PIL.Image.open(path).convert("RGB")``,
which ignores EXIF orientation and saturates 16-bit images.
"""

from __future__ import annotations

import io
import math
import os
import struct
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import PIL.Image
import PIL.ImageOps

from datasets.problems import DatasetError

EXIF_ORIENTATION_TAG = 0x0112
_ROTATING = (5, 6, 7, 8)  # orientations that swap width and height
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_TAIL = 1024
_FLOAT_MODE = "has 32-bit float pixels (mode F), which are not supported: save it with 8 or 16 bits"


class ImageReadError(DatasetError):
    """An image file cannot be read or decoded; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path`` (the one place where ``ImageCache`` reads files)."""
    with open(path, "rb") as f:
        return f.read()


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode -> ``RGB``.

    * 16-bit images are scaled, not saturated: ``I;16*`` and ``I`` pixels (16-bit grayscale PNG,
      TIFF) are mapped from ``[0, 65535]`` to ``[0, 255]`` (``v * 255 / 65535``, rounded); PIL's
      ``convert("RGB")`` would clip them at 255 and give a white image. 16-bit RGB(A) PNGs are
      already reduced to 8 bits per channel by PIL.
    * Grayscale (``L``, ``1``) is replicated into three channels; palette (``P``) images take their
      palette colours; RGBA / LA / PA lose their alpha channel (the stored colours are kept, as with
      the official ``convert("RGB")``: transparent pixels keep whatever colour they hold); CMYK is
      converted with PIL's formula (no colour profile). 32-bit float images (``F``) are refused (no
      unambiguous scale): the check reports them as unreadable.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        eight_bit = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return PIL.Image.fromarray(eight_bit, mode="L").convert("RGB")
    if image.mode == "F":
        raise ValueError(_FLOAT_MODE)
    with warnings.catch_warnings():  # palette transparency: dropped by design (see above)
        warnings.simplefilter("ignore", UserWarning)
        return image.convert("RGB")


def _orientation(image: PIL.Image.Image, exif_payload: bytes | None = None) -> int:
    """EXIF (or XMP) orientation 1..8 of an opened image (or of the raw EXIF block ``exif_payload``),
    1 when absent or invalid. Uses the base ``getexif`` so that a PNG is not decoded to find it."""
    try:
        if exif_payload is not None:
            exif = PIL.Image.Exif()
            exif.load(exif_payload)
        else:
            exif = PIL.Image.Image.getexif(image)
        value = exif.get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF: the image is still usable, unrotated
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def decode_image(path: str | os.PathLike[str], data: bytes | None = None) -> PIL.Image.Image:
    """Decode ``path`` (or its bytes ``data``, e.g. from ``ImageCache``) to an RGB image in its
    displayed orientation. Raises ``ImageReadError`` naming the file on any failure.

    The EXIF orientation is applied because the displayed orientation is the one annotation tools
    show and COCO's boxes use; a JSON ``width``/``height`` that matches only the stored (unrotated)
    size is reported by the start-up check, not silently clamped. Multi-frame files (GIF, TIFF) give
    their first frame; modes are converted by ``to_rgb``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data) if data is not None else path) as image:
                image.load()
                orientation = _orientation(image)
                if orientation != 1:
                    image = PIL.ImageOps.exif_transpose(image)
                return to_rgb(image)
    except FileNotFoundError as e:
        raise ImageReadError(str(path), "is not found") from e
    except Exception as e:  # truncated, corrupt, unidentified, unsupported mode, decompression bomb, ...
        raise ImageReadError(str(path), f"cannot be decoded ({type(e).__name__}: {e})") from e


@dataclass
class ImageInfo:
    """What the start-up check learned about one image file.

    ``width`` / ``height``: displayed size (after EXIF orientation); ``stored_size``: ``(w, h)`` as
    stored; ``error``: why the file cannot be used (``None`` when it can); ``notes``: properties
    worth counting in the log (``16-bit``, ``alpha``, ``cmyk``, ``palette``, ``grayscale``,
    ``exif-rotated``)."""

    width: int = 0
    height: int = 0
    stored_size: tuple[int, int] = (0, 0)
    mode: str = ""
    format: str = ""
    orientation: int = 1
    error: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _png_chain(f: BinaryIO, size: int) -> tuple[bool, bytes | None]:
    """Walk the chunks of a PNG (seeking over their data): ``(ends with IEND inside the file, the
    eXIf chunk's payload or None)``."""
    f.seek(len(_PNG_SIGNATURE))
    exif = None
    pos = len(_PNG_SIGNATURE)
    while True:
        header = f.read(8)
        if len(header) < 8:
            return False, exif
        length, kind = struct.unpack(">I4s", header)
        if pos + 12 + length > size:
            return False, exif
        if kind == b"eXIf":
            exif = f.read(length)
            f.seek(4, os.SEEK_CUR)
        else:
            f.seek(length + 4, os.SEEK_CUR)
        pos += 12 + length
        if kind == b"IEND":
            return True, exif


def _jpeg_has_end(f: BinaryIO, size: int) -> bool:
    f.seek(max(0, size - _JPEG_TAIL))
    return b"\xff\xd9" in f.read()


def _notes(image: PIL.Image.Image, orientation: int) -> tuple[str, ...]:
    notes = []
    if image.mode in _SIXTEEN_BIT_MODES:
        notes.append("16-bit")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        notes.append("alpha")
    if image.mode == "CMYK":
        notes.append("cmyk")
    if image.mode in ("P", "PA"):
        notes.append("palette")
    if image.mode in ("L", "LA", "1") or image.mode in _SIXTEEN_BIT_MODES:
        notes.append("grayscale")
    if orientation != 1:
        notes.append("exif-rotated")
    return tuple(notes)


def probe_image(path: str | os.PathLike[str], data: bytes | None = None, full: bool = False) -> ImageInfo:
    """Check one image file; never raises for a bad file: the reason is in ``ImageInfo.error``.
    ``data``: the file's bytes when already in memory; ``full``: decode it (``--check_images full``).

    Without ``full`` (``--check_images header``, the default) it parses the header (format, size,
    mode, EXIF orientation) without decoding pixels and looks for signs of truncation: a PNG's chunk
    chain must reach ``IEND`` inside the file (a seek per chunk), a JPEG must hold its end-of-image
    marker ``FFD9`` in its last kilobyte. A file that fails those cheap tests is fully decoded to
    confirm (trailing bytes after ``FFD9`` are harmless), so the check never rejects an image PIL
    can decode. Other formats are only header-checked.
    """
    try:
        f: BinaryIO = io.BytesIO(data) if data is not None else open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return ImageInfo(error="is not found")
    except OSError as e:
        return ImageInfo(error=f"cannot be read ({e})")
    with f:
        size = len(data) if data is not None else os.fstat(f.fileno()).st_size
        if size == 0:
            return ImageInfo(error="is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
                image = PIL.Image.open(f)
            info = ImageInfo(mode=image.mode, format=str(image.format), stored_size=image.size)
            suspect = None
            if image.format == "PNG":
                complete, exif_payload = _png_chain(f, size)
                if exif_payload is not None:
                    info.orientation = _orientation(image, exif_payload)
                else:
                    info.orientation = _orientation(image)
                if not complete:
                    suspect = "is truncated (its chunks do not reach the PNG end marker IEND)"
            else:
                info.orientation = _orientation(image)
                if image.format == "JPEG" and not _jpeg_has_end(f, size):
                    suspect = "is truncated (no JPEG end-of-image marker)"
            if info.orientation not in range(1, 9):
                info.orientation = 1
            w, h = image.size
            info.width, info.height = (h, w) if info.orientation in _ROTATING else (w, h)
            info.notes = _notes(image, info.orientation)
            if w <= 0 or h <= 0:
                info.error = f"has no pixels ({w}x{h})"
            elif image.mode == "F":
                info.error = _FLOAT_MODE
        except Exception as e:
            return ImageInfo(error=f"cannot be decoded ({type(e).__name__}: {e})")
    if info.error is None and (full or suspect):
        try:
            decode_image(path, data)
        except ImageReadError as e:
            info.error = suspect or e.reason
    return info


class ImageCache:
    """Encoded image files of one shard, in memory (``--cache_mode``).

    Reads ``paths[i]`` for every ``i`` with ``i % world_size == rank`` once, at construction;
    ``get(i)`` returns those bytes (``None`` for another rank's image or a file that could not be
    read, which the check reports). With DataLoader workers started by ``fork`` the bytes are
    shared with the workers, not copied.
    """

    def __init__(self, paths: Sequence[str], rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size
        self._data: dict[int, bytes] = {}
        start = time.time()
        for i in range(rank, len(paths), world_size):
            try:
                self._data[i] = read_file(paths[i])
            except OSError:
                continue
        self.seconds = time.time() - start

    def get(self, index: int) -> bytes | None:
        return self._data.get(index)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self._data.values())

    def describe(self) -> str:
        shard = f" (shard {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        return f"cache_mode: {len(self)} image files{shard}, {self.nbytes / 2**20:.1f} MiB in memory ({self.seconds:.1f} s)"


class ImageSource:
    """The image files of a data set and what happens when one cannot be decoded at load time.

    ``paths[i]`` is the file of sample ``i``; ``cache`` the optional ``ImageCache``; ``describe(i)``
    names sample ``i`` in warnings. ``load(i)``
    decodes sample ``i``; when that fails, the failure is logged (file named) and the next readable
    sample in index order is returned instead (``(index used, image)``), so batches keep their size
    and the data order stays a function of the index. More than ``max_bad_images`` (a fraction of
    the paths) unreadable images in total (those found by the start-up check plus those met here)
    raise ``DatasetError``
    listing them. Counters are per process (each DataLoader worker keeps its own); ``bad`` may be
    pre-filled with the images the start-up check found unreadable.
    """

    def __init__(
        self,
        paths: Sequence[str],
        cache: ImageCache | None = None,
        max_bad_images: float | None = None,
        describe: Any = None,
        bad: dict[int, str] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.cache = cache
        self.max_bad = None if max_bad_images is None else math.floor(max_bad_images * len(self.paths) + 1e-9)
        self.bad: dict[int, str] = dict(bad or {})
        self.describe = describe or (lambda i: self.paths[i])

    def decode(self, index: int) -> PIL.Image.Image:
        data = self.cache.get(index) if self.cache is not None else None
        return decode_image(self.paths[index], data)

    def load(self, index: int, then: Callable[[int, PIL.Image.Image], Any] | None = None) -> tuple[int, Any]:
        """``(index used, image)``, or ``(index used, then(index used, image))``: ``then`` builds the
        sample from the image and may raise ``ImageReadError`` too (e.g. a panoptic PNG that cannot
        be read), which skips the sample like an undecodable image."""
        n = len(self.paths)
        for step in range(n):
            i = (index + step) % n
            if i in self.bad:
                continue
            try:
                image = self.decode(i)
                return i, image if then is None else then(i, image)
            except ImageReadError as e:
                self.bad[i] = str(e)
                total = len(self.bad)
                if self.max_bad is not None and total > self.max_bad:
                    listed = "\n".join(f"  - {m}" for m in self.bad.values())
                    raise DatasetError(
                        f"{total} unreadable images, more than the {self.max_bad} that --max_bad_images allows "
                        f"(met while loading):\n{listed}"
                    ) from e
                reason = e.reason if e.path == str(self.paths[i]) else str(e)  # another file: named
                print(f"warning: skipping {self.describe(i)}: {reason}", flush=True)
        raise DatasetError(f"no image of this data set can be decoded (first: {self.paths[index]})")


__all__ = [
    "EXIF_ORIENTATION_TAG",
    "ImageCache",
    "ImageInfo",
    "ImageReadError",
    "ImageSource",
    "decode_image",
    "probe_image",
    "read_file",
    "to_rgb",
]
