"""Hand-written mutation testing: does the test suite notice when the code is broken on purpose?

Each mutant replaces one exact snippet of one library file (it must occur exactly once) and runs only
the tests that guard that code, with ``pytest -x`` and a per-mutant timeout. A mutant is *killed* when
those tests fail (or time out), *survives* when they pass. Equivalent mutants (same behaviour, so no test
can kill them) are listed with their reason and left out of the score.

The mutants run in a scratch copy of the repository (``normfree/``, ``pyproject.toml`` and the tests),
imported through ``PYTHONPATH`` ahead of the editable install, so the working tree is never touched.

    OMP_NUM_THREADS=1 .venv/bin/python tools/mutants.py                 # every module, current tests
    OMP_NUM_THREADS=1 .venv/bin/python tools/mutants.py --module train  # one module
    OMP_NUM_THREADS=1 .venv/bin/python tools/mutants.py --tests-rev main  # the tests of another revision
    .venv/bin/python tools/mutants.py --list                            # show the mutants, run nothing
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from xml.etree import ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    module: str  # the group its score counts towards
    path: str  # library file, relative to the repository root
    old: str
    new: str
    equivalent: str = ""  # reason, when no test can tell the mutant from the original


TESTS = {
    "layers": ["tests/test_layers.py", "tests/test_speed.py::test_ws_function_matches_reference_and_gradcheck",
               "tests/test_speed.py::test_ws_statistics_stay_fp32_under_autocast",
               "tests/test_resnet.py::test_signal_propagation_follows_expected_variance",
               "tests/test_resnet.py::test_other_activations_keep_signal"],
    "analysis": ["tests/test_analysis.py"],
    "train": ["tests/test_train_parts.py", "tests/test_train_agc.py", "tests/test_train_loop.py",
              "tests/test_cli_options.py::test_training_options_change_the_trained_weights"],
    "models": ["tests/test_resnet.py", "tests/test_speed.py", "tests/test_features.py"],
    "deploy": ["tests/test_deploy.py", "tests/test_speed.py::test_mid_branch_se_block_folded_and_deployed"],
    "convert": ["tests/test_convert_deepmind.py", "tests/test_convert_timm.py"],
    "cli": ["tests/test_cli_options.py", "tests/test_api.py", "tests/test_bench.py", "tests/test_compare.py",
            "tests/test_train_loop.py::test_cli_train_then_eval", "tests/test_load.py",
            "tests/test_cli_vocabulary.py"],
    "privacy": ["tests/test_privacy.py", "tests/test_dp.py"],
    "baselines": ["tests/test_init_baselines.py"],
}
"""The tests each module's mutants run (the tests that claim to guard that code)."""

L, A, T, M = "normfree/layers/conv.py", "normfree/analysis/spp.py", "normfree/train/data.py", "normfree/models/blocks.py"
P, D, PN = "normfree/privacy.py", "normfree/train/dp.py", "normfree/layers/proxynorm.py"
G, AI = "normfree/init/gradinit.py", "normfree/init/autoinit.py"
MUTANTS = [
    # layers: Scaled WS, γ, padding, stochastic depth
    Mutant("layers", L, "torch.clamp(var * fan_in, min=eps)", "torch.clamp(var, min=eps)"),
    Mutant("layers", L, "return torch.rsqrt(var + eps) * const", "return torch.rsqrt(var + eps)"),
    Mutant("layers", L, "var = centered.square().mean(dim=dims, keepdim=True)",
           "var = centered.square().sum(dim=dims, keepdim=True)"),
    Mutant("layers", L, "centered = w - mean", "centered = w"),
    Mutant("layers", L, "(1e-4 if ws == \"official\" else 1e-5)", "(1e-5 if ws == \"official\" else 1e-5)"),
    Mutant("layers", L, "self.fan_in = self.weight[0].numel()", "self.fan_in = self.weight[0, 0].numel()"),
    Mutant("layers", L, "return total // 2, total - total // 2", "return total - total // 2, total // 2"),
    Mutant("layers", L, "x = pad_same(x, (k, k), (s, s), value=float(\"-inf\"))", "x = pad_same(x, (k, k), (s, s))"),
    Mutant("layers", L, "return F.avg_pool2d(F.pad(x, pads), k, s) / F.avg_pool2d(ones, k, s)",
           "return F.avg_pool2d(F.pad(x, pads), k, s)"),
    Mutant("layers", L, "out = w - mean\n", "out = w - mean * 0.5\n"),
    Mutant("layers", L, "torch.rsqrt(var), inv_std", "torch.rsqrt(var + eps), inv_std"),
    Mutant("layers", "normfree/layers/activations.py", "return y if self.factor == 1.0 else y * self.factor",
           "return y if self.factor == 1.0 else y * self.gamma"),
    Mutant("layers", "normfree/layers/activations.py", "return 1.0 / math.sqrt(var)", "return 1.0 / var"),
    Mutant("layers", "normfree/layers/activations.py", "var = total_sq / num_samples - mean * mean",
           "var = total_sq / num_samples"),
    Mutant("layers", "normfree/layers/regularization.py", "mask = torch.floor(keep + torch.rand(",
           "mask = torch.floor(self.rate + torch.rand("),
    Mutant("layers", "normfree/layers/regularization.py", "return mask / keep if scale_by_keep else mask",
           "return mask / keep"),
    Mutant("layers", "normfree/layers/regularization.py", "return [rate * i / num_blocks for i in range(num_blocks)]",
           "return [rate * (i + 1) / num_blocks for i in range(num_blocks)]"),
    # analysis: SPP statistics, measurement mode, diagnosis
    Mutant("analysis", "normfree/analysis/stats.py", "return (mean**2).mean().item(), var.mean().item()",
           "return mean.mean().item() ** 2, var.mean().item()"),
    Mutant("analysis", "normfree/analysis/stats.py", "dim=dims, correction=0)", "dim=dims, correction=1)"),
    Mutant("analysis", "normfree/analysis/stats.py", "dims = [0, *range(2, x.ndim)]", "dims = [*range(2, x.ndim)]"),
    Mutant("analysis", A, "    for m in norms:\n        m.train()\n", ""),
    Mutant("analysis", A, "                    getattr(m, k).copy_(b)", "                    pass"),
    Mutant("analysis", A, "math.isclose(float(g.detach()), 1.0)", "math.isclose(float(g.detach()), 0.0)"),
    Mutant("analysis", A, "self.branches.setdefault(name, channel_stats(first_tensor(out))[1])",
           "self.branches[name] = channel_stats(first_tensor(out))[1]"),
    Mutant("analysis", A, "return [(v - e) / e for v, e in zip(self.var, self.expected_var)]",
           "return [(v - e) for v, e in zip(self.var, self.expected_var)]"),
    Mutant("analysis", A, "if x.shape[0] < 2:", "if x.shape[0] < 1:"),
    Mutant("analysis", "normfree/analysis/diagnose.py", "if max(ratios) < MEAN_SHIFT_RATIO:",
           "if max(ratios) < 10 * MEAN_SHIFT_RATIO:"),
    Mutant("analysis", "normfree/analysis/diagnose.py", "if max(rel) > VAR_EXPLODE:", "if max(rel) > 10 * VAR_EXPLODE:"),
    Mutant("analysis", "normfree/analysis/diagnose.py", "if min(rel) < VAR_COLLAPSE:", "if min(rel) < VAR_COLLAPSE / 10:"),
    Mutant("analysis", "normfree/analysis/diagnose.py", "if ratio < 1 / GRAD_RATIO:", "if ratio < 1 / GRAD_RATIO / 10:"),
    Mutant("analysis", "normfree/analysis/diagnose.py", "return Finding(\"mean_shift\", start + 1,",
           "return Finding(\"mean_shift\", start,"),
    Mutant("analysis", "normfree/analysis/diagnose.py", "if all(v < 1e-8 for _, v in res):",
           "if any(v < 1e-8 for _, v in res):"),
    # train: data/augmentation, AGC, optimizer, metrics, checkpoint, resume
    Mutant("train", T, "h = (h * 1_000_003 + int(k) + 1) % (2**63 - 1)", "h = (h + int(k) + 1) % (2**63 - 1)"),
    Mutant("train", T, "cols = ox[:, None] + torch.where(flipped[:, None], w - 1 - ar_w, ar_w)",
           "cols = ox[:, None] + ar_w"),
    Mutant("train", T, "rows = oy[:, None] + ar_h", "rows = pad + ar_h"),
    Mutant("train", T, "return x, lam * target + (1 - lam) * target[perm]", "return x, target"),
    Mutant("train", T, "lam = 1 - (b - t) * (r - l) / (h * w)", "lam = lam"),
    Mutant("train", T, "x = lam * x + (1 - lam) * x[perm]", "x = lam * x + (1 - lam) * x"),
    Mutant("train", T, "sl = slice(0, 1500) if split == \"train\" else slice(1500, None)",
           "sl = slice(0, 1500) if split == \"train\" else slice(0, 297)"),
    Mutant("train", T, "return d if n <= 0 or n >= len(d) else", "return d if n >= 0 or n >= len(d) else"),
    Mutant("train", "normfree/train/agc.py", "max_norm = w_norm * clip", "max_norm = g_norm * clip"),
    Mutant("train", "normfree/train/agc.py", "over = g_norm > max_norm", "over = g_norm >= 0"),
    Mutant("train", "normfree/train/agc.py", "fan_in = [d for d in range(p.ndim) if d != dim]",
           "fan_in = [d for d in range(p.ndim) if d != 0]"),
    Mutant("train", "normfree/train/agc.py", "w_norm = torch.cat([t.to(device) for t in w_norms]).clamp_min_(eps)",
           "w_norm = torch.cat([t.to(device) for t in w_norms])"),
    Mutant("train", "normfree/train/agc.py", "return over.sum() / over.numel()", "return over.sum() / len(specs)"),
    Mutant("train", "normfree/train/optim.py", "return peak * step / warmup_steps", "return peak * (step + 1) / warmup_steps"),
    Mutant("train", "normfree/train/optim.py", "return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))",
           "return 0.5 * peak * (1 + math.cos(math.pi * progress))"),
    Mutant("train", "normfree/train/checkpoint.py", "if v.is_floating_point() and not torch.isfinite(v).all()]",
           "if False]"),
    Mutant("train", "normfree/safeio.py", "        os.replace(tmp, path)\n",
           "        os.replace(tmp, path)\n        open(tmp, 'w').close()\n",
           equivalent="the finally clause removes the stray temp file again"),
    Mutant("train", "normfree/train/trainer.py", "                self.opt.state[p][\"momentum_buffer\"] = buffers[n].to(self.device)",
           "                pass"),
    Mutant("train", "normfree/train/trainer.py",
           "self.ema.state = {k: ema[k].to(self.device) for k in self.ema.state} if ema else self.ema.state",
           "self.ema.state = self.ema.state"),
    Mutant("train", "normfree/train/trainer.py", "gen = step_generator(cfg.seed, self.step, j)",
           "gen = step_generator(cfg.seed, j)"),
    Mutant("train", "normfree/train/trainer.py", "loss = F.cross_entropy(logits.float(), target) / cfg.accum_steps",
           "loss = F.cross_entropy(logits.float(), target)"),
    Mutant("train", "normfree/train/trainer.py", "target = target * (1 - cfg.label_smoothing) + cfg.label_smoothing / k",
           "target = target"),
    Mutant("train", "normfree/train/metrics.py", "            f.write(json.dumps(record) + \"\\n\")", "            pass"),
    # models: blocks' fast and plain paths, stochastic depth, padding
    Mutant("models", M, "            out = out * self.alpha\n        out = out + shortcut",
           "            out = out * self.alpha * self.alpha\n        out = out + shortcut"),
    Mutant("models", M, "shortcut = x if self.shortcut is None else self.shortcut(out)",
           "shortcut = x if self.shortcut is None else self.shortcut(x)"),
    Mutant("models", M, "return self.skip_gain * self.alpha", "return self.skip_gain"),
    Mutant("models", M, "out = torch.addcmul(shortcut, out, mask)", "out = out + shortcut"),
    Mutant("models", M, "return self.forward_folded(x) if self.fast_path else self.forward_unfolded(x)",
           "return self.forward_folded(x)"),
    Mutant("models", M, "expected_var = 1.0\n", "expected_var = 0.0\n"),
    Mutant("models", M, "expected_var += alpha**2", "expected_var += alpha"),
    Mutant("models", M, "block = block_fn(in_ch, s, b, 1.0 / math.sqrt(expected_var), rates[idx])",
           "block = block_fn(in_ch, s, b, 1.0 / expected_var, rates[idx])"),
    Mutant("models", M, "return conv_forward(sc[-1], x, owed)", "return conv_forward(sc[-1], x)"),
    Mutant("models", M, "out, fresh = m(out, 1.0 if tail is None else tail), True", "out, fresh = m(out), True"),
    Mutant("models", "normfree/models/net.py", "x = self.drop(x.mean(dim=(2, 3)))", "x = self.drop(x.amax(dim=(2, 3)))"),
    Mutant("models", "normfree/models/resnet.py", "stem.add_module(\"pool\", MaxPoolSame(3, 2, layers.padding))",
           "stem.add_module(\"pool\", MaxPoolSame(3, 2, \"symmetric\"))"),
    # deploy / fuse
    Mutant("deploy", "normfree/models/net.py", "self.fc.weight.mul_(final_act.factor)", "self.fc.weight.mul_(final_act.gamma)",
           equivalent="the final activation's scale is always 1, so its factor γ·scale is γ"),
    Mutant("deploy", M, "            if last.bias is not None:\n                last.bias.mul_(gain)\n", ""),
    Mutant("deploy", M, "            last.gain *= gain\n", "            pass\n"),
    Mutant("deploy", M, "        self.drop_path.rate = 0.0\n", ""),
    Mutant("deploy", M, "                mods[i + 1].weight.mul_(act.factor)  # type: ignore[union-attr]\n", ""),
    Mutant("deploy", M, "(bias - bn.running_mean) * scale + bn.bias", "bias * scale + bn.bias"),
    Mutant("deploy", M, "scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)",
           "scale = bn.weight / torch.sqrt(bn.running_var)"),
    Mutant("deploy", "normfree/deploy.py", "    for p in model.parameters():\n        p.requires_grad_(False)\n", ""),
    Mutant("deploy", "normfree/deploy.py", "    model = copy.deepcopy(model).eval()\n    _replace", "    model = model.eval()\n    _replace"),
    Mutant("deploy", L, "cls, padding = (SamePadConv2d, 0) if same else (nn.Conv2d, conv.padding)",
           "cls, padding = (nn.Conv2d, conv.padding)"),
    Mutant("deploy", M, "mods[0].weight.mul_(act.factor)", "mods[0].weight.mul_(act.gamma)"),
    # convert: DeepMind and timm checkpoints
    Mutant("convert", "normfree/convert/deepmind.py", "t = t.permute(3, 2, 0, 1)", "t = t.permute(3, 2, 1, 0)"),
    Mutant("convert", "normfree/convert/deepmind.py", "        t = t.t()\n", "        pass\n"),
    Mutant("convert", "normfree/convert/deepmind.py", "hk_block = block_name if i == 0 else f\"{block_name}_{i}\"",
           "hk_block = f\"{block_name}_{i}\""),
    Mutant("convert", "normfree/convert/deepmind.py", "if len(roots) > 1:", "if len(roots) > 2:"),
    Mutant("convert", "normfree/convert/deepmind.py", "f\"{hk_block}/squeeze_excite/linear_1\", f\"{path}.branch.se.fc1\"",
           "f\"{hk_block}/squeeze_excite/linear_1\", f\"{path}.branch.se.fc0\""),
    Mutant("convert", "normfree/convert/common.py", "missing = sorted(k for k in own if k not in tensors)",
           "missing = []"),
    Mutant("convert", "normfree/convert/common.py",
           "for k, v in tensors.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]",
           "for k, v in tensors.items() if False]"),
    Mutant("convert", "normfree/convert/common.py", "extra = sorted(k for k in tensors if k not in own) + sorted(unexpected or [])",
           "extra = sorted(unexpected or [])"),
    # CLI options
    Mutant("cli", "normfree/commands/eval.py", "evaluate_checkpoint(args.checkpoint, args.data, args.test_subset, args.device,",
           "evaluate_checkpoint(args.checkpoint, args.data, 0, args.device,"),
    Mutant("cli", "normfree/commands/eval.py", "test = load_data(data or cfg.get(\"data\", \"demo\"),",
           "test = load_data(cfg.get(\"data\", \"demo\"),"),
    Mutant("cli", "normfree/analysis/measure.py", "size = input_size or int(getattr(model, \"input_size\", 224))",
           "size = int(getattr(model, \"input_size\", 224))"),
    Mutant("cli", "normfree/analysis/measure.py", "kwargs.setdefault(\"skipinit_gain\", skipinit_gain)", "pass"),
    Mutant("cli", "normfree/commands/spp.py", "gradients=args.grads, seed=args.seed", "gradients=False, seed=args.seed"),
    Mutant("cli", "normfree/commands/spp.py", "gradients=args.grads, seed=args.seed", "gradients=args.grads, seed=0"),
    Mutant("cli", "normfree/analysis/measure.py", "        if checkpoint:\n            load_weights(model, checkpoint)\n", ""),
    Mutant("cli", "normfree/analysis/measure.py", "kwargs = {**record.get(\"model_kwargs\", {}), **kwargs}", "pass"),
    Mutant("cli", "normfree/analysis/measure.py", "x = load_images(data, batch, size).to(device)",
           "x = make_inputs(model, batch=batch, size=size, seed=seed)"),
    Mutant("cli", "normfree/commands/bench.py", "warmup=args.warmup, repeats=args.repeats, steps=args.steps",
           "warmup=args.warmup, repeats=args.repeats, steps=1"),
    Mutant("cli", "normfree/commands/bench.py", "compile=args.compile, channels_last=args.channels_last, amp=args.amp",
           "compile=args.compile, channels_last=args.channels_last, amp=None"),
    Mutant("cli", "normfree/commands/bench.py", "    if args.baseline:\n        for spec", "    if True:\n        for spec"),
    Mutant("cli", "normfree/commands/bench.py", "extra = {} if args.num_classes is None else {\"num_classes\": args.num_classes}",
           "extra = {}"),
    Mutant("cli", "normfree/commands/bench.py", "            model.set_grad_checkpointing(True)\n", "            pass\n"),
    Mutant("cli", "normfree/commands/bench.py", "torch.set_num_threads(check_number(", "(check_number("),
    Mutant("cli", "normfree/commands/compare.py", "lr_batch=args.lr_batch, train_subset=args.train_subset",
           "lr_batch=128, train_subset=args.train_subset"),
    Mutant("cli", "normfree/commands/compare.py", "(\"weight_decay\", args.weight_decay), ", ""),
    Mutant("cli", "normfree/commands/compare.py", "spp_batch=args.spp_batch, spp_skipinit_gain=args.spp_skipinit_gain",
           "spp_batch=16, spp_skipinit_gain=args.spp_skipinit_gain"),
    Mutant("cli", "normfree/commands/train.py", "if getattr(args, f.name) is not None and f.name != \"recipe\"}",
           "if getattr(args, f.name) is not None and f.name not in (\"recipe\", \"seed\")}"),
    Mutant("cli", "normfree/commands/train.py", "if t.startswith(\"int\"):\n        return int", "if t.startswith(\"int\"):\n        return float"),
    Mutant("cli", "normfree/commands/convert.py", "kwargs: dict[str, Any] = {} if classes is None else",
           "kwargs: dict[str, Any] = {} if True else"),
    Mutant("cli", "normfree/commands/convert.py", "classes = source_classes(params, args.source)", "classes = None"),
    Mutant("cli", "normfree/commands/eval.py", "image_size = (int(trained[\"test_input_size\"][-1]) if", "image_size = (8 if"),
    Mutant("cli", "normfree/commands/train.py", "if not trainer.dist.main:", "if False:"),
    Mutant("cli", "normfree/pretrained.py", "tensors = split_prefix(tensors, \"ema\" if", "tensors = split_prefix(tensors, \"model\" if"),
    Mutant("cli", "normfree/pretrained.py", "        x = x[:, top:top + th, left:left + tw]", "        x = x[:, :th, :tw]"),
    # privacy: Opacus grad samplers and validators, DP-SGD's clipping, noise, sampling and accounting
    Mutant("privacy", P, "return {conv.bias: backprops.flatten(2).sum(2)}", "return {conv.bias: backprops.flatten(2).mean(2)}"),
    Mutant("privacy", P, ".flatten(1).sum(1) * layer.alpha}", ".flatten(1).sum(1)}"),
    Mutant("privacy", P, "return {layer.bias: backprops.flatten(1).sum(1)} if", "return {layer.bias: backprops.flatten(1).mean(1)} if"),
    Mutant("privacy", P, "        x = pad_same(x, conv.kernel_size, conv.stride, conv.dilation)\n", ""),
    Mutant("privacy", P, "grads = torch.autograd.grad(w_hat, params, g_hat.to(w_hat.dtype), is_grads_batched=True)",
           "grads = [g_hat] * len(params)"),
    Mutant("privacy", P, "@register_module_validator(BatchNorm2d)\n", ""),
    Mutant("privacy", P, "@register_module_validator(EvoNormB0)\n", ""),
    Mutant("privacy", P, "if module.post is None or module.skip_gain is None:", "if True:"),
    Mutant("privacy", D, "factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)", "factor = max_norm / (norms + 1e-6)"),
    Mutant("privacy", D, "for g in grads], dim=1).norm(dim=1)", "for g in grads], dim=1).sum(dim=1)"),
    Mutant("privacy", D, "std = self.noise_multiplier * cfg.max_grad_norm", "std = self.noise_multiplier"),
    Mutant("privacy", D, "p.grad = (acc + noise.to(acc.device)) / cfg.batch_size",
           "p.grad = (acc + noise.to(acc.device)) / max(1, len(idx))"),
    Mutant("privacy", D, "generator=step_generator(self.t.cfg.seed, step, _SAMPLE_KEY)",
           "generator=step_generator(self.t.cfg.seed, 0, _SAMPLE_KEY)"),
    Mutant("privacy", D, "noise_gen = step_generator(cfg.seed, step, _NOISE_KEY)", "noise_gen = step_generator(cfg.seed, 0, _NOISE_KEY)"),
    Mutant("privacy", D, "*g.shape[1:]).float().mean(1) for g in rows]", "*g.shape[1:]).float().sum(1) for g in rows]"),
    Mutant("privacy", D, "return grads, loss / cfg.augmult", "return grads, loss"),
    Mutant("privacy", D, "x, y = x.repeat_interleave(cfg.augmult, 0), y.repeat_interleave(cfg.augmult, 0)",
           "x, y = x.repeat(cfg.augmult, 1, 1, 1), y.repeat(cfg.augmult)"),
    Mutant("privacy", D, "sample_rate=self.sample_rate)\n        return loss_sum", "sample_rate=1.0)\n        return loss_sum"),
    Mutant("privacy", D, "self.accountant.history = [tuple(h) for h in state[\"history\"]]", "self.accountant.history = []"),
    Mutant("privacy", D, "if key != self._eps_key:", "if self._eps_key is None:"),
    Mutant("privacy", D, "target = F.one_hot(y, k).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / k",
           "target = F.one_hot(y, k).float()"),
    Mutant("privacy", D, "mixing = [n for n, m in model.named_modules() if isinstance(m, _BATCH_STATS)]", "mixing = []"),
    Mutant("privacy", D, "(cfg.mixup == 0 and cfg.cutmix == 0,", "(True,"),
    Mutant("privacy", D, "for k in SETTINGS if state.get(k) != mine[k]]", "for k in SETTINGS if False]"),
    # baselines: Proxy Norm, GradInit, AutoInit
    Mutant("baselines", PN, "u = (torch.arange(n, dtype=torch.float64) + 0.5) * (2.0 / n) - 1.0",
           "u = (torch.arange(n, dtype=torch.float64) + 1.0) * (2.0 / (n + 1)) - 1.0"),
    Mutant("baselines", PN, "return (torch.erfinv(u) * 2.0**0.5).to(dtype)", "return torch.erfinv(u).to(dtype)"),
    Mutant("baselines", PN, "torch.rsqrt(var + self.proxy_eps)", "torch.rsqrt(var + 1e-5)"),
    Mutant("baselines", PN, "shift = self.tilde_bias - mean * scale", "shift = self.tilde_bias - mean"),
    Mutant("baselines", PN, "z.var(dim=1, unbiased=False)", "z.var(dim=1, unbiased=True)"),
    Mutant("baselines", PN, "y = F.group_norm(x, self.groups, self.weight,", "y = F.group_norm(x, 1, self.weight,"),
    Mutant("baselines", PN, "z = self.fn(self.weight[:, None] * self.proxy.to(self.weight.dtype) + self.bias[:, None])",
           "z = self.fn(self.proxy.to(self.weight.dtype).expand(len(self.weight), -1))"),
    Mutant("baselines", PN, "super().__init__(channels, 1, act,", "super().__init__(channels, 32, act,"),
    Mutant("baselines", G, "return [g / (g.abs() + adam_eps) for g in grads]", "return list(grads)"),
    Mutant("baselines", G, "p = 2 if optimizer_kind == \"sgd\" else 1", "p = 2"),
    Mutant("baselines", G, "inside = bool(gnorm <= grad_bound)", "inside = True"),
    Mutant("baselines", G, "stepped = {n: params[n] - eta * d for", "stepped = {n: params[n] + eta * d for"),
    Mutant("baselines", G, "s.clamp_(min=min_scale)", "s.clamp_(min=0.0)"),
    Mutant("baselines", G, "t.copy_(base[n] * scales[n])", "t.copy_(base[n])"),
    Mutant("baselines", G, "result.backward_passes += 2", "result.backward_passes += 1"),
    Mutant("baselines", G, "if eta is None else eta", "if eta is None else 0.1"),
    Mutant("baselines", G, "functional_call(model, stepped, (x1,)), y1)", "functional_call(model, stepped, (x0,)), y0)"),
    Mutant("baselines", G, "            objective = gnorm\n", "            objective = loss0\n"),
    Mutant("baselines", AI, "scale = 1.0 / math.sqrt(predicted)", "scale = 1.0 / predicted"),
    Mutant("baselines", AI, "(m.gain if ws else m.weight).mul_(scale)", "m.weight.mul_(scale)"),
    Mutant("baselines", AI, "out = Moments(out.mean + m.bias.detach().double(), out.var)", "out = out"),
    Mutant("baselines", AI, "gain = b.alpha * (1.0 if", "gain = (1.0 if"),
    Mutant("baselines", AI, "self.run(b.shortcut, pre)", "self.run(b.shortcut, x)"),
    Mutant("baselines", AI, "m.scale.fill_(1.0 / math.sqrt(x.avg_var))", "m.scale.fill_(1.0 / x.avg_var)"),
    Mutant("baselines", AI, "return Moments(mean, var).scaled(m.factor)", "return Moments(mean, var)"),
    Mutant("baselines", AI, "if not isinstance(m, _SUPPORTED):", "if False:"),
]


def _scratch(tests_rev: str | None) -> Path:
    """A scratch copy: the library, pyproject, and the documentation and benchmark scripts some tests read,
    from the working tree; tests from it or from a revision."""
    work = Path(tempfile.mkdtemp(prefix="normfree-mutants-"))
    shutil.copytree(ROOT / "normfree", work / "normfree", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "docs", work / "docs")
    shutil.copytree(ROOT / "benchmarks", work / "benchmarks",  # the scripts some tests run, not the logs
                    ignore=shutil.ignore_patterns("exp", "__pycache__", "*.png"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    if tests_rev is None:
        shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "archive", tests_rev, "tests"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    return work


def _run_pytest(work: Path, args: list[str], timeout: float) -> str:
    """'pass', 'fail', 'timeout' or 'no tests' for one pytest run in the scratch copy."""
    env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=work,
                              env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    return {0: "pass", 5: "no tests"}.get(proc.returncode, "fail")


def _baseline(work: Path, tests: list[str], timeout: float) -> tuple[str, list[str]]:
    """Run ``tests`` unmutated; return the outcome and their node ids, fastest first, so that a mutant's
    ``-x`` run stops at the quickest test that catches it."""
    present = [t for t in tests if (work / t.split("::")[0]).is_file()]
    if not present:
        return "no tests", []
    report = work / "_baseline.xml"
    outcome = _run_pytest(work, ["-o", "junit_family=xunit1", f"--junitxml={report}", *present], timeout)
    if outcome != "pass":
        return outcome, []
    timed = []
    for case in ElementTree.parse(report).iter("testcase"):
        if case.find("skipped") is None:
            owner = case.get("classname", "").rsplit(".", 1)[-1]
            node = f"{case.get('file')}::" + (f"{owner}::" if owner.startswith("Test") else "") + case.get("name", "")
            timed.append((float(case.get("time", 0)), node))
    return outcome, [node for _, node in sorted(timed)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", choices=sorted(TESTS), help="only these groups (repeatable)")
    parser.add_argument("--match", action="append",
                        help="only mutants whose file or snippet contains this text (repeatable: any of them)")
    parser.add_argument("--tests-rev", help="git revision whose tests/ to run (default: the working tree's)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant (a timeout counts as killed)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--json", help="write the per-mutant results here")
    args = parser.parse_args(argv)
    groups = args.module or list(TESTS)
    mutants = [m for m in MUTANTS
               if m.module in groups and (not args.match or any(t in m.path + m.old for t in args.match))]
    if args.list:
        for i, m in enumerate(mutants):
            print(f"{i:3d} {m.module:8s} {m.path}: {m.old.strip()!r} -> {m.new.strip()!r}")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the finally below still cleans up
    work = _scratch(args.tests_rev)
    check = subprocess.run([sys.executable, "-c", "import normfree; print(normfree.__file__)"], cwd=work,
                           env={**os.environ, "PYTHONPATH": str(work)}, capture_output=True, text=True)
    if not check.stdout.startswith(str(work)):
        raise SystemExit(f"the scratch copy is not what imports: {check.stdout or check.stderr}")
    results = []
    try:
        for group in groups:
            if not any(m.module == group for m in mutants):
                continue  # nothing selected here: skip its baseline too
            base, nodes = _baseline(work, TESTS[group], args.timeout)
            if base != "pass":
                print(f"{group}: the unmutated tests do not pass ({base}); its mutants are not run")
                continue
            for m in (m for m in mutants if m.module == group):
                target = work / m.path
                source = target.read_text()
                if m.equivalent:
                    outcome = "equivalent"
                elif source.count(m.old) != 1:
                    outcome = "stale"  # the code changed: the mutant no longer applies
                else:
                    target.write_text(source.replace(m.old, m.new))
                    start = time.perf_counter()
                    try:
                        run = _run_pytest(work, ["-x", *nodes], args.timeout)
                    finally:
                        target.write_text(source)
                    outcome = {"fail": "killed", "timeout": "killed (timeout)", "pass": "survived"}.get(run, run)
                    print(f"  {outcome:16s} {time.perf_counter() - start:6.1f}s  {m.path}: {m.old.strip()[:60]!r}"
                          f" -> {m.new.strip()[:40]!r}", flush=True)
                results.append({"module": m.module, "path": m.path, "old": m.old, "new": m.new,
                                "outcome": outcome, "reason": m.equivalent})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'module':10s} {'killed':>7s} {'scored':>7s} {'score':>6s}  survivors")
    for group in groups:
        rows = [r for r in results if r["module"] == group]
        scored = [r for r in rows if r["outcome"].startswith(("killed", "survived"))]
        killed = sum(r["outcome"].startswith("killed") for r in scored)
        survivors = [f"{r['path']}: {r['old'].strip()[:50]!r}" for r in scored if r["outcome"] == "survived"]
        score = f"{100 * killed / len(scored):5.0f}%" if scored else "    -"
        print(f"{group:10s} {killed:7d} {len(scored):7d} {score}  " + "; ".join(survivors))
    total = [r for r in results if r["outcome"].startswith(("killed", "survived"))]
    if total:
        print(f"{'all':10s} {sum(r['outcome'].startswith('killed') for r in total):7d} {len(total):7d}"
              f" {100 * sum(r['outcome'].startswith('killed') for r in total) / len(total):5.0f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
