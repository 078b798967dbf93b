"""DP-SGD for :class:`~normfree.train.trainer.Trainer` (``normfree train --dp``; docs/privacy.md).

One step: every training example joins the logical batch independently with probability
q = batch_size / N (Poisson sampling, what the accountant assumes); each sampled example is augmented
``augmult`` times and its gradient is the mean over those copies (De et al. 2022); that gradient is
clipped to norm C; the clipped gradients are summed physical batch by physical batch (memory stays
bounded at any logical batch) and Gaussian noise N(0, σ²C²) is added to each coordinate of the sum,
which is divided by the expected batch size and handed to the optimizer. Opacus's accountant (RDP or
PRV) turns (q, σ, steps) into ε; its history is saved in the checkpoint so a resumed run continues it.

Every random draw (sampling, augmentation, noise) comes from a generator keyed by (seed, step), as the
rest of the trainer, so runs are reproducible and resumable; that also means the noise is not
cryptographically secure (Opacus's ``secure_mode`` is the tool for production releases).
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .data import pad_crop_flip, step_generator, to_input
from .per_example import _BATCH_STATS, per_example_grads

if TYPE_CHECKING:
    from .config import TrainConfig
    from .trainer import Trainer

ACCOUNTANTS = ("rdp", "prv")
ENGINES = ("functorch", "opacus")
_SAMPLE_KEY, _NOISE_KEY = -2, -3  # generator keys of the Poisson draw and the noise (micro-batches use 0, 1, …)
SETTINGS = ("noise_multiplier", "max_grad_norm", "sample_rate", "delta", "accountant", "augmult")


def check_config(cfg: TrainConfig, world: int = 1) -> None:
    """Refuse settings that would break the guarantee or the accounting, with the reason."""
    checks = [
        (math.isfinite(cfg.epsilon) and cfg.epsilon >= 0, f"epsilon must be > 0 (got {cfg.epsilon})"),
        (math.isfinite(cfg.noise_multiplier) and cfg.noise_multiplier >= 0,
         f"noise_multiplier must be > 0 (got {cfg.noise_multiplier})"),
        (cfg.epsilon != 0 or cfg.noise_multiplier != 0, "give --epsilon (the noise is then calibrated) or "
         "--noise-multiplier"),
        (cfg.epsilon == 0 or cfg.noise_multiplier == 0, "give --epsilon or --noise-multiplier, not both"),
        (0 < cfg.delta < 1, "delta must be in (0, 1)"), (cfg.max_grad_norm > 0, "max_grad_norm must be > 0"),
        (cfg.augmult >= 1, "augmult must be >= 1"), (cfg.dp_physical_batch >= 1, "dp_physical_batch must be >= 1"),
        (cfg.accountant in ACCOUNTANTS, f"accountant must be one of {', '.join(ACCOUNTANTS)}"),
        (cfg.dp_engine in ENGINES, f"dp_engine must be one of {', '.join(ENGINES)}"),
        (cfg.mixup == 0 and cfg.cutmix == 0, "mixup/cutmix blend examples, so one example's gradient would "
         "depend on another's: not allowed with --dp"),
        (cfg.accum_steps == 1, "with --dp the logical batch is split by --dp-physical-batch; leave accum_steps 1"),
        (world == 1, "--dp runs in one process (no torchrun/DDP)"),
    ]
    bad = [msg for ok, msg in checks if not ok]
    if bad:
        raise ConfigError("invalid DP settings: " + "; ".join(bad))


def check_model(model: nn.Module, name: str) -> None:
    """A model with batch statistics has no per-example gradient: refuse it, naming the layer."""
    mixing = [n for n, m in model.named_modules() if isinstance(m, _BATCH_STATS)]
    if mixing:
        layer = type(model.get_submodule(mixing[0])).__name__
        raise ConfigError(f"{name} cannot be trained with --dp: {mixing[0]} ({layer}) normalizes with batch "
                          "statistics, so each example's gradient depends on the rest of the batch and "
                          "cannot be clipped on its own. Use a normalizer-free model (nf_*, nfnet_*, "
                          "nf_regnet_*) or a batch-independent twin (gnws_*)")


class DPSGD:
    """The private gradient of each step, and the privacy spent so far, for one trainer."""

    def __init__(self, trainer: Trainer) -> None:
        try:
            from opacus.accountants import create_accountant
        except ImportError:
            raise ConfigError("--dp needs Opacus: pip install 'normfree[dp]'") from None
        cfg = trainer.cfg
        check_config(cfg, trainer.dist.world)
        check_model(trainer.model, cfg.model)
        self.t = trainer
        self.n = len(trainer.train_data)
        self.sample_rate = cfg.batch_size / self.n
        self.noise_multiplier = cfg.noise_multiplier or self._calibrate(cfg, trainer.total_steps)
        self.accountant = create_accountant(cfg.accountant)
        self._eps_key: tuple | None = None
        self._eps = 0.0
        if cfg.dp_engine == "opacus":
            import normfree.privacy  # noqa: F401  (registers normfree's grad samplers)

    def _calibrate(self, cfg: TrainConfig, steps: int) -> float:
        """The σ that spends exactly ``cfg.epsilon`` over the whole schedule."""
        from opacus.accountants.utils import get_noise_multiplier

        try:
            # the search's small trial σ reach the edge of the RDP orders and Opacus warns about those; the
            # run's own σ is accounted (and warned about, if ever) every epoch
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
                return float(get_noise_multiplier(target_epsilon=cfg.epsilon, target_delta=cfg.delta,
                                                  sample_rate=self.sample_rate, steps=steps,
                                                  accountant=cfg.accountant, epsilon_tolerance=0.005))
        except ValueError as err:  # Opacus: "The privacy budget is too low."
            raise ConfigError(f"--epsilon {cfg.epsilon:g} cannot be reached at delta {cfg.delta:g} over {steps} "
                              f"steps at sample rate {self.sample_rate:.4g} ({err}): no noise multiplier is "
                              "large enough; raise --epsilon, or train fewer steps") from None

    # ---- state -------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        cfg = self.t.cfg
        return {"noise_multiplier": self.noise_multiplier, "max_grad_norm": cfg.max_grad_norm,
                "sample_rate": self.sample_rate, "delta": cfg.delta, "accountant": cfg.accountant,
                "augmult": cfg.augmult}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the settings and the accountant's history."""
        return {**self.settings(), "history": [list(h) for h in self.accountant.history],
                "epsilon": self.epsilon()}

    def load(self, state: dict[str, Any] | None, path: Any) -> None:
        """Continue the accountant of a checkpoint whose privacy settings match this run's."""
        if state is None:
            raise CheckpointError(f"checkpoint {path} was not trained with --dp; its privacy cost is unknown, "
                                  "so a private run cannot continue it")
        mine = self.settings()
        diff = [f"{k} {state.get(k)!r} -> {mine[k]!r}" for k in SETTINGS if state.get(k) != mine[k]]
        if diff:
            raise CheckpointError(f"checkpoint {path} was trained with other privacy settings ({'; '.join(diff)})"
                                  "; resume with the same --dp flags and data")
        self.accountant.history = [tuple(h) for h in state["history"]]

    def epsilon(self) -> float:
        """ε spent so far at the configured δ (0 before the first step); cached per history, as the
        PRV accountant takes a while and the log, the best and the last checkpoint all ask for it."""
        key = tuple(map(tuple, self.accountant.history))
        if key != self._eps_key:
            self._eps_key = key
            self._eps = float(self.accountant.get_epsilon(self.t.cfg.delta)) if key else 0.0
        return self._eps

    def report(self) -> dict[str, float]:
        return {"epsilon": self.epsilon(), "delta": self.t.cfg.delta, "noise_multiplier": self.noise_multiplier}

    # ---- one step ----------------------------------------------------------------------------------
    def sample(self, step: int) -> torch.Tensor:
        """Poisson sampling: each example's index with probability q, independently (variable size)."""
        keep = torch.rand(self.n, generator=step_generator(self.t.cfg.seed, step, _SAMPLE_KEY)) < self.sample_rate
        return keep.nonzero().flatten()

    def backward(self, step: int) -> float:
        """Set every trainable parameter's ``.grad`` to the step's private gradient; return the mean loss
        of the sampled examples (a non-private diagnostic: logs are not covered by the guarantee)."""
        t, cfg = self.t, self.t.cfg
        params = [p for p in t.model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        idx = self.sample(step)
        loss_sum = 0.0
        for j, chunk in enumerate(idx.split(cfg.dp_physical_batch)):
            grads, loss = self.example_grads(chunk, step_generator(cfg.seed, step, j))
            clipped = clip_per_example(grads, cfg.max_grad_norm)
            for acc, g in zip(total, clipped):
                acc.add_(g.sum(0))
            loss_sum += loss
        noise_gen = step_generator(cfg.seed, step, _NOISE_KEY)
        std = self.noise_multiplier * cfg.max_grad_norm
        for p, acc in zip(params, total):
            noise = torch.normal(0.0, std, acc.shape, generator=noise_gen, dtype=acc.dtype)
            p.grad = (acc + noise.to(acc.device)) / cfg.batch_size  # expected batch size, as Opacus
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return loss_sum / max(1, len(idx))

    def example_grads(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[list[torch.Tensor], float]:
        """Per-example gradients (mean over ``augmult`` augmented copies) of the trainable parameters,
        each (len(idx), *shape), and the summed loss of the copies divided by ``augmult``."""
        t, cfg, k = self.t, self.t.cfg, self.t.meta_static["num_classes"]
        x, y = t.train_data.batch(idx, True, gen)
        x, y = x.repeat_interleave(cfg.augmult, 0), y.repeat_interleave(cfg.augmult, 0)
        x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
        if cfg.augment and t.train_data.small:
            x = pad_crop_flip(x, gen, flip=t.train_data.hflip)
        x = to_input(x, t.mean, t.std, t.channels_last)
        target = F.one_hot(y, k).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / k
        torch.manual_seed(int(torch.randint(0, 2**62, (), generator=gen)))  # stochastic depth, dropout
        with torch.autocast(t.device.type, torch.bfloat16, enabled=t.gpu and cfg.amp):
            rows, loss = (_opacus_grads if cfg.dp_engine == "opacus" else _functorch_grads)(t.model, x, target)
        grads = [g.view(len(idx), cfg.augmult, *g.shape[1:]).float().mean(1) for g in rows]
        return grads, loss / cfg.augmult


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target)


def _functorch_grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    grads, losses = per_example_grads(model, x, target, loss_fn=_soft_cross_entropy, return_loss=True)
    return list(grads.values()), float(losses.sum())


def _opacus_grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    """Per-example gradients through Opacus's hooks (normfree.privacy's grad samplers), attached for
    this batch only so that evaluation and EMA copies see a plain model."""
    from opacus import GradSampleModule

    from ..models.blocks import set_fast_path

    set_fast_path(model, False)  # hooks see each layer only on the plain path
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    try:
        loss = F.cross_entropy(gsm(x).float(), target, reduction="sum")
        with warnings.catch_warnings():  # the stem's input needs no gradient; Opacus's hook says so
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            loss.backward()
        grads = [p.grad_sample for p in model.parameters() if p.requires_grad]
    finally:
        gsm._close()
    for p in model.parameters():
        p.grad = None
    return grads, float(loss.detach())


def clip_per_example(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """Scale each example's gradient (row i of every tensor) to norm ≤ ``max_norm`` over all tensors,
    as Opacus's flat clipping: factor min(1, C / (‖g_i‖ + 1e-6))."""
    norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in grads], dim=1).norm(dim=1)
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return [g * factor.view(-1, *(1,) * (g.ndim - 1)) for g in grads]
