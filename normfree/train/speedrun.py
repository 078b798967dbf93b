"""A CIFAR-10 speedrun: a whole training recipe, readable in one sitting (airbench94 style).

The recipe (Jordan 2024, airbench94), re-implemented here from its description:

1. Data lives on the training device as standardized float images (CIFAR channel mean/std).
2. The first conv is a frozen patch-whitening layer computed from the first 5,000 training images;
   its bias trains for the first 3 epochs only.
3. Augmentation: every image is mirrored or not at random once; then all images are mirrored
   together on every odd epoch (*alternating flip*), and each epoch takes a random crop from a
   2-pixel reflect-padded copy (translate ±2).
4. Nesterov SGD at batch 1024, momentum 0.85, on the *summed* label-smoothed (0.2) cross-entropy, with
   the lr and weight decay given per 1024 examples and independent of momentum: the PyTorch lr is
   ``lr / (1024·(1 + 1/(1 − momentum)))``; BN shifts train at 64× that lr; the decay per step is the same
   for every parameter. The lr multiplier rises linearly 0.2 → 1 over the first 23 % of the steps and
   falls to 0.07 at the end; 9.9 epochs.
5. Lookahead: every 5 steps the weights move to an exponential average with decay
   ``0.95⁵·(step/total)³``, and are replaced by it at the end.
6. Test-time augmentation (level 2): the mean logits of the image and its mirror, averaged half and
   half with the same for the image translated by one pixel up-left and down-right (reflect padding).

The normalizer-free recipe keeps all of this and adds the one-batch data-dependent init of
:meth:`normfree.models.speedrun.SpeedrunNet.init_from_data` and AGC (λ = 0.02, classifier excluded);
the WS gains get no weight decay, and the WS conv biases (BN shifts' counterpart) train at the plain
lr: with nothing to re-standardize the next layer's input, airbench's 64× bias lr blew the NF net up
at the lr peak in a short CPU probe, and AGC with the plain bias lr trained best there
(benchmarks/speedrun/README.md).

Training FLOPs are counted, not estimated: ``6 × count_macs(model, 32) × training images processed``
plus ``2 ×`` the multiply-adds of the one-off passes (whitening statistics, data-dependent init).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import FRACTION, NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, Domain, check_fields
from ..errors import CheckpointError, ConfigError, DataError
from ..models.speedrun import SpeedrunNet
from ..profile import count_macs
from ..registry import create_model
from .agc import agc_params, clip_grad_agc_
from .checkpoint import load_checkpoint, save_checkpoint, split_prefix
from .data import load_data, step_generator

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class SpeedrunRecipe:
    """Every lever of a speedrun; the defaults are airbench94's."""

    name: str
    model: str
    net: str  # "bn" or "nf", the results column
    description: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: float = 9.9
    batch_size: int = 1024
    lr: float = 11.5               # per 1024 examples, decoupled from momentum
    momentum: float = 0.85
    weight_decay: float = 0.0153   # per 1024 examples, decoupled from the lr
    bias_lr_scale: float = 64.0    # BN shifts (NF: WS conv biases)
    label_smoothing: float = 0.2
    whiten_images: int = 5000
    whiten_bias_epochs: int = 3
    flip: bool = True              # alternating flip
    translate: int = 2
    lr_start: float = 0.2
    lr_peak_at: float = 0.23
    lr_end: float = 0.07
    lookahead_every: int = 5
    lookahead_decay: float = 0.95**5
    tta_level: int = 2             # 0 none, 1 mirror, 2 mirror + translate
    data_init_images: int = 0      # NF: images in the one-batch data-dependent init (0: none)
    agc_clip: float = 0.0          # AGC λ in units of the mean-loss gradient (0: off)
    gain_lr_scale: float = 1.0     # NF: WS gains (0: frozen after the data init, as BN's scale)
    gain_weight_decay: bool = False  # NF: decay the WS gains too

    def __post_init__(self) -> None:
        """Check every setting against :data:`RECIPE_DOMAINS`, so a bad ``--set`` fails before the data
        loads with one line naming it, not as a division by zero or a NaN loss mid-run."""
        check_fields(self, RECIPE_DOMAINS, ("flip", "gain_weight_decay"), lambda name: f"speedrun setting {name}")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"speedrun setting model_kwargs = {self.model_kwargs!r}: must be a mapping, "
                              "e.g. --set \"model_kwargs={'alpha': 0.3}\"")
        if self.net not in ("bn", "nf"):
            raise ConfigError(f"speedrun setting net = {self.net!r}: must be bn or nf")

    def replace(self, **changes: Any) -> SpeedrunRecipe:
        """A copy with ``changes``; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown speedrun setting(s) {unknown}; known: {', '.join(sorted(known))}")
        if isinstance(changes.get("model_kwargs"), dict):
            changes["model_kwargs"] = {**self.model_kwargs, **changes["model_kwargs"]}
        return dataclasses.replace(self, **changes)


RECIPE_DOMAINS: dict[str, Domain] = {
    "epochs": POSITIVE, "batch_size": POSITIVE_INT, "lr": POSITIVE, "momentum": FRACTION,
    "weight_decay": NONNEGATIVE, "bias_lr_scale": POSITIVE, "label_smoothing": FRACTION,
    "whiten_images": POSITIVE_INT, "whiten_bias_epochs": NONNEGATIVE_INT, "translate": NONNEGATIVE_INT,
    "lr_start": NONNEGATIVE, "lr_peak_at": Domain(low=0, high=1), "lr_end": NONNEGATIVE,
    "lookahead_every": POSITIVE_INT, "lookahead_decay": Domain(low=0, high=1),
    "tta_level": Domain(integer=True, low=0, high=2), "data_init_images": NONNEGATIVE_INT,
    "agc_clip": NONNEGATIVE, "gain_lr_scale": NONNEGATIVE,  # gain_lr_scale 0 freezes the gains
}

RECIPES: dict[str, SpeedrunRecipe] = {r.name: r for r in (
    SpeedrunRecipe("airbench94", "bn_cifar_airbench94", "bn",
                   "the airbench94 BatchNorm reference (94.01 % published with TTA, 9.9 epochs)"),
    SpeedrunRecipe("nf_speedrun", "nf_cifar_speedrun", "nf",
                   "normalizer-free: airbench94 recipe + Scaled WS, γ-GELU, one-batch data-dependent init",
                   data_init_images=1024, bias_lr_scale=1.0, agc_clip=0.02),
)}


def get_recipe(name: str) -> SpeedrunRecipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown speedrun recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


# ---------------------------------------------------------------------------------------------- data

def load_cifar(spec: str, device: torch.device, train_subset: int = 0,
               test_subset: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train, test) as standardized float NCHW images and int64 labels on ``device``."""
    out = []
    for split, subset in (("train", train_subset), ("test", test_subset)):
        data = load_data(spec, split, subset=subset)
        if not hasattr(data, "x") or data.x.shape[1:] != (32, 32, 3):
            raise DataError(f"{spec} ({split}): a speedrun needs 32×32 RGB arrays (npz or cifar10 data)")
        out.append((standardize(data.x.to(device)), data.y.to(device)))
    return out[0], out[1]


def standardize(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC → float NCHW, standardized with the CIFAR channel statistics."""
    mean = torch.tensor(CIFAR_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x.device).view(1, 3, 1, 1)
    return (x.permute(0, 3, 1, 2).float().div(255) - mean) / std


def crop(images: torch.Tensor, shifts: torch.Tensor, size: int) -> torch.Tensor:
    """Per-image ``size × size`` crops of padded NCHW images at offsets ``shifts`` (N×2, rows/cols)."""
    ar = torch.arange(size, device=images.device)
    rows = (shifts[:, 0, None] + ar)[:, None, :, None]
    cols = (shifts[:, 1, None] + ar)[:, None, None, :]
    n = torch.arange(len(images), device=images.device)[:, None, None, None]
    c = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[n, c, rows, cols]


class AlternatingFlipLoader:
    """Training batches with alternating flip and random translation; every random choice is a function
    of ``(seed, epoch)`` (CPU generators), so a resumed run sees the same batches."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                 flip: bool = True, translate: int = 2) -> None:
        if len(images) < batch_size:
            raise ConfigError(f"{len(images)} training images is fewer than one batch of {batch_size}")
        self.labels, self.batch_size, self.seed = labels, batch_size, seed
        self.flip, self.translate, self.size = flip, translate, images.shape[-1]
        if flip:
            mirror = torch.rand(len(images), generator=step_generator(seed, 0, 1)) < 0.5
            images = torch.where(mirror.to(images.device)[:, None, None, None], images.flip(-1), images)
        self.padded = F.pad(images, (translate,) * 4, mode="reflect") if translate else images

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = step_generator(self.seed, epoch + 1)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen).to(self.labels.device)
        shifts = torch.randint(0, 2 * self.translate + 1, (n, 2), generator=gen).to(self.labels.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = crop(self.padded[idx], shifts[idx], self.size) if self.translate else self.padded[idx]
            yield (x.flip(-1) if self.flip and epoch % 2 == 1 else x), self.labels[idx]


# ------------------------------------------------------------------------------------------ schedule

def lr_multiplier(step: int, total: int, start: float, peak_at: float, end: float) -> float:
    """Linear ``start → 1`` over the first ``peak_at`` of the steps, then ``1 → end`` at ``total``."""
    warm = int(total * peak_at)
    if step < warm:
        return start + (1.0 - start) * step / warm
    return 1.0 + (end - 1.0) * (step - warm) / max(total - warm, 1)


class Lookahead:
    """Slow weights: every call moves them toward the model's by ``1 − decay`` and copies them back."""

    def __init__(self, model: nn.Module) -> None:
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            if k in self.slow:
                self.slow[k].lerp_(v, 1.0 - decay)
                v.copy_(self.slow[k])


def build_optimizer(model: SpeedrunNet, recipe: SpeedrunRecipe) -> torch.optim.SGD:
    """Nesterov SGD with airbench's decoupled lr/decay: every group decays by the same amount per step."""
    kilostep = 1024 * (1 + 1 / (1 - recipe.momentum))
    lr = recipe.lr / kilostep
    decay = recipe.weight_decay * recipe.batch_size / kilostep  # per step, at lr multiplier 1
    biases = model.bias_parameters()
    gains = model.gain_parameters()
    special = {id(p) for p in [*biases, *gains]}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    if recipe.gain_lr_scale == 0:  # frozen, as BN's scale in the reference
        for p in gains:
            p.requires_grad_(False)
        gains = []

    def group(params: list[nn.Parameter], scale: float, decayed: bool = True) -> dict[str, Any]:
        return {"params": params, "lr": lr * scale, "weight_decay": decay / (lr * scale) if decayed else 0.0}

    specs = [(biases, recipe.bias_lr_scale, True), (others, 1.0, True),
             (gains, recipe.gain_lr_scale, recipe.gain_weight_decay)]
    groups = [group(*spec) for spec in specs if spec[0]]  # frozen gains: no group, no 0-lr division
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True)


# -------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain logits, TTA logits at ``level``): 1 averages the mirror image; 2 also averages (half
    weight) the mirrored pair of the image shifted one pixel up-left and down-right, reflect-padded."""
    plain = model(x).float()
    if level == 0:
        return plain, plain

    def mirror(v: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        return 0.5 * ((model(v).float() if first is None else first) + model(v.flip(-1)).float())

    logits = mirror(x, plain)
    if level == 1:
        return plain, logits
    if level != 2:
        raise ConfigError(f"tta_level must be 0, 1 or 2, got {level}")
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * (mirror(padded[..., :h, :w]) + mirror(padded[..., 2:, 2:]))
    return plain, 0.5 * logits + 0.5 * shifted


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, level: int,
             batch_size: int = 2000) -> tuple[float, float]:
    """Test top-1 (%) without and with TTA, in eval mode (BN running statistics)."""
    model.eval()
    hits = torch.zeros(2, device=labels.device)
    with _autocast(images.device):
        for x, y in zip(images.split(batch_size), labels.split(batch_size)):
            plain, tta = tta_logits(model, x, level)
            hits += torch.stack([(plain.argmax(1) == y).sum(), (tta.argmax(1) == y).sum()])
    model.train()
    top1, top1_tta = (hits * 100 / len(labels)).tolist()
    return top1, top1_tta


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast over fp32 weights on CUDA (airbench itself keeps fp16 weights; here the updates and
    the lookahead state stay fp32); full fp32 elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ------------------------------------------------------------------------------------------ compute

def training_flops(macs_per_image: int, train_images_seen: int, init_macs: int) -> int:
    """6 × forward MACs per image × images trained on (forward + backward), + 2 × one-off init MACs."""
    return 6 * macs_per_image * train_images_seen + 2 * init_macs


# --------------------------------------------------------------------------------------- the run

RESULT_KEYS = ("net", "model", "recipe", "seed", "epochs", "train_images_seen", "macs_per_image",
               "train_pflop", "top1", "top1_tta", "wall_s", "device")


def build_model(recipe: SpeedrunRecipe, seed: int, device: torch.device) -> SpeedrunNet:
    torch.manual_seed(seed)
    model = create_model(recipe.model, **recipe.model_kwargs)
    if not isinstance(model, SpeedrunNet):
        raise ConfigError(f"{recipe.model} is not a speedrun net (bn_cifar_airbench94, nf_cifar_speedrun)")
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(recipe: SpeedrunRecipe, data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
          seed: int = 0, device: torch.device | str = "cpu", out_dir: str | Path | None = None,
          log: Callable[[str], None] = print, eval_every: int = 0,
          on_step: Callable[[int, SpeedrunNet, float], None] | None = None) -> dict[str, Any]:
    """Train one seed of ``recipe`` on ``data`` (from :func:`load_cifar`); return the results row.

    With ``out_dir`` a checkpoint is written after every epoch and an interrupted run continues from
    it (the same batches, the same result); a finished run writes ``result.json`` there.
    ``wall_s`` counts setup (whitening, init), training and the final evaluation, as airbench's
    timer; per-epoch evaluations (``eval_every``) are progress only and not timed. ``on_step(step,
    model, mean_loss)`` runs after every optimizer step (diagnostics: signal propagation while training).
    """
    device = torch.device(device)
    (x_train, y_train), (x_test, y_test) = data
    model = build_model(recipe, seed, device)
    loader = AlternatingFlipLoader(x_train, y_train, recipe.batch_size, seed, recipe.flip, recipe.translate)
    total = math.ceil(len(loader) * recipe.epochs)
    macs = count_macs(model, 32, exact=True)  # unpadded 2x2 conv, floor pools: real output sizes
    whiten_n = min(recipe.whiten_images, len(x_train))
    init_n = min(recipe.data_init_images, len(x_train)) if model.normalizer_free else 0
    init_macs = model.whiten.fit_macs(whiten_n) + macs * init_n
    optimizer = build_optimizer(model, recipe)
    ckpt = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        ckpt = Path(out_dir) / "checkpoint.safetensors"
    start_epoch, step, wall = 0, 0, 0.0
    lookahead: Lookahead | None = None
    if ckpt is not None and ckpt.is_file():
        start_epoch, step, wall, lookahead = _restore(ckpt, model, optimizer, recipe, seed)
        log(f"resumed {ckpt} after epoch {start_epoch} (step {step}/{total})")
    else:
        _sync(device)
        t0 = time.perf_counter()
        model.whiten.fit(x_train[:whiten_n])
        if init_n:
            model.init_from_data(x_train[:init_n])
        lookahead = Lookahead(model)
        _sync(device)
        wall = time.perf_counter() - t0
    assert lookahead is not None
    agc = agc_params(model, exclude=(model.fc,)) if recipe.agc_clip > 0 else None
    model.train()
    for epoch in range(start_epoch, math.ceil(recipe.epochs)):
        if step >= total:
            break
        model.whiten.bias.requires_grad_(epoch < recipe.whiten_bias_epochs)
        _sync(device)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for x, y in loader.epoch(epoch):
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            mult = lr_multiplier(step, total, recipe.lr_start, recipe.lr_peak_at, recipe.lr_end)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * mult
            with _autocast(device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if agc is not None:  # summed loss: the gradient is batch_size × the mean-loss gradient
                clip_grad_agc_(agc, clip=recipe.agc_clip * len(y))
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step, model, float(loss.detach()) / len(y))
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % recipe.lookahead_every == 0:
                lookahead.update(model, recipe.lookahead_decay * (step / total) ** 3)
            if step >= total:
                lookahead.update(model, 1.0)
                break
        _sync(device)
        wall += time.perf_counter() - t0
        loss_val = float(loss_sum) / max(seen, 1)
        if not math.isfinite(loss_val):
            raise ConfigError(f"{recipe.name} seed {seed}: training loss is {loss_val} at epoch {epoch + 1}"
                              " (diverged); lower the lr or enable agc_clip")
        line = (f"epoch {epoch + 1}/{math.ceil(recipe.epochs)} step {step}/{total} "
                f"train_loss {loss_val:.4f} train_acc {100 * float(correct) / max(seen, 1):.2f} "
                f"time {wall:.1f}s")
        if eval_every and (epoch + 1) % eval_every == 0 and step < total:
            line += f" test_top1 {evaluate(model, x_test, y_test, 0)[0]:.2f}"
        if ckpt is not None:
            _save(ckpt, model, optimizer, lookahead, recipe, seed, epoch + 1, step, wall)
        log(line)
    _sync(device)
    t0 = time.perf_counter()
    top1, top1_tta = evaluate(model, x_test, y_test, recipe.tta_level)
    _sync(device)
    wall += time.perf_counter() - t0
    row = {"net": recipe.net, "model": recipe.model, "recipe": recipe.name, "seed": seed,
           "epochs": recipe.epochs,
           "train_images_seen": step * recipe.batch_size, "macs_per_image": macs,
           "train_pflop": training_flops(macs, step * recipe.batch_size, init_macs) / 1e15,
           "top1": top1, "top1_tta": top1_tta, "wall_s": round(wall, 3), "device": describe_device(device)}
    if out_dir is not None:
        Path(out_dir, "result.json").write_text(json.dumps({**row, "settings": dataclasses.asdict(recipe)},
                                                           indent=1))
    return row


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()}"


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, lookahead: Lookahead,
          recipe: SpeedrunRecipe, seed: int, epoch: int, step: int, wall: float) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"slow.{k}": v for k, v in lookahead.slow.items()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf
    meta = {"recipe": dataclasses.asdict(recipe), "seed": seed, "epoch": epoch, "step": step, "wall_s": wall}
    save_checkpoint(path, tensors, meta)


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, recipe: SpeedrunRecipe,
             seed: int) -> tuple[int, int, float, Lookahead]:
    tensors, meta = load_checkpoint(path)
    if meta.get("recipe") != json.loads(json.dumps(dataclasses.asdict(recipe))) or meta.get("seed") != seed:
        raise CheckpointError(f"{path} belongs to another run (recipe or seed differ); use a new out folder")
    device = next(model.parameters()).device
    model.load_state_dict(split_prefix(tensors, "model"))
    lookahead = Lookahead(model)
    for k, v in split_prefix(tensors, "slow").items():
        lookahead.slow[k].copy_(v)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for key, buf in split_prefix(tensors, "momentum").items():
        optimizer.state[params[int(key)]]["momentum_buffer"] = buf.to(device)
    return int(meta["epoch"]), int(meta["step"]), float(meta["wall_s"]), lookahead
