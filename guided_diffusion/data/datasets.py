"""Training images for `scripts/image_train.py`: an image folder, an `.npz` batch, or the built-in digits.

`load_data` keeps the ADM release's contract (an endless stream of `(images, kwargs)` with images as
float NCHW in [-1, 1] and `kwargs["y"]` the class labels when `class_cond`), with three sources:

* a folder of images (searched recursively; jpg, jpeg, png, gif, webp), the class being the part of
  the file name before the first underscore, as in the release;
* an `.npz` file in the evaluator's format: `arr_0` uint8 images [N, H, W, C] (C = 1 or 3, or [N, H, W]),
  optional `arr_1` integer labels;
* `digits` (or `digits:train`, `digits:heldout`, `digits:all`): the scikit-learn digits split of
  `guided_diffusion.data.digits`, rendered at `image_size`.
* `fashion` (or `fashion:train`, `fashion:test`, `fashion:test:/folder/of/idx/files`): Fashion-MNIST padded
  to 32x32 RGB (`guided_diffusion.data.fashion_mnist`).

Images that are not `image_size` square are resized and cropped as the release does (box-halving, then
bicubic to the short side, then a centre crop, or a random crop with `random_crop`). Each rank reads the
images `rank::world_size` of the sorted list. The order is a deterministic function of
`(seed, rank, epoch)`, and the stream can report and restore its position (`state_dict()` /
`load_state_dict()`), so an interrupted training run resumes on exactly the batches it would have seen.
"""

import math

import blobfile as bf
import numpy as np
import torch
from PIL import Image

from guided_diffusion.runtime import distributed as dist_util

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp")


def load_data(*, data_dir, batch_size, image_size, class_cond=False, deterministic=False, random_crop=False,
              random_flip=True, seed=0, shard=None, num_shards=None):
    """An endless, resumable iterator over `(images [B, 3, S, S] float in [-1, 1], {"y": labels} or {})`."""
    if not data_dir:
        raise ValueError("unspecified data directory: pass --data_dir (an image folder, an .npz or 'digits')")
    if shard is None or num_shards is None:
        shard, num_shards = dist_util.rank(), dist_util.world_size()
    dataset = open_dataset(data_dir, image_size, class_cond=class_cond, random_crop=random_crop)
    return BatchStream(dataset, batch_size, shuffle=not deterministic, random_flip=random_flip, seed=seed,
                       shard=shard, num_shards=num_shards)


def open_dataset(data_dir, image_size, class_cond=False, random_crop=False):
    """The whole (unsharded) dataset behind `data_dir` as an `ArrayImages` or `FolderImages`."""
    name = str(data_dir)
    if name == "digits" or name.startswith("digits:"):
        from guided_diffusion.data.digits import load_digits_split

        split = name.partition(":")[2] or "train"
        images, labels = load_digits_split(image_size, split)
        return ArrayImages(images, labels if class_cond else None, image_size, random_crop=random_crop)
    if name == "fashion" or name.startswith("fashion:"):
        from guided_diffusion.data.fashion_mnist import load_fashion_split

        split, _, folder = name.partition(":")[2].partition(":")
        images, labels = load_fashion_split(split or "train", folder or None)
        return ArrayImages(images, labels if class_cond else None, image_size, random_crop=random_crop)
    if not bf.exists(name):
        raise FileNotFoundError(f"data {name} does not exist: give an image folder, an .npz file (arr_0 images, "
                                "arr_1 labels), 'digits' or 'fashion:train'")
    if name.endswith(".npz"):
        with bf.BlobFile(name, "rb") as f:
            data = np.load(f)
            images = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in data.files else None
        if class_cond and labels is None:
            raise ValueError(f"{name} has no labels (arr_1) but --class_cond is True")
        return ArrayImages(images, labels if class_cond else None, image_size, random_crop=random_crop)
    if not bf.isdir(name):
        raise ValueError(f"data {name} is a file but not an .npz batch: give an image folder, an .npz file, "
                         "'digits' or 'fashion:train'")
    files = list_image_files_recursively(name)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {name}")
    classes = None
    if class_cond:
        names = [bf.basename(path).split("_")[0] for path in files]
        index = {c: i for i, c in enumerate(sorted(set(names)))}
        classes = np.array([index[c] for c in names], dtype=np.int64)
    return FolderImages(files, classes, image_size, random_crop=random_crop)


def list_image_files_recursively(data_dir):
    found = []
    for entry in sorted(bf.listdir(data_dir)):
        path = bf.join(data_dir, entry)
        if "." in entry and entry.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
            found.append(path)
        elif bf.isdir(path):
            found.extend(list_image_files_recursively(path))
    return found


# --------------------------------------------------------------------------------------------------
# Datasets: __len__, and image(i, rng) -> uint8 HWC RGB at image_size


class ArrayImages:
    """Images held in memory as a uint8 array; labels optional."""

    def __init__(self, images, labels, image_size, random_crop=False):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images, got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected images [N, H, W, C] with C in 1, 3, 4, got shape {images.shape}")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        elif images.shape[-1] == 4:
            images = images[..., :3]
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.image_size = image_size
        self.random_crop = random_crop
        self.exact = images.shape[1] == images.shape[2] == image_size

    def __len__(self):
        return len(self.images)

    def image(self, i, rng):
        if self.exact:
            return self.images[i]
        return _fit(Image.fromarray(self.images[i]), self.image_size, self.random_crop, rng)

    def label(self, i):
        return None if self.labels is None else int(self.labels[i])


class FolderImages:
    """Image files read on demand (local paths or blobfile URLs)."""

    def __init__(self, paths, classes, image_size, random_crop=False):
        self.paths = list(paths)
        self.classes = classes
        self.image_size = image_size
        self.random_crop = random_crop

    def __len__(self):
        return len(self.paths)

    def image(self, i, rng):
        with bf.BlobFile(self.paths[i], "rb") as f:
            pil_image = Image.open(f)
            pil_image.load()
        return _fit(pil_image.convert("RGB"), self.image_size, self.random_crop, rng)

    def label(self, i):
        return None if self.classes is None else int(self.classes[i])


def _halve_while_large(pil_image, target):
    # Box-filter halvings first keep strong downsampling from aliasing.
    while min(*pil_image.size) >= 2 * target:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    return pil_image


def _fit(pil_image, image_size, random_crop, rng, min_crop_frac=0.8, max_crop_frac=1.0):
    """Resize so the short side is `image_size` (or a bit more for random crops) and crop a square."""
    short = image_size
    if random_crop:
        low, high = math.ceil(image_size / max_crop_frac), math.ceil(image_size / min_crop_frac)
        short = int(rng.integers(low, high + 1))
    pil_image = _halve_while_large(pil_image, short)
    scale = short / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(s * scale) for s in pil_image.size), resample=Image.BICUBIC)
    arr = np.asarray(pil_image.convert("RGB"))
    spare_y, spare_x = arr.shape[0] - image_size, arr.shape[1] - image_size
    if random_crop:
        top, left = int(rng.integers(spare_y + 1)), int(rng.integers(spare_x + 1))
    else:
        top, left = spare_y // 2, spare_x // 2
    return arr[top:top + image_size, left:left + image_size]


def to_model_range(images_uint8_nhwc):
    """uint8 [N, H, W, C] as float32 [N, C, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8_nhwc)).float()
    return (x / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------
# The stream


class BatchStream:
    """Endless batches of one rank's shard, in an order fixed by (seed, shard, epoch); drops ragged ends."""

    def __init__(self, dataset, batch_size, shuffle=True, random_flip=True, seed=0, shard=0, num_shards=1):
        self.dataset = dataset
        self.local = np.arange(len(dataset))[shard::num_shards]
        if len(self.local) < batch_size:
            raise ValueError(f"rank {shard} holds {len(self.local)} images, fewer than the batch size {batch_size}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.random_flip = random_flip
        self.seed = int(seed)
        self.shard = shard
        self.epoch = 0
        self.position = 0
        self._plan = None

    def _epoch_plan(self):
        if self._plan is None or self._plan[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.shard, self.epoch])
            order = rng.permutation(self.local) if self.shuffle else self.local.copy()
            flips = (rng.random(len(order)) < 0.5) if self.random_flip else np.zeros(len(order), dtype=bool)
            self._plan = (self.epoch, order, flips)
        return self._plan[1], self._plan[2]

    def __iter__(self):
        return self

    def __next__(self):
        order, flips = self._epoch_plan()
        if self.position + self.batch_size > len(order):
            self.epoch, self.position = self.epoch + 1, 0
            order, flips = self._epoch_plan()
        picks = range(self.position, self.position + self.batch_size)
        images, labels = [], []
        for k in picks:
            i = int(order[k])
            rng = np.random.default_rng([self.seed, self.shard, self.epoch, k, 1])
            arr = self.dataset.image(i, rng)
            images.append(arr[:, ::-1] if flips[k] else arr)
            labels.append(self.dataset.label(i))
        self.position += self.batch_size
        kwargs = {}
        if labels[0] is not None:
            kwargs["y"] = torch.tensor(labels, dtype=torch.int64)
        return to_model_range(np.stack(images)), kwargs

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shard": self.shard}

    def load_state_dict(self, state):
        if int(state.get("shard", self.shard)) != self.shard:
            raise ValueError("data stream state belongs to another rank")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.seed = int(state.get("seed", self.seed))
        self._plan = None

