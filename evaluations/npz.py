"""Reading image batches and statistics from ``.npz`` files without loading the images into memory.

An ADM batch is an ``.npz`` whose ``arr_0`` holds uint8 images ``[N, H, W, 3]`` (values 0..255).
Reference batches may also carry FID statistics ``mu``, ``sigma`` (pool features) and ``mu_s``,
``sigma_s`` (spatial features).  ``np.load`` cannot memory-map a member of a zip archive, and 50,000
256x256 images are 9.8 GB, so :class:`NpzImageReader` parses the ``.npy`` header of the member and then
reads whole rows straight from the (possibly compressed) zip stream, a batch at a time.
"""

from __future__ import annotations

import struct
import tokenize
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

IMAGES_KEY = "arr_0"
STAT_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}

__all__ = [
    "IMAGES_KEY",
    "STAT_KEYS",
    "NpzInfo",
    "NpzImageReader",
    "check_member_intact",
    "inspect_npz",
    "read_npz_statistics",
    "validate_image_header",
]

# What zipfile, zlib and numpy raise when the bytes of a member (or of its header) are not what was
# written: a flipped byte shows up as a CRC mismatch at the member's end, a zlib stream error, or a
# header numpy cannot parse.
_DAMAGE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    ValueError,
    SyntaxError,
    tokenize.TokenError,
    struct.error,
)


def _damaged(path, member, detail):
    if isinstance(detail, BaseException):
        detail = str(detail) or type(detail).__name__
    return ValueError(
        f"{path}: member '{member}' is damaged ({detail}); the file was changed after it was written "
        "(a failed copy or a bad disk): copy it again from its source, or sample it again"
    )


@contextmanager
def _reading_member(path, member):
    """Turn the low-level errors of reading ``member`` into one clear error naming file and member."""
    try:
        yield
    except _DAMAGE_ERRORS as exc:
        raise _damaged(path, member, exc) from None


@dataclass(frozen=True)
class NpzInfo:
    """What an ``.npz`` batch holds: its member names and, when present, the image array's header."""

    path: Path
    keys: Tuple[str, ...]
    image_shape: Optional[Tuple[int, ...]]
    image_dtype: Optional[np.dtype]

    @property
    def has_images(self):
        return self.image_shape is not None

    @property
    def num_images(self):
        return int(self.image_shape[0]) if self.image_shape is not None else 0

    def has_statistics(self, kind):
        return all(k in self.keys for k in STAT_KEYS[kind])


def _member_name(key):
    return f"{key}.npy"


def _open_zip(path):
    if not path.exists():
        raise FileNotFoundError(f"no such batch file: {path}")
    try:
        return zipfile.ZipFile(path, "r")
    except (zipfile.BadZipFile, NotImplementedError, struct.error) as exc:
        if _starts_like_a_zip(path):
            raise ValueError(
                f"{path} is damaged: its zip directory cannot be read ({exc}); copy it again from its "
                "source, or sample it again"
            ) from None
        raise ValueError(
            f"{path} is not an .npz archive ({exc}); save batches with np.savez(path, images)"
        ) from None


def _starts_like_a_zip(path):
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _read_member_array(zf, member):
    # Read from the zip member itself: np.load guesses the format from the file's first bytes.
    with zf.open(member) as fp:
        return np.lib.format.read_array(fp, allow_pickle=False)


def _read_header(fp):
    """(shape, fortran order, dtype, format version) of the .npy member open as `fp`; the first three are
    None for format versions other than 1.0 and 2.0."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        # Format 3.0 (utf-8 field names) never occurs for plain image arrays; let np.load handle it.
        shape, fortran, dtype = None, None, None
    return shape, fortran, dtype, version


def inspect_npz(path):
    """List an ``.npz`` file's members and read the header of its image array, if any (cheap)."""
    path = Path(path)
    with _open_zip(path) as zf:
        keys = tuple(n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy"))
        shape = dtype = None
        if IMAGES_KEY in keys:
            member = _member_name(IMAGES_KEY)
            with _reading_member(path, member):
                with zf.open(member) as fp:
                    shape, _, dtype, _ = _read_header(fp)
                    header_bytes = fp.tell()
                if shape is None:  # unusual header version: fall back to a full load
                    arr = _read_member_array(zf, member)
                    shape, dtype = arr.shape, arr.dtype
                    header_bytes = None
            if header_bytes is not None:
                _check_member_size(path, zf.getinfo(member), header_bytes, shape, dtype)
    return NpzInfo(path=path, keys=keys, image_shape=shape, image_dtype=dtype)


def _check_member_size(path, info, header_bytes, shape, dtype):
    """A damaged header (shape or dtype) no longer matches the member's size: refuse before reading."""
    data_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if header_bytes + data_bytes != info.file_size:
        raise _damaged(
            path,
            info.filename,
            f"its header describes {tuple(shape)} {np.dtype(dtype)} ({data_bytes} bytes of data) but "
            f"it holds {info.file_size - header_bytes}",
        )


def check_member_intact(path, key=IMAGES_KEY, chunk_bytes=16 << 20):
    """Read member ``key`` of ``path`` through to its end, a chunk at a time, so that zipfile checks its CRC.

    A changed byte in the middle of a member is only seen at the member's end; this finds it in the time
    of one read, before any features are computed. Raises the damaged-member ``ValueError``.
    """
    path = Path(path)
    member = _member_name(key)
    with _open_zip(path) as zf:
        if member not in zf.namelist():
            raise ValueError(f"{path} has no '{key}' array")
        with _reading_member(path, member), zf.open(member) as fp:
            while fp.read(chunk_bytes):
                pass


def validate_image_header(info, *, min_images=1):
    """Raise ``ValueError`` unless ``info`` describes uint8 NHWC RGB images (at least ``min_images``)."""
    path = info.path
    if not info.has_images:
        found = ", ".join(info.keys) or "nothing"
        raise ValueError(
            f"{path} has no '{IMAGES_KEY}' array (found: {found}). A batch must store its images as "
            f"the first positional array, e.g. np.savez(path, images) with images uint8 [N, H, W, 3]."
        )
    shape, dtype = tuple(info.image_shape), np.dtype(info.image_dtype)
    if dtype != np.uint8:
        hint = ""
        if np.issubdtype(dtype, np.floating):
            hint = (
                " Convert model outputs in [-1, 1] with ((x + 1) * 127.5).round().clip(0, 255)"
                ".astype(np.uint8), as the ADM sampling scripts do."
            )
        raise ValueError(
            f"{path}: '{IMAGES_KEY}' must hold uint8 images with values 0..255, got dtype {dtype}.{hint}"
        )
    if len(shape) != 4:
        raise ValueError(
            f"{path}: '{IMAGES_KEY}' must have shape [N, H, W, 3] (NHWC), got {shape}."
            + (" Add a channel axis (and repeat it 3 times for grayscale)." if len(shape) == 3 else "")
        )
    if shape[-1] != 3:
        if shape[1] == 3:
            raise ValueError(
                f"{path}: '{IMAGES_KEY}' has shape {shape}, which looks like NCHW; the evaluator needs "
                f"NHWC [N, H, W, 3]. Transpose with images.transpose(0, 2, 3, 1)."
            )
        raise ValueError(
            f"{path}: '{IMAGES_KEY}' has {shape[-1]} channels (shape {shape}); the evaluator needs RGB "
            f"images [N, H, W, 3] (repeat grayscale to 3 channels, drop an alpha channel)."
        )
    if shape[1] < 1 or shape[2] < 1:
        raise ValueError(f"{path}: '{IMAGES_KEY}' has empty images (shape {shape})")
    if shape[0] < min_images:
        raise ValueError(
            f"{path}: '{IMAGES_KEY}' holds {shape[0]} images but at least {min_images} are needed"
        )


class NpzImageReader:
    """Stream the rows of an ``.npz`` member in batches, holding at most one batch in memory.

    Use as a context manager; iterate :meth:`batches`.  Arrays stored in Fortran order (never written by
    ``np.savez`` for C-contiguous images) are loaded whole instead.
    """

    def __init__(self, path, key=IMAGES_KEY):
        self.path = Path(path)
        self.key = key
        self._zip = None
        self._fp = None
        self._array = None
        self.shape = ()
        self.dtype = None

    def __enter__(self):
        self._zip = _open_zip(self.path)
        member = _member_name(self.key)
        if member not in self._zip.namelist():
            self.close()
            raise ValueError(f"{self.path} has no '{self.key}' array")
        try:
            with _reading_member(self.path, member):
                self._fp = self._zip.open(member, "r")
                shape, fortran, dtype, _ = _read_header(self._fp)
                if shape is None or fortran or dtype.hasobject:
                    self._fp.close()
                    self._fp = None
                    self._array = np.ascontiguousarray(_read_member_array(self._zip, member))
                    shape, dtype = self._array.shape, self._array.dtype
        except ValueError:
            self.close()
            raise
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._fp is not None:
            self._fp.close()
            self._fp = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __len__(self):
        return int(self.shape[0]) if self.shape else 0

    def _read_exact(self, size):
        chunks = []
        remaining = size
        while remaining > 0:
            # zipfile checks the member's CRC when the last byte is read: a flipped byte in the
            # middle of the images is only seen at the end of the stream.
            with _reading_member(self.path, _member_name(self.key)):
                chunk = self._fp.read(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) != size:
            raise ValueError(
                f"{self.path}: '{self.key}' is truncated (expected {size} more bytes, got {len(data)})"
            )
        return data

    def batches(self, batch_size):
        """Yield consecutive ``[b, ...]`` arrays (``b <= batch_size``) covering all rows once."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        n = len(self)
        if self._array is not None:
            for start in range(0, n, batch_size):
                yield self._array[start : start + batch_size]
            return
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            data = self._read_exact(count * row_bytes)
            yield np.frombuffer(data, dtype=self.dtype).reshape((count, *row_shape))


def read_npz_statistics(path, kind):
    """The precomputed ``(mu, sigma)`` of ``kind`` (``"pool"`` or ``"spatial"``) stored in ``path``.

    Returns ``None`` when neither key is present; raises ``ValueError`` for half a pair.
    """
    mu_key, sigma_key = STAT_KEYS[kind]
    path = Path(path)
    keys = set(inspect_npz(path).keys)
    if mu_key not in keys and sigma_key not in keys:
        return None
    if mu_key not in keys or sigma_key not in keys:
        missing = sigma_key if mu_key in keys else mu_key
        raise ValueError(
            f"{path} stores '{mu_key if mu_key in keys else sigma_key}' but not '{missing}'; "
            f"reference statistics must come as the pair ({mu_key}, {sigma_key})"
        )
    with _open_zip(path) as zf:
        arrays = []
        for key in (mu_key, sigma_key):
            with _reading_member(path, _member_name(key)):
                arrays.append(_read_member_array(zf, _member_name(key)))
    mu, sigma = arrays
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{path}: inconsistent statistics '{mu_key}' {mu.shape} and '{sigma_key}' {sigma.shape}"
        )
    for key, value in ((mu_key, mu), (sigma_key, sigma)):
        _check_finite_statistic(path, key, value)
    return mu, sigma


def _check_finite_statistic(path, key, value):
    """NaN or inf in stored statistics would turn every FID computed from them into nan."""
    if not np.issubdtype(value.dtype, np.number):
        raise ValueError(f"{path}: statistic '{key}' must be numeric, got dtype {value.dtype}")
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    if bad:
        raise ValueError(
            f"{path}: stored statistic '{key}' holds {bad} NaN or infinite value(s) of {np.size(value)}; "
            "the reference batch is damaged or was computed from broken features: use an intact copy, "
            "or recompute the statistics from the reference images"
        )

