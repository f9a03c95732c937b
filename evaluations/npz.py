"""Reading image batches and statistics from ``.npz`` files without loading the images into memory.

An ADM batch is an ``.npz`` whose ``arr_0`` holds uint8 images ``[N, H, W, 3]`` (values 0..255).
Reference batches may also carry FID statistics ``mu``, ``sigma`` (pool features) and ``mu_s``,
``sigma_s`` (spatial features).  ``np.load`` cannot memory-map a member of a zip archive, and 50,000
256x256 images are 9.8 GB, so :class:`NpzImageReader` parses the ``.npy`` header of the member and then
reads whole rows straight from the (possibly compressed) zip stream, a batch at a time.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

IMAGES_KEY = "arr_0"
STAT_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}

__all__ = [
    "IMAGES_KEY",
    "STAT_KEYS",
    "NpzInfo",
    "NpzImageReader",
    "inspect_npz",
    "read_npz_statistics",
    "validate_image_header",
]


@dataclass(frozen=True)
class NpzInfo:
    """What an ``.npz`` batch holds: its member names and, when present, the image array's header."""

    path: Path
    keys: Tuple[str, ...]
    image_shape: Optional[Tuple[int, ...]]
    image_dtype: Optional[np.dtype]

    @property
    def has_images(self) -> bool:
        return self.image_shape is not None

    @property
    def num_images(self) -> int:
        return int(self.image_shape[0]) if self.image_shape is not None else 0

    def has_statistics(self, kind: str) -> bool:
        return all(k in self.keys for k in STAT_KEYS[kind])


def _member_name(key: str) -> str:
    return f"{key}.npy"


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise FileNotFoundError(f"no such batch file: {path}")
    try:
        return zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile as exc:
        raise ValueError(
            f"{path} is not an .npz archive ({exc}); save batches with np.savez(path, images)"
        ) from None


def _read_header(fp) -> Tuple[Tuple[int, ...], bool, np.dtype, Tuple[int, int]]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        # Format 3.0 (utf-8 field names) never occurs for plain image arrays; let np.load handle it.
        shape, fortran, dtype = None, None, None
    return shape, fortran, dtype, version


def inspect_npz(path) -> NpzInfo:
    """List an ``.npz`` file's members and read the header of its image array, if any (cheap)."""
    path = Path(path)
    with _open_zip(path) as zf:
        keys = tuple(n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy"))
        shape = dtype = None
        if IMAGES_KEY in keys:
            with zf.open(_member_name(IMAGES_KEY)) as fp:
                shape, _, dtype, _ = _read_header(fp)
            if shape is None:  # unusual header version: fall back to a full load
                with np.load(path) as data:
                    arr = data[IMAGES_KEY]
                    shape, dtype = arr.shape, arr.dtype
    return NpzInfo(path=path, keys=keys, image_shape=shape, image_dtype=dtype)


def validate_image_header(info: NpzInfo, *, min_images: int = 1) -> None:
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

    def __init__(self, path, key: str = IMAGES_KEY):
        self.path = Path(path)
        self.key = key
        self._zip: Optional[zipfile.ZipFile] = None
        self._fp = None
        self._array: Optional[np.ndarray] = None
        self.shape: Tuple[int, ...] = ()
        self.dtype: Optional[np.dtype] = None

    def __enter__(self) -> "NpzImageReader":
        self._zip = _open_zip(self.path)
        member = _member_name(self.key)
        if member not in self._zip.namelist():
            self.close()
            raise ValueError(f"{self.path} has no '{self.key}' array")
        self._fp = self._zip.open(member, "r")
        shape, fortran, dtype, _ = _read_header(self._fp)
        if shape is None or fortran or dtype.hasobject:
            self._fp.close()
            self._fp = None
            with np.load(self.path) as data:
                self._array = np.ascontiguousarray(data[self.key])
            shape, dtype = self._array.shape, self._array.dtype
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
            self._fp = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __len__(self) -> int:
        return int(self.shape[0]) if self.shape else 0

    def _read_exact(self, size: int) -> bytes:
        chunks: List[bytes] = []
        remaining = size
        while remaining > 0:
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

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
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


def read_npz_statistics(path, kind: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The precomputed ``(mu, sigma)`` of ``kind`` (``"pool"`` or ``"spatial"``) stored in ``path``.

    Returns ``None`` when neither key is present; raises ``ValueError`` for half a pair.
    """
    mu_key, sigma_key = STAT_KEYS[kind]
    path = Path(path)
    with np.load(path) as data:
        keys = set(data.files)
        if mu_key not in keys and sigma_key not in keys:
            return None
        if mu_key not in keys or sigma_key not in keys:
            missing = sigma_key if mu_key in keys else mu_key
            raise ValueError(
                f"{path} stores '{mu_key if mu_key in keys else sigma_key}' but not '{missing}'; "
                f"reference statistics must come as the pair ({mu_key}, {sigma_key})"
            )
        mu, sigma = data[mu_key], data[sigma_key]
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{path}: inconsistent statistics '{mu_key}' {mu.shape} and '{sigma_key}' {sigma.shape}"
        )
    return mu, sigma

