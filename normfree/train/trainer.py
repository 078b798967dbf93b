"""The training loop: one process or torchrun/DDP, exact resume, AGC, EMA, checkpoints and logs."""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import NormfreeError
from ..registry import create_model
from ..analysis import SPPRecorder
from ..analysis.spp import load_json
from .agc import agc_params, clip_grad_agc_
from .checkpoint import load_checkpoint, save_checkpoint, split_prefix
from .config import TrainConfig
from .data import ArrayData, FolderData, load_data, mix_batch, pad_crop_flip, step_generator
from .init import initialize_model
from .distributed import Dist, init_distributed, resolve_device
from .metrics import MetricLogger, plot_run
from .optim import ModelEMA, build_param_groups, lr_at

CHECKPOINT_FORMAT = 1


def ensure_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise NormfreeError(f"cannot write to output folder {run_dir}: {err.strerror or err}. "
                        "Choose another --out-dir.") from None


def build_model(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> nn.Module:
    extra = {"in_chans": in_chans} if in_chans != 3 else {}
    try:
        return create_model(name, num_classes=num_classes, **extra, **kwargs)
    except (ValueError, TypeError) as err:
        raise NormfreeError(str(err)) from None


def to_input(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC → normalized float NCHW (channels_last memory format on request)."""
    x = x.permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayData | FolderData, mean: torch.Tensor, std: torch.Tensor,
             device: torch.device, batch_size: int = 256, dist: Dist | None = None,
             channels_last: bool = False, desc: str = "eval", flip: bool = False) -> dict[str, float]:
    """Top-1 / top-5 (%) and mean loss; under DDP each rank scores a shard and the counts are summed.

    ``flip`` also scores the mean logits of each image and its mirror image (``top1_flip``,
    ``top5_flip``): test-time augmentation at the cost of a second forward pass.
    """
    dist = dist or Dist()
    model.eval()
    idx_all = torch.arange(len(data))[dist.rank::dist.world]
    totals = torch.zeros(6, dtype=torch.float64, device=device)  # c1, c5, loss_sum, count, c1 flip, c5 flip
    gen = step_generator(0)
    chunks = idx_all.split(batch_size)

    def hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
        return torch.stack([hit[:, 0].sum(), hit.any(1).sum()])

    for idx in tqdm(chunks, desc=desc, leave=False, disable=not dist.main or len(chunks) < 4):
        x, y = data.batch(idx, False, gen)
        x, y = to_input(x.to(device), mean, std, channels_last), y.to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x).float()
            mirrored = (logits + model(x.flip(3)).float()) / 2 if flip else None
        totals[:4] += torch.cat([hits(logits, y), F.cross_entropy(logits, y, reduction="sum")[None],
                                 torch.tensor([len(y)], device=device)]).double()
        if mirrored is not None:
            totals[4:] += hits(mirrored, y).double()
    if dist.enabled:
        torch.distributed.all_reduce(totals)
    c1, c5, loss, n, f1, f5 = totals.tolist()
    out = {"top1": 100 * c1 / n, "top5": 100 * c5 / n, "loss": loss / n}
    if flip:
        out.update(top1_flip=100 * f1 / n, top5_flip=100 * f5 / n)
    return out


class Trainer:
    """``Trainer(cfg).fit()`` trains, evaluates, checkpoints and logs into ``cfg.out_dir``.

    Random streams (data order, augmentation, mixup, stochastic depth, dropout) are pure functions of
    ``(seed, epoch/step, micro-batch index)``; a checkpoint therefore only needs weights, momentum, EMA
    and the step counter to continue bit-for-bit.
    """

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None) -> None:
        self.cfg = cfg
        self.dist = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise NormfreeError(f"device {cfg.device!r} requested but CUDA is not available; use --device cpu")
        self.run_dir = Path(cfg.out_dir)
        if self.dist.main:
            ensure_writable(self.run_dir)
        self.dist.barrier()
        ckpt = load_checkpoint(resume) if resume else None
        meta = ckpt[1] if ckpt else {}

        size = cfg.image_size or 224
        self.train_data = load_data(cfg.data, "train", cfg.train_subset, size)
        self.test_data = load_data(cfg.data, "test", cfg.test_subset, size,
                                   classes=getattr(self.train_data, "classes", None))
        data_classes = int(max(self.train_data.y.max(), self.test_data.y.max())) + 1
        num_classes = cfg.num_classes or max(data_classes, self.train_data.num_classes)
        if data_classes > num_classes:
            raise NormfreeError(f"the data has labels up to {data_classes - 1} ({data_classes} classes) but "
                            f"num_classes is {num_classes}; fix --num-classes or the data")
        in_chans = self.train_data.x.shape[-1] if isinstance(self.train_data, ArrayData) else 3
        if meta and meta.get("model") != cfg.model:
            raise NormfreeError(f"checkpoint {resume} was trained with model {meta.get('model')!r}, not "
                            f"{cfg.model!r}; resume with the same --model or start a new run")
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
        self.model = build_model(cfg.model, num_classes, in_chans, cfg.model_kwargs).to(self.device)
        for d in (self.train_data, self.test_data):
            if isinstance(d, FolderData):
                d.size = cfg.image_size or int(getattr(self.model, "input_size", 224))
        mean, std = (meta["mean"], meta["std"]) if meta else self.train_data.stats()
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.meta_static: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT, "model": cfg.model, "model_kwargs": cfg.model_kwargs,
            "num_classes": num_classes, "in_chans": in_chans, "mean": mean, "std": std,
            "classes": getattr(self.train_data, "classes", None)}

        if cfg.grad_checkpointing:
            if not hasattr(self.model, "set_grad_checkpointing"):
                raise NormfreeError(f"{cfg.model} does not support --grad-checkpointing")
            self.model.set_grad_checkpointing(True)
        self.gpu = self.device.type == "cuda"
        self.channels_last = cfg.channels_last and self.gpu
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        world_micro = self.dist.world * cfg.accum_steps
        if cfg.batch_size % world_micro:
            raise NormfreeError(f"batch_size {cfg.batch_size} must be divisible by world size × accum_steps "
                            f"= {world_micro}")
        self.micro = cfg.batch_size // world_micro
        self.steps_per_epoch = len(self.train_data) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise NormfreeError(f"batch_size {cfg.batch_size} is larger than the {len(self.train_data)} "
                            "training images; lower --batch-size")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)

        self.init_info = None if ckpt else initialize_model(self)  # --init: GradInit / AutoInit
        role_lr_scale = {"skip_gain": cfg.skip_gain_lr_scale, "gain": cfg.gain_lr_scale, "bias": cfg.bias_lr_scale}
        groups = build_param_groups(self.model, cfg.param_groups, cfg.lr, cfg.weight_decay, role_lr_scale)
        self.opt = torch.optim.SGD(groups, lr=cfg.lr,
                                   momentum=cfg.momentum, nesterov=cfg.nesterov)
        head = getattr(self.model, "fc", None)
        if head is None and cfg.agc_clip > 0:
            warnings.warn(f"{cfg.model} has no .fc classifier: AGC will clip every parameter", stacklevel=2)
        self.agc_specs = agc_params(self.model, exclude=(head,) if head is not None else ())
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step, self.best_top1 = 0, -1.0
        self.elapsed_before, self.fit_start = 0.0, time.perf_counter()  # training wall time over all resumes
        if ckpt:
            self._restore(*ckpt, resume)
        net: nn.Module = self.model
        if self.dist.enabled:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[self.device.index] if self.gpu else None)
        self.net = torch.compile(net) if cfg.compile else net
        self.logger = MetricLogger(self.run_dir, enabled=self.dist.main)
        self.spp = self._spp_recorder() if cfg.spp_every > 0 and self.dist.main else None
        self._updating = False

    # ---- checkpoints -------------------------------------------------------------------------------
    def _state(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        names = {id(p): n for n, p in self.model.named_parameters()}
        for p, st in self.opt.state.items():
            if "momentum_buffer" in st and st["momentum_buffer"] is not None:
                tensors[f"optim.{names[id(p)]}"] = st["momentum_buffer"]
        if self.ema:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state.items()})
        return tensors

    def save(self, name: str, extra: dict[str, Any] | None = None) -> Path:
        path = self.run_dir / name
        if self.dist.main:
            meta = {**self.meta_static, "config": self.cfg.to_dict(), "step": self.step,
                    "epoch": self.step / self.steps_per_epoch, "best_top1": self.best_top1,
                    "elapsed_s": self.elapsed_before + time.perf_counter() - self.fit_start, **(extra or {})}
            save_checkpoint(path, self._state(), meta)
        return path

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Any) -> None:
        own = self.model.state_dict()
        weights = split_prefix(tensors, "model")
        mismatch = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
        if mismatch or meta.get("num_classes") != self.meta_static["num_classes"]:
            raise NormfreeError(f"checkpoint {path} does not fit {self.cfg.model} with "
                            f"{self.meta_static['num_classes']} classes (mismatched: {mismatch[:3]}); "
                            "it was saved by a different model or data set")
        self.model.load_state_dict(weights)
        buffers = split_prefix(tensors, "optim")
        for n, p in self.model.named_parameters():
            if n in buffers:
                self.opt.state[p]["momentum_buffer"] = buffers[n].to(self.device)
        if self.ema:
            ema = split_prefix(tensors, "ema")
            self.ema.state = {k: ema[k].to(self.device) for k in self.ema.state} if ema else self.ema.state
        self.step, self.best_top1 = int(meta["step"]), float(meta.get("best_top1", -1.0))
        self.elapsed_before = float(meta.get("elapsed_s", 0.0))

    # ---- one optimizer step ------------------------------------------------------------------------
    def _train_step(self, idx: torch.Tensor) -> tuple[float, float]:
        cfg, k = self.cfg, self.meta_static["num_classes"]
        total = torch.zeros((), device=self.device)
        for m in range(cfg.accum_steps):
            j = self.dist.rank * cfg.accum_steps + m  # global micro-batch index: same streams at any world size
            gen = step_generator(cfg.seed, self.step, j)
            x, y = self.train_data.batch(idx[j * self.micro:(j + 1) * self.micro], True, gen)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if cfg.augment and self.train_data.small:
                x = pad_crop_flip(x, gen, flip=self.train_data.hflip)
            x = to_input(x, self.mean, self.std, self.channels_last)
            target = F.one_hot(y, k).float()
            if cfg.mixup > 0 or cfg.cutmix > 0:
                x, target = mix_batch(x, target, gen, cfg.mixup, cfg.cutmix)
            target = target * (1 - cfg.label_smoothing) + cfg.label_smoothing / k
            torch.manual_seed(int(torch.randint(0, 2**62, (), generator=gen)))  # stochastic depth, dropout
            last = m == cfg.accum_steps - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.net.no_sync()
            with sync:
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.gpu and cfg.amp):
                    logits = self.net(x)
                loss = F.cross_entropy(logits.float(), target) / cfg.accum_steps
                loss.backward()
            total += loss.detach()
        if self.dist.enabled:
            torch.distributed.all_reduce(total)
            total /= self.dist.world
        value = float(total)
        if not math.isfinite(value):
            raise NormfreeError(
                f"the training loss became {value} at step {self.step} (epoch {self.step // self.steps_per_epoch}"
                f"); training stopped and no checkpoint was written, so the last good one in {self.run_dir} is "
                f"intact. Try a lower --lr (now {cfg.lr}), adaptive gradient clipping (--agc-clip 0.01"
                f"{', now ' + str(cfg.agc_clip) if cfg.agc_clip else ''}) or a longer --warmup-epochs.")
        # Gradients here are already all-reduced by DDP and unscaled (bf16 autocast uses no loss scaling).
        frac = clip_grad_agc_(self.agc_specs, cfg.agc_clip, cfg.agc_eps) if cfg.agc_clip > 0 else None
        lr = self.lr = lr_at(self.step, cfg.lr, self.warmup_steps, self.total_steps, cfg.min_lr)
        for g in self.opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        self._updating = True
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.model, self.step)
        self.step += 1
        self._updating = False
        return value, float(frac) if frac is not None else float("nan")

    # ---- epochs ------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        kw = dict(mean=self.mean, std=self.std, device=self.device, batch_size=self.cfg.eval_batch_size,
                  dist=self.dist, channels_last=self.channels_last,
                  flip=self.cfg.tta_flip and getattr(self.test_data, "hflip", True))
        out = {f"test_{k}": v for k, v in evaluate(self.model, self.test_data, desc="eval", **kw).items()}
        if self.ema:
            ema_model = copy.deepcopy(self.model)
            self.ema.copy_to(ema_model)
            out.update({f"ema_test_{k}": v for k, v in evaluate(ema_model, self.test_data, desc="eval ema",
                                                                  **kw).items()})
        return out

    def _spp_recorder(self) -> SPPRecorder:
        """SPPs on a fixed batch of 16 normalized training images (the first 16: same across resumes);
        the history continues from ``spp/spp_history.json`` when resuming."""
        idx = torch.arange(min(16, len(self.train_data)))
        x, _ = self.train_data.batch(idx, train=False, gen=step_generator(self.cfg.seed, -1))
        inputs = to_input(x.to(self.device), self.mean, self.std, self.channels_last)
        recorder = SPPRecorder(self.cfg.spp_every, inputs=inputs, out_dir=self.run_dir / "spp")
        history = self.run_dir / "spp" / "spp_history.json"
        if self.step > 0 and history.exists():
            recorder.history = [r for r in load_json(history) if r.step is not None and r.step <= self.step]
        return recorder

    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (or stop after ``until_epoch`` epochs, for staged runs); return the summary."""
        cfg, spe = self.cfg, self.steps_per_epoch
        end_epoch = min(cfg.epochs, until_epoch or cfg.epochs)
        if self.dist.main and self.step == 0:
            cfg.save_yaml(self.run_dir / "config.yaml")
        start_time, start_step = time.perf_counter(), self.step
        self.fit_start = start_time
        last: dict[str, Any] = {}
        if self.spp is not None and self.step == 0:
            self.spp(self.model, 0)  # at initialization
        try:
            while self.step < end_epoch * spe:
                epoch = self.step // spe
                perm = torch.randperm(len(self.train_data), generator=step_generator(cfg.seed, epoch))
                self.model.train()
                bar = tqdm(range(self.step % spe, spe), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           disable=not self.dist.main, leave=False)
                losses, t0 = [], time.perf_counter()
                for i in bar:
                    loss, frac = self._train_step(perm[i * cfg.batch_size:(i + 1) * cfg.batch_size])
                    losses.append(loss)
                    if self.spp is not None:
                        self.spp(self.model, self.step)
                    if self.step % cfg.log_every == 0 or i == spe - 1:
                        rec = {"kind": "step", "step": self.step, "epoch": epoch, "loss": loss,
                               "lr": self.lr}
                        if not math.isnan(frac):
                            rec["agc_clipped_frac"] = frac
                        self.logger.log(rec)
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{rec['lr']:.3g}")
                elapsed = time.perf_counter() - t0
                last = {"kind": "epoch", "epoch": epoch + 1, "step": self.step,
                        "train_loss": sum(losses) / max(1, len(losses)), "epoch_time_s": elapsed,
                        "img_per_s": len(losses) * cfg.batch_size / max(elapsed, 1e-9)}
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    last.update(self.evaluate())
                    score = last.get("ema_test_top1", last["test_top1"])
                    if score > self.best_top1:
                        self.best_top1 = score
                        self.save("best.safetensors", {"metrics": last})
                self.save("last.safetensors", {"metrics": last})
                self.logger.log(last)
                if self.dist.main:
                    tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in last.items() if k != "kind"))
        except KeyboardInterrupt:
            if self._updating:
                raise NormfreeError(f"interrupted during a weight update at step {self.step}; the last epoch "
                                f"checkpoint in {self.run_dir} is intact, resume from it") from None
            path = self.save("last.safetensors", {"interrupted": True})
            raise NormfreeError(f"interrupted at step {self.step}; saved a resumable checkpoint {path}. Continue "
                            f"with: normfree train --resume {path}") from None
        finally:
            self.logger.close()
        return self._finish(last, time.perf_counter() - start_time, self.step - start_step)

    def _finish(self, last: dict[str, Any], wall: float, steps: int) -> dict[str, Any]:
        summary = {"model": self.cfg.model, "data": self.cfg.data, "steps": self.step, "epochs_done":
                   self.step / self.steps_per_epoch, "wall_time_s": wall,
                   "total_wall_time_s": self.elapsed_before + wall, "world_size": self.dist.world,
                   "train_images": len(self.train_data), "test_images": len(self.test_data),
                   "device": str(self.device), "params": sum(p.numel() for p in self.model.parameters()),
                   "best_top1": self.best_top1, **{k: v for k, v in last.items() if k != "kind"}}
        if self.dist.enabled:
            summary["ddp_max_param_diff"] = self.dist.max_param_diff(list(self.model.parameters()))
        if self.dist.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            if self.step >= self.total_steps:
                plot_run(self.run_dir)
        return summary
