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

from ..checks import require_device
from ..errors import ConfigError, NormfreeError, TrainingInterrupted
from ..safeio import atomic_write_text
from ..registry import create_model
from ..resources import check_batch_fits
from ..analysis import SPPRecorder
from ..analysis.spp import load_json
from .advice import small_data_warning
from .agc import agc_params, clip_grad_agc_
from .checkpoint import TRAIN_META_KEYS, load_checkpoint, save_checkpoint, split_prefix
from .config import TrainConfig
from .data import (ArrayData, FolderData, check_splits, load_data, mix_batch, pad_crop_flip, step_generator,
                   to_input)
from .init import initialize_model
from .distributed import Dist, init_distributed, resolve_device
from .metrics import MetricLogger, plot_run
from .optim import ModelEMA, build_param_groups, lr_at
from .rundir import Progress, check_resume, prepare_run_dir, trim_metrics


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
    return create_model(name, num_classes=num_classes, **extra, **kwargs)


def image_defaults(model: nn.Module) -> tuple[int, int, float]:
    """(train size, test size, test crop fraction) for ImageFolder data, from the model's
    ``pretrained_cfg`` (224, 224, 0.875 for a model without one)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    train = int(cfg.get("input_size", (3, 224, 224))[-1])
    return train, int(cfg.get("test_input_size", (3, train, train))[-1]), float(cfg.get("crop_pct", 0.875))


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

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, overwrite: bool = False) -> None:
        """``resume``: a checkpoint to continue; ``overwrite``: move a run already in ``cfg.out_dir``
        aside instead of refusing (see :mod:`normfree.train.rundir`)."""
        self.cfg = cfg
        ckpt = self._init_device_and_run_dir(resume, overwrite)
        meta = ckpt[1] if ckpt else {}
        num_classes, in_chans = self._init_data()
        self._init_model(num_classes, in_chans, meta)
        self._init_batching()
        if self.dist.main and not ckpt:
            self._advise()
        self.init_info = None if ckpt else initialize_model(self)  # --init: GradInit / AutoInit
        self._init_optimizer()
        self.step, self.best_top1, self.progress = 0, -1.0, Progress()
        self.elapsed_before, self.fit_start = 0.0, time.perf_counter()  # training wall time over all resumes
        self.dp = None
        if cfg.dp:  # after the optimizer (DPSGD wraps its step), before the restore (it restores the accountant)
            from .dp import DPSGD

            self.dp = DPSGD(self)
        if ckpt:
            self._restore(*ckpt, resume)
        self._init_wrappers()

    def _init_device_and_run_dir(self, resume: str | Path | None, overwrite: bool
                                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Device, the checkpoint to resume (checked against the config) and the prepared run folder."""
        cfg = self.cfg
        self.dist = init_distributed(cfg.device)
        self.device = resolve_device(require_device("device (--device)", cfg.device), self.dist.local_rank)
        self.run_dir = Path(cfg.out_dir)
        ckpt = load_checkpoint(resume, TRAIN_META_KEYS) if resume else None
        meta = ckpt[1] if ckpt else {}
        if meta:
            check_resume(cfg, meta, resume)
        if self.dist.main:
            ensure_writable(self.run_dir)
            prepare_run_dir(self.run_dir, resume, overwrite)
        self.dist.barrier()
        return ckpt

    def _init_data(self) -> tuple[int, int]:
        """Load both splits; returns (num_classes, input channels)."""
        cfg = self.cfg
        size = cfg.image_size or 224
        self.train_data = load_data(cfg.data, "train", cfg.train_subset, size)
        self.test_data = load_data(cfg.data, "test", cfg.test_subset, size,
                                   classes=getattr(self.train_data, "classes", None))
        num_classes = check_splits(self.train_data, self.test_data, cfg.num_classes)
        in_chans = self.train_data.x.shape[-1] if isinstance(self.train_data, ArrayData) else 3
        return num_classes, in_chans

    def _init_model(self, num_classes: int, in_chans: int, meta: dict[str, Any]) -> None:
        """Build the model (seeded), size ImageFolder data from its ``pretrained_cfg``, and fix the
        input normalization (the checkpoint's, else the training data's statistics)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
        self.model = build_model(cfg.model, num_classes, in_chans, cfg.model_kwargs).to(self.device)
        train_size, test_size, crop_pct = image_defaults(self.model)
        if isinstance(self.train_data, FolderData):
            self.train_data.size = cfg.image_size or train_size
        if isinstance(self.test_data, FolderData):
            self.test_data.size, self.test_data.crop_pct = cfg.image_size or test_size, crop_pct
        mean, std = (meta["mean"], meta["std"]) if meta else self.train_data.stats()
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.meta_static: dict[str, Any] = {
            "model": cfg.model, "model_kwargs": cfg.model_kwargs,
            "num_classes": num_classes, "in_chans": in_chans, "mean": mean, "std": std,
            "classes": getattr(self.train_data, "classes", None),
            "pretrained_cfg": self._data_cfg(num_classes, in_chans, mean, std, crop_pct)}

        if cfg.grad_checkpointing:
            if not hasattr(self.model, "set_grad_checkpointing"):
                raise NormfreeError(f"{cfg.model} does not support --grad-checkpointing")
            self.model.set_grad_checkpointing(True)
        self.gpu = self.device.type == "cuda"
        self.channels_last = cfg.channels_last and self.gpu
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _data_cfg(self, num_classes: int, in_chans: int, mean: list[float], std: list[float],
                  crop_pct: float) -> dict[str, Any]:
        """The model's ``pretrained_cfg`` as this run trains and evaluates it, for the checkpoint (what
        :func:`normfree.load` gives back): array data at its own size, ImageFolder data at the crop sizes."""
        sizes = [(in_chans, *d.x.shape[1:3]) if isinstance(d, ArrayData) else (in_chans, d.size, d.size)
                 for d in (self.train_data, self.test_data)]
        return {**(getattr(self.model, "pretrained_cfg", None) or {}), "num_classes": num_classes, "mean": mean, "std": std,
                "input_size": sizes[0], "test_input_size": sizes[1],
                "crop_pct": crop_pct if isinstance(self.test_data, FolderData) else 1.0}

    def _init_batching(self) -> None:
        """Micro-batch size per rank and the step counts of the schedule."""
        cfg = self.cfg
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

    def _advise(self) -> None:
        """Warn once, before any work, about a schedule known to diverge (:mod:`normfree.train.advice`)."""
        cfg = self.cfg
        note = small_data_warning(cfg.model, sum(p.numel() for p in self.model.parameters()), len(self.train_data),
                                  cfg.batch_size, cfg.lr, cfg.warmup_epochs, self.steps_per_epoch, cfg.agc_clip)
        if note:
            warnings.warn(note, stacklevel=3)

    def _init_optimizer(self) -> None:
        """SGD over the parameter groups, the AGC clipping specs (classifier excluded) and the EMA."""
        cfg = self.cfg
        role_lr_scale = {"skip_gain": cfg.skip_gain_lr_scale, "gain": cfg.gain_lr_scale, "bias": cfg.bias_lr_scale}
        groups = build_param_groups(self.model, cfg.param_groups, cfg.lr, cfg.weight_decay, role_lr_scale)
        self.opt = torch.optim.SGD(groups, lr=cfg.lr,
                                   momentum=cfg.momentum, nesterov=cfg.nesterov)
        head = getattr(self.model, "fc", None)
        if head is None and cfg.agc_clip > 0:
            warnings.warn(f"{cfg.model} has no .fc classifier: AGC will clip every parameter", stacklevel=2)
        self.agc_specs = agc_params(self.model, exclude=(head,) if head is not None else ())
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None

    def _init_wrappers(self) -> None:
        """DDP and torch.compile around the model, the metric logger and the SPP recorder."""
        cfg = self.cfg
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
                    "elapsed_s": self.elapsed_before + time.perf_counter() - self.fit_start,
                    **self.progress.to_meta(), **(extra or {})}
            if self.dp:
                meta["privacy"] = self.dp.state()
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
        if self.dp:
            self.dp.load(meta.get("privacy"), path)
        self.progress = Progress.from_meta(meta)

    # ---- one optimizer step ------------------------------------------------------------------------
    def _train_step(self, idx: torch.Tensor) -> tuple[float, float]:
        cfg, k = self.cfg, self.meta_static["num_classes"]
        total = torch.zeros((), device=self.device)
        for m in range(cfg.accum_steps if self.dp is None else 0):  # DP: DPSGD computes the gradient below
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
        value = float(total) if self.dp is None else self.dp.backward(self.step)
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
        recorder = SPPRecorder(self.cfg.spp_every, inputs=inputs, out_dir=self.run_dir / "spp",
                               inputs_label=f"{len(idx)} training images")
        history = self.run_dir / "spp" / "spp_history.json"
        if self.step > 0 and history.exists():
            recorder.history = [r for r in load_json(history) if r.step is not None and r.step <= self.step]
        return recorder

    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (or stop after ``until_epoch`` epochs, for staged runs); return the summary.

        Resuming, the records ``metrics.jsonl`` holds beyond the checkpoint are dropped first (they will
        be logged again), and an epoch end that an interrupt cut short is redone before training on.
        """
        cfg, spe, prog = self.cfg, self.steps_per_epoch, self.progress
        end_epoch = min(cfg.epochs, until_epoch or cfg.epochs)
        if self.dist.main:
            cfg.save_yaml(self.run_dir / "config.yaml")  # the config in force (a resume may add epochs)
            trim_metrics(self.run_dir / "metrics.jsonl", self.step, prog.epoch_pending)
        if self.step >= self.total_steps and not prog.epoch_pending:
            return self._already_finished()
        x, _ = self.train_data.batch(torch.arange(1), False, step_generator(0))
        check_batch_fits(self.model, (self.micro, x.shape[-1], *x.shape[1:3]), self.device, training=True,
                         what="--batch-size" if self.micro == cfg.batch_size else
                         "the micro-batch (--batch-size / processes / --accum-steps)")
        start_time, start_step = time.perf_counter(), self.step
        self.fit_start = start_time
        last: dict[str, Any] = prog.metrics
        if self.spp is not None and self.step == 0:
            self.spp(self.model, 0)  # at initialization
        try:
            if prog.epoch_pending:
                last = self._end_epoch(self.step // spe - 1)
            while self.step < end_epoch * spe:
                epoch = self.step // spe
                perm = torch.randperm(len(self.train_data), generator=step_generator(cfg.seed, epoch))
                self.model.train()
                bar = tqdm(range(self.step % spe, spe), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           disable=not self.dist.main, leave=False)
                prog = self.progress  # _end_epoch starts a fresh one
                t0, seconds = time.perf_counter(), prog.seconds
                for i in bar:
                    loss, frac = self._train_step(perm[i * cfg.batch_size:(i + 1) * cfg.batch_size])
                    prog.loss_sum, prog.loss_count = prog.loss_sum + loss, prog.loss_count + 1
                    prog.seconds = seconds + time.perf_counter() - t0
                    self._watch_divergence(loss)
                    if self.spp is not None:
                        self.spp(self.model, self.step)
                    if self.step % cfg.log_every == 0 or i == spe - 1:
                        rec = {"kind": "step", "step": self.step, "epoch": epoch, "loss": loss,
                               "lr": self.lr}
                        if not math.isnan(frac):
                            rec["agc_clipped_frac"] = frac
                        self.logger.log(rec)
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{rec['lr']:.3g}")
                prog.epoch_pending = True
                last = self._end_epoch(epoch)
        except KeyboardInterrupt:
            if self._updating:
                raise TrainingInterrupted(f"interrupted during a weight update at step {self.step}; the last "
                                          f"epoch checkpoint in {self.run_dir} is intact, resume from it") from None
            path = self.save("last.safetensors", {"interrupted": True})
            raise TrainingInterrupted(f"interrupted at step {self.step}; saved a resumable checkpoint {path}. "
                                      f"Continue with: normfree train --resume {path}") from None
        finally:
            self.logger.close()
        return self._finish(last, time.perf_counter() - start_time, self.step - start_step)

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        """Evaluate (when due), update ``best``, log the epoch record, then write ``last``: a kill between
        any two of these leaves a checkpoint from which the resume redoes exactly the missing part."""
        cfg, prog = self.cfg, self.progress
        last = {"kind": "epoch", "epoch": epoch + 1, "step": self.step,
                "train_loss": prog.loss_sum / max(1, prog.loss_count), "epoch_time_s": prog.seconds,
                "img_per_s": prog.loss_count * cfg.batch_size / max(prog.seconds, 1e-9)}
        if self.dp:
            last.update(self.dp.report())  # privacy spent so far, every epoch
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            last.update(self.evaluate())
            score = last.get("ema_test_top1", last["test_top1"])
            if score > self.best_top1:
                self.save("best.safetensors", {"metrics": last, "best_top1": score})
                self.best_top1 = score
        self.logger.log(last)
        self.progress = Progress(loss_start=prog.loss_start, above=prog.above, metrics=last)
        self.save("last.safetensors", {"metrics": last})
        if self.dist.main:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in last.items() if k != "kind"))
        return last

    def _watch_divergence(self, loss: float) -> None:
        """Stop (or warn, ``cfg.divergence``) when the loss stays far above its start: a finite but
        exploding run otherwise burns its whole budget before anyone looks."""
        cfg, prog = self.cfg, self.progress
        if cfg.divergence == "off":
            return
        if prog.loss_start is None:
            prog.loss_start = loss
        level = cfg.divergence_factor * max(prog.loss_start, math.log(self.meta_static["num_classes"]))
        prog.above = prog.above + 1 if loss > level else 0
        if prog.above != cfg.divergence_patience:
            return
        msg = (f"the training loss has stayed above {level:.4g} ({cfg.divergence_factor:g} x its start "
               f"{prog.loss_start:.4g}) for {prog.above} steps and is {loss:.4g} at step {self.step}: the run is "
               f"diverging. Try a lower --lr (now {cfg.lr:g}), adaptive gradient clipping (--agc-clip 0.01"
               f"{', now ' + format(cfg.agc_clip, 'g') if cfg.agc_clip else ''}) or a longer --warmup-epochs "
               f"(now {cfg.warmup_epochs:g})")
        if cfg.divergence == "warn":
            warnings.warn(msg, stacklevel=2)
            return
        raise NormfreeError(f"{msg}; training stopped without writing a checkpoint, so the last one in "
                            f"{self.run_dir} is intact (--divergence warn only warns)")

    def _already_finished(self) -> dict[str, Any]:
        """Resuming a complete run: say so, or, if it was killed before writing its summary, write it."""
        path = self.run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        if summary.get("steps") == self.step:
            raise ConfigError(f"the run in {self.run_dir} is already finished ({self.step} steps, "
                              f"{self.cfg.epochs} epochs, best top-1 {self.best_top1:.2f}); to train it longer "
                              f"resume with --epochs above {self.cfg.epochs}")
        warnings.warn(f"the run in {self.run_dir} had finished training but not written summary.json; "
                      "writing it from the last checkpoint", stacklevel=3)
        return self._finish(self.progress.metrics, 0.0, 0)

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
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            if self.step >= self.total_steps:
                plot_run(self.run_dir)
                if self.spp is not None:
                    self.spp.plot()  # spp/spp_history.png
        return summary
