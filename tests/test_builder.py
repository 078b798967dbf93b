"""The one builder: every family takes each option of NetOptions and lets it change the network, or
rejects it with a ModelOptionError that names it; nothing is silently ignored."""
from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

import normfree
from normfree.errors import ModelOptionError
from normfree.models import NetOptions, nf_regnet, nfnet, resnet
from normfree.models.builder import OPTION_NAMES, Family
from normfree.models.nfnet import NFNET
from normfree.models.regnet import NF_REGNET
from normfree.models.resnet import RESNET, SMALL_RESNET

# family → (a registered name, its builder called directly, tiny options)
FAMILIES: dict[str, tuple[Family, str, Any, dict[str, Any]]] = {
    "resnet": (RESNET, "nf_resnet26", lambda **kw: resnet(26, **kw),
               dict(widths=(8, 16, 32, 64), depths=(1, 1, 1, 1), width=1)),
    "small": (SMALL_RESNET, "nf_cifar_resnet20", lambda **kw: resnet(20, small_input=True, **kw),
              dict(widths=(8, 16, 32), depths=(1, 1, 1), width=0.5)),
    "regnet": (NF_REGNET, "nf_regnet_b0", nf_regnet, dict(widths=(16, 32, 48, 64), depths=(1, 1, 1, 1))),
    "nfnet": (NFNET, "nfnet_f0", nfnet, dict(widths=(36, 64, 128, 128), depths=(1, 1, 1, 1), group_width=16)),
}

PARTNERS: dict[str, dict[str, Any]] = {
    "se_ratio": {"use_se": True}, "gamma_in_act": {"ws": "timm"}, "norm_order": {"norm": "bn"},
    "norm_kwargs": {"norm": "bn"}, "fixup": {"alpha": None, "skipinit_gain": 1.0, "std_conv": False},
}
"""Options that only mean something together with others (both builds get the partners)."""


def _value(opt: str, default: Any, tiny: dict[str, Any]) -> Any:
    """A valid value for ``opt`` that differs from the family's default (or from the tiny one)."""
    if opt == "widths":
        return tuple(2 * w for w in tiny["widths"])
    if opt == "depths":
        return (2, *tiny["depths"][1:])
    if isinstance(default, bool):
        return not default
    return {"num_classes": 7, "width": 2.0, "drop_rate": 0.3, "activation": "gelu_exact", "alpha": 0.5,
            "skipinit_gain": 0.25, "stochdepth_rate": 0.3, "se_ratio": 0.125, "expansion": 1.0,
            "group_width": 2, "channel_divisor": 8, "final_conv_mult": 3.0, "ws": "timm",
            "padding": "symmetric", "shortcut": "conv" if default == "avgpool_conv" else "avgpool_conv",
            "fc_init_std": 0.05, "in_chans": 1, "norm": "bn", "norm_order": "act_norm",
            "norm_kwargs": {"scale_init": 0.5}, "device": "meta", "dtype": torch.float64}[opt]


def _signature(model: nn.Module) -> tuple:
    """Everything an option can change: structure (repr shows every layer's settings), parameter and
    buffer names, shapes, dtypes, devices and values, and the model's data defaults."""
    tensors = tuple((k, tuple(v.shape), v.dtype, v.device.type,
                     None if v.is_meta else v.double().sum().item()) for k, v in model.state_dict().items())
    return str(model), tensors, repr(model.pretrained_cfg), repr(model.expected_var)


def _build(builder: Any, **kw: Any) -> nn.Module:
    torch.manual_seed(0)
    return builder(**kw)


@pytest.mark.parametrize("key", FAMILIES)
def test_every_accepted_option_changes_the_network(key):
    family, name, _, tiny = FAMILIES[key]
    defaults = NetOptions(**family.defaults)
    accepted = [o for o in OPTION_NAMES if o not in family.rejects]
    assert set(accepted) >= {"num_classes", "width", "widths", "depths", "alpha", "skipinit_gain", "std_conv",
                             "stochdepth_rate", "use_se", "se_ratio", "channel_divisor", "device", "dtype"}
    for opt in accepted:
        partners = PARTNERS.get(opt, {})
        base = {**tiny, **partners}
        value = _value(opt, getattr(defaults, opt) if opt not in tiny else tiny[opt], tiny)
        built = _build(normfree.create_model, name=name, **{**base, opt: value})
        assert _signature(built) != _signature(_build(normfree.create_model, name=name, **base)), \
            f"{name}: option {opt}={value!r} was ignored"


def test_shared_options_are_accepted_by_every_family():
    rejected_somewhere = set().union(*(f.rejects for f, *_ in FAMILIES.values()))
    shared = [o for o in OPTION_NAMES if o not in rejected_somewhere]
    assert len(shared) >= 20 and "norm" not in shared and "final_conv_mult" not in shared
    for _, name, builder, tiny in FAMILIES.values():
        kw = {**tiny, "use_se": True, "se_ratio": 0.5, "alpha": 0.3, "skipinit_gain": 1.0, "activation": "silu",
              "stochdepth_rate": 0.2, "stochdepth_scale": True, "drop_rate": 0.1, "channel_divisor": 8,
              "std_conv": True, "ws": "timm", "gamma_in_act": True, "padding": "symmetric",
              "shortcut": "avgpool_conv", "fc_init_std": 0.02, "in_chans": 2, "num_classes": 3,
              "device": "meta", "dtype": torch.float16}
        assert set(kw) | {"width", "widths", "depths"} >= set(shared)  # a new shared option is exercised here
        for m in (normfree.create_model(name, **kw), builder(**kw)):
            blocks = m.blocks()
            assert all(b.alpha == 0.3 and b.skipinit_gain == 1.0 and b.drop_path.scale_by_keep for b in blocks)
            assert all("se" in dict(b.branch.named_children()) for b in blocks) and m.drop.p == 0.1
            assert m.fc.out_features == 3 and m.fc.weight.dtype == torch.float16 and m.fc.weight.is_meta
            assert all(c.pad_type == "symmetric" for c in m.modules() if hasattr(c, "pad_type"))


@pytest.mark.parametrize("key", FAMILIES)
def test_rejected_options_name_themselves_and_the_reason(key):
    family, name, builder, tiny = FAMILIES[key]
    assert family.rejects, f"{family.label} rejects nothing"
    for opt, why in family.rejects.items():
        value = _value(opt, getattr(NetOptions(), opt), tiny)
        for build in (lambda **kw: normfree.create_model(name, **kw), builder):
            with pytest.raises(ModelOptionError, match=f"{opt}: {re.escape(why)}"):
                build(**tiny, **{opt: value})
    with pytest.raises(TypeError, match="not_an_option"):  # ModelOptionError is a TypeError
        builder(**tiny, not_an_option=1)


def test_options_that_would_do_nothing_are_rejected():
    with pytest.raises(ModelOptionError, match="se_ratio: no squeeze-excite without use_se=True"):
        resnet(26, se_ratio=0.5, device="meta")
    with pytest.raises(ModelOptionError, match="se_ratio"):
        nf_regnet("B0", use_se=False, se_ratio=0.5, device="meta")
    with pytest.raises(ModelOptionError, match="ws: plain convs"):
        nfnet("F0", std_conv=False, ws="timm", device="meta")
    for opt in ("alpha", "skipinit_gain"):  # the builder itself, not only the registered bn_* names
        with pytest.raises(ModelOptionError, match=f"{opt}: a normalized network has no"):
            resnet(26, norm="bn", device="meta", **{opt: 0.5})
    assert resnet(26, norm="bn", device="meta").blocks()[0].alpha == 1.0
