"""Datasets as uint8 NHWC batches plus batched, seeded augmentation on the training device.

Every random choice (data order, crops, flips, mixup) is a pure function of ``(seed, epoch, step)``,
so ``--resume`` reproduces a run exactly without pickled RNG state, and a DDP run draws the same global
batch as a single process and each rank takes its slice.
"""
from __future__ import annotations

import importlib.util
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..safeio import one_line, restricted_load

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


def step_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (seed, epoch, step, ...): the only RNG source here."""
    h = 0
    for k in keys:
        h = (h * 1_000_003 + int(k) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(h)


@dataclass
class ArrayData:
    """Images held in memory as a uint8 NHWC tensor with int64 labels."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str
    small: bool = True  # pad-crop augmentation (False: already-cropped ImageFolder batches)
    hflip: bool = True  # False where mirroring changes the class (digits)

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor, train: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]

    def stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std in [0, 1] units from up to 10k training images."""
        sample = self.x[:10_000].float().div_(255)
        return sample.mean(dim=(0, 1, 2)).tolist(), sample.std(dim=(0, 1, 2)).clamp_min(1e-3).tolist()


class FolderData:
    """An ImageFolder tree (``root/class_name/image.jpg``) decoded with Pillow per batch."""

    small = False
    hflip = True
    crop_pct = 0.875  # test images: short side resized to size / crop_pct, then the centre crop

    def __init__(self, root: Path, size: int, classes: list[str] | None = None) -> None:
        if importlib.util.find_spec("PIL") is None:  # fail before training starts, not at the first batch
            raise DataError("ImageFolder data needs Pillow: pip install 'normfree[images]'")
        found = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.classes = classes or found
        if not self.classes:
            raise DataError(f"{root} has no class sub-folders (expected root/class_name/image.jpg)")
        files, labels = [], []
        for label, cls in enumerate(self.classes):
            for f in sorted((root / cls).rglob("*")) if (root / cls).is_dir() else []:
                if f.suffix.lower() in IMAGE_EXTS:
                    files.append(f)
                    labels.append(label)
        if not files:
            raise DataError(f"{root} has class folders but no images ({', '.join(IMAGE_EXTS)})")
        self.files, self.y = files, torch.tensor(labels)
        self.num_classes, self.size, self.name = len(self.classes), size, f"imagefolder:{root}"

    def __len__(self) -> int:
        return len(self.files)

    def stats(self) -> tuple[list[float], list[float]]:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)

    def _load(self, i: int, train: bool, gen: torch.Generator) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("RGB")
                w, h = im.size
                if train:  # Inception-style random-resized crop: area (0.08, 1), aspect (3/4, 4/3)
                    box = _random_box(w, h, gen)
                    im = im.resize((self.size, self.size), Image.BICUBIC, box=box)
                    if torch.rand((), generator=gen) < 0.5:
                        im = im.transpose(Image.FLIP_LEFT_RIGHT)
                else:  # resize the short side to size/crop_pct, centre crop
                    s = round(self.size / self.crop_pct) / min(w, h)
                    im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BICUBIC)
                    left, top = (im.size[0] - self.size) // 2, (im.size[1] - self.size) // 2
                    im = im.crop((left, top, left + self.size, top + self.size))
                return np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read image {self.files[i]}: {err}. Remove or replace the file.") from None

    def batch(self, idx: torch.Tensor, train: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.stack([self._load(int(i), train, gen) for i in idx])
        return torch.from_numpy(x), self.y[idx]


def _random_box(w: int, h: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    area = w * h
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(0.08, 1.0, generator=gen))
        ratio = float(torch.exp(torch.empty(()).uniform_(np.log(3 / 4), np.log(4 / 3), generator=gen)))
        cw, ch = round((target * ratio) ** 0.5), round((target / ratio) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, (), generator=gen))
            top = int(torch.randint(0, h - ch + 1, (), generator=gen))
            return left, top, left + cw, top + ch
    s = min(w, h)
    return (w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s


def _subset(d: ArrayData, n: int) -> ArrayData:
    return d if n <= 0 or n >= len(d) else ArrayData(d.x[:n], d.y[:n], d.num_classes, d.name, d.small, d.hflip)


def _npz(root: Path, split: str) -> ArrayData:
    path = root / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{path} not found: an npz data folder holds train.npz and test.npz with "
                        "'x' (uint8 N×H×W×C) and 'y' (integer labels)")
    try:  # allow_pickle=False: an object array in the archive is refused, never unpickled
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{path} must contain arrays 'x' and 'y', found {sorted(f.files)}")
            x, y = f["x"], f["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot read {path} (truncated or not an .npz archive): {one_line(err)}") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{path}: 'x' must be uint8 N×H×W×C with one label per image in a 1-D 'y', "
                        f"got {x.dtype} {x.shape} and 'y' of shape {y.shape}")
    return ArrayData(torch.from_numpy(x), torch.from_numpy(_labels(y, path)), int(y.max(initial=0)) + 1,
                     f"npz:{root}")


def _labels(y: np.ndarray, source: Path | str, num_classes: int | None = None) -> np.ndarray:
    """Integer class labels in ``[0, num_classes)`` as int64 (a float or negative label is a data error,
    not something to round or wrap around)."""
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        bad = y.min() if y.min() < 0 else y.max()
        allowed = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise DataError(f"{source}: label {int(bad)} is outside {allowed}")
    return y.astype(np.int64)


def check_splits(train: ArrayData | FolderData, test: ArrayData | FolderData,
                 num_classes: int | None) -> int:
    """The number of classes to train, after checking that the splits fit together and ``num_classes``
    (None: take the data's) equals the data's class count."""
    if isinstance(train, ArrayData) and isinstance(test, ArrayData) and train.x.shape[-1] != test.x.shape[-1]:
        raise DataError(f"{train.name}: the train split has {train.x.shape[-1]} channels but the test split "
                        f"{test.x.shape[-1]}; both must hold the same kind of images")
    labels = [int(d.y.max()) + 1 for d in (train, test) if len(d.y)]
    classes = max(labels + [train.num_classes])
    if num_classes is not None and num_classes != classes:
        raise DataError(f"num_classes (--num-classes) = {num_classes} but {train.name} has {classes} classes "
                        f"(labels 0..{classes - 1}); omit --num-classes to use the data's")
    return classes


def _cifar(root: Path, split: str, hundred: bool) -> ArrayData:
    names = (["train"] if split == "train" else ["test"]) if hundred else (
        [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"])
    sub = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    base = sub if sub.is_dir() else root
    xs, ys = [], []
    for n in names:
        if not (base / n).is_file():
            raise DataError(f"{base / n} not found: expected the python-pickle CIFAR layout "
                            f"({'cifar-100-python' if hundred else 'cifar-10-batches-py'}/)")
        with open(base / n, "rb") as f:  # a pickle of plain arrays: never let it name other code
            d = restricted_load(f, base / n, DataError, encoding="latin1")
        key = "fine_labels" if hundred else "labels"
        d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()} \
            if isinstance(d, dict) else {}
        data = np.asarray(d.get("data", ()))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or key not in d:
            raise DataError(f"{base / n} is not a CIFAR batch: expected a dict with uint8 'data' (N×3072) and "
                            f"'{key}', got keys {sorted(map(str, d))}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(_labels(np.asarray(d[key]), base / n, 100 if hundred else 10))
        if len(ys[-1]) != len(xs[-1]):
            raise DataError(f"{base / n}: {len(xs[-1])} images but {len(ys[-1])} labels")
    return ArrayData(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)),
                     100 if hundred else 10, f"cifar{'100' if hundred else '10'}:{root}")


def _demo(split: str) -> ArrayData:
    """scikit-learn's bundled 8×8 handwritten digits (1797 real images, no download)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the demo data set needs scikit-learn: pip install 'normfree[demo]'") from None
    d = load_digits()
    x = torch.from_numpy((d.images * (255 / 16)).round().astype(np.uint8))[..., None]
    y = torch.from_numpy(d.target.astype(np.int64))
    sl = slice(0, 1500) if split == "train" else slice(1500, None)
    return ArrayData(x[sl].contiguous(), y[sl].contiguous(), 10, "demo:sklearn_digits", hflip=False)


def _synthetic(split: str, n: int = 512, size: int = 16, classes: int = 4) -> ArrayData:
    """Learnable random data: each class has its own mean colour, plus per-pixel noise."""
    g = torch.Generator().manual_seed(1234)
    colours = torch.rand(classes, 1, 1, 3, generator=g) * 160
    g.manual_seed(1 if split == "train" else 2)
    y = torch.randint(0, classes, (n if split == "train" else n // 4,), generator=g)
    x = (colours[y] + torch.rand(len(y), size, size, 3, generator=g) * 95).clamp(0, 255)
    return ArrayData(x.to(torch.uint8), y, classes, "synthetic")


def parse_data_spec(spec: str) -> tuple[str, Path | None]:
    """``(kind, folder)`` of a data spec, checked without reading any data (folder None for built-ins)."""
    kind, _, path = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if kind in ("demo", "synthetic"):
        return kind, None
    if kind not in ("npz", "cifar10", "cifar100", "imagefolder"):
        raise DataError(f"unknown data spec {spec!r}; use demo, synthetic, npz:DIR, cifar10:DIR, "
                        "cifar100:DIR or imagefolder:DIR")
    if not path or not Path(path).is_dir():
        raise DataError(f"data folder {path!r} does not exist")
    return kind, Path(path)


def load_data(spec: str, split: str, subset: int = 0, size: int = 224,
              classes: list[str] | None = None) -> ArrayData | FolderData:
    """Load ``spec`` (see :class:`~normfree.train.config.TrainConfig`.data) for ``split`` in train/test."""
    kind, root = parse_data_spec(spec)
    if kind == "demo":
        return _subset(_demo(split), subset)
    if kind == "synthetic":
        return _subset(_synthetic(split), subset)
    assert root is not None
    if kind == "imagefolder":
        sub = root / ("train" if split == "train" else "val")
        if not sub.is_dir() and split != "train":
            warnings.warn(f"{root} has no val/ folder: evaluating on the training images", stacklevel=2)
        return FolderData(sub if sub.is_dir() else root, size, classes)
    data = _npz(root, split) if kind == "npz" else _cifar(root, split, kind == "cifar100")
    if len(data) == 0:
        raise DataError(f"{data.name} ({split}) holds no images")
    return _subset(data, subset)


def pad_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int | None = None,
                  flip: bool = True) -> torch.Tensor:
    """Random zero-pad crop (``pad`` defaults to H/8: 4 px at 32×32, 1 px at 8×8) and horizontal flip of a
    uint8 NHWC batch, in one gather on the batch's device (offsets drawn on the CPU generator so results
    do not depend on the device)."""
    n, h, w, _ = x.shape
    pad = max(1, h // 8) if pad is None else pad
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    flipped = (torch.rand(n, generator=gen) < (0.5 if flip else 0.0)).to(x.device)
    xp = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = oy[:, None] + ar_h
    cols = ox[:, None] + torch.where(flipped[:, None], w - 1 - ar_w, ar_w)
    return xp[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def mix_batch(x: torch.Tensor, target: torch.Tensor, gen: torch.Generator, mixup: float,
              cutmix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Beta(a, a)) or CutMix (box area ∝ U(0, 1)) of float NCHW images and soft targets.
    With both enabled each step picks one at random."""
    use_cut = cutmix > 0 and (mixup <= 0 or torch.rand((), generator=gen) < 0.5)
    a = cutmix if use_cut else mixup
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (), generator=gen))).beta(a, a))
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    if use_cut:
        h, w = x.shape[-2:]
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(0, h, (), generator=gen)), int(torch.randint(0, w, (), generator=gen))
        t, b, l, r = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., t:b, l:r] = x[perm][..., t:b, l:r]
        lam = 1 - (b - t) * (r - l) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]


def to_input(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC → normalized float NCHW (channels_last memory format on request)."""
    x = x.permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
