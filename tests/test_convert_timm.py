"""timm checkpoints: logits parity with fixtures made by timm itself, key mapping on synthetic full-size
state dicts laid out as timm's NormFreeNet, and full-size parity when timm is installed (optional).

The fixtures ``tests/fixtures/timm_*.npz`` were written by ``tools/make_timm_parity_fixtures.py`` from
timm's own ``NormFreeNet`` (reduced widths, perturbed gains/biases; see tests/fixtures/README.md);
nothing here needs timm. The synthetic layout below is written from timm's ``timm/models/nfnet.py``
(NormFreeNet, NormFreeBlock, create_stem, DownsampleAvg, SEModule): key names, conv gains shaped
(out, 1, 1, 1), SE as 1×1 convs, channels from ``make_divisible``; its parameter totals are checked
against timm's published counts.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from normfree.convert import from_timm
from normfree.convert.timm import timm_model
from normfree.models.regnet import make_divisible
from normfree.profile import count_params


def _conv(sd, key, cin, cout, k, groups=1):
    sd[f"{key}.weight"] = torch.randn(cout, cin // groups, k, k)
    sd[f"{key}.gain"] = 1 + 0.1 * torch.randn(cout, 1, 1, 1)
    sd[f"{key}.bias"] = 0.1 * torch.randn(cout)


def _se(sd, key, ch, rd):
    sd[f"{key}.fc1.weight"], sd[f"{key}.fc1.bias"] = torch.randn(rd, ch, 1, 1), torch.randn(rd)
    sd[f"{key}.fc2.weight"], sd[f"{key}.fc2.bias"] = torch.randn(ch, rd, 1, 1), torch.randn(ch)


def timm_layout(kind, depths, channels, num_classes=1000, nfnet_group=128):
    """A random state dict with timm's NormFreeNet keys and shapes for dm_nfnet / nf_resnet / nf_regnet."""
    sd = {}
    if kind == "dm_nfnet":
        stem_chs, group, ratio, reg = channels[0] // 2, nfnet_group, 0.5, False  # 128 for F models
        for i, (cin, cout) in enumerate(zip((3, 16, 32, 64), (16, 32, 64, stem_chs))):
            _conv(sd, f"stem.conv{i + 1}", cin, cout, 3)
    elif kind == "nf_resnet":
        stem_chs, group, ratio, reg = 64, None, 0.25, False
        _conv(sd, "stem.conv", 3, 64, 7)
    else:  # nf_regnet: width_factor 0.75, ch_div 8
        stem_chs, group, ratio, reg = make_divisible(channels[0] * 0.75, 8), 8, 2.25, True
        head = make_divisible(0.75 * (1280 * channels[-1] // 440), 8)
        channels = [make_divisible(c * 0.75, 8) for c in channels]
        _conv(sd, "stem.conv", 3, stem_chs, 3)
    prev = stem_chs
    for s, depth in enumerate(depths):
        for b in range(depth):
            out, key = channels[s], f"stages.{s}.{b}"
            mid = make_divisible((prev * (1.0 if s == b == 0 else ratio)) if reg else out * ratio, 8)
            groups = mid // group if group else 1
            mid = group * groups if group else mid
            if prev != out or b == 0 and (s > 0 or kind == "nf_regnet"):
                _conv(sd, f"{key}.downsample.conv", prev, out, 1)
            _conv(sd, f"{key}.conv1", prev, mid, 1)
            _conv(sd, f"{key}.conv2", mid, mid, 3, groups)
            if kind == "dm_nfnet":
                _conv(sd, f"{key}.conv2b", mid, mid, 3, groups)
            if kind == "nf_regnet":
                _se(sd, f"{key}.attn", mid, make_divisible(mid * 0.5, 8, round_limit=0.0))
            _conv(sd, f"{key}.conv3", mid, out, 1)
            if kind == "dm_nfnet":
                _se(sd, f"{key}.attn_last", out, make_divisible(out * 0.5, 8, round_limit=0.0))
                sd[f"{key}.skipinit_gain"] = torch.rand(())
            prev = out
    features = {"dm_nfnet": 2 * prev, "nf_resnet": 0, "nf_regnet": head if reg else 0}[kind]
    if features:
        _conv(sd, "final_conv", prev, features, 1)
    sd["head.fc.weight"] = 0.01 * torch.randn(num_classes, features or prev)
    sd["head.fc.bias"] = torch.randn(num_classes)
    return sd


FULL = {  # timm name: (layout, depths, channels, timm's published parameter count in M)
    "dm_nfnet_f0": ("dm_nfnet", (1, 2, 6, 3), (256, 512, 1536, 1536), 71.49),
    "nf_resnet50": ("nf_resnet", (3, 4, 6, 3), (256, 512, 1024, 2048), 25.56),
    "nf_regnet_b1": ("nf_regnet", (2, 4, 7, 7), (48, 104, 208, 440), 10.22),
}


@pytest.mark.parametrize("name", FULL)
def test_full_size_timm_layouts_load_strictly(name):
    kind, depths, channels, params_m = FULL[name]
    with torch.device("meta"):
        sd = timm_layout(kind, depths, channels)
        assert round(sum(v.numel() for v in sd.values()) / 1e6, 2) == params_m  # timm's own count
        model = from_timm(sd, name)
    extra_skip = 0 if kind == "dm_nfnet" else sum(depths)  # our scalar skip gains (fixed to 1)
    assert count_params(model) == sum(v.numel() for v in sd.values()) + extra_skip


TINY = {"dm_nfnet_f0": ("dm_nfnet", dict(widths=(32, 64, 128, 128), group_width=8)),
        "nf_regnet_b1": ("nf_regnet", dict(widths=(16, 32, 64, 128)))}


@pytest.mark.parametrize("name", TINY)
def test_values_land_where_timm_keeps_them(name):
    kind, kw = TINY[name]
    torch.manual_seed(0)
    depths = (1, 2, 1, 1)
    sd = timm_layout(kind, depths, kw["widths"], num_classes=5, nfnet_group=kw.get("group_width"))
    model = from_timm(sd, name, depths=depths, num_classes=5, **kw)
    ours = model.state_dict()
    assert torch.equal(ours["stages.1.1.branch.conv0.weight"], sd["stages.1.1.conv1.weight"])
    assert torch.equal(ours["stages.1.0.shortcut.conv.gain"], sd["stages.1.0.downsample.conv.gain"].flatten())
    se, attn = ("branch.se", "attn_last") if kind == "dm_nfnet" else ("branch.se", "attn")
    assert torch.equal(ours[f"stages.2.0.{se}.fc0.weight"], sd[f"stages.2.0.{attn}.fc1.weight"][:, :, 0, 0])
    assert torch.equal(ours["fc.weight"], sd["head.fc.weight"])
    if kind == "dm_nfnet":
        assert torch.equal(ours["stem.conv3.bias"], sd["stem.conv4.bias"])
        assert torch.equal(ours["stages.3.0.skip_gain"], sd["stages.3.0.skipinit_gain"])
        assert ours["stages.3.0.branch.conv1b.weight"].equal(sd["stages.3.0.conv2b.weight"])
    else:
        assert all(b.skip_gain.item() == 1.0 for b in model.blocks())
    x = torch.randn(1, 3, 40, 40)
    assert torch.isfinite(model.eval()(x)).all()


def test_wrong_checkpoint_is_refused_with_a_list():
    sd = timm_layout("nf_regnet", (1, 2, 1, 1), (16, 32, 64, 128), num_classes=5)
    sd["stages.0.0.extra.weight"] = torch.zeros(1)
    del sd["stages.1.1.conv2.bias"]
    with pytest.raises(ValueError) as err:
        from_timm(sd, "nf_regnet_b1", depths=(1, 2, 1, 1), widths=(16, 32, 64, 128), num_classes=5)
    assert "missing: stages.1.1.branch.conv1.bias" in str(err.value)
    assert "unexpected: stages.0.0.extra.weight" in str(err.value)
    with pytest.raises(ValueError, match="no timm mapping"):
        from_timm(sd, "nf_regnet_b7")


def test_timm_options_are_explicit():
    with torch.device("meta"):
        f0 = timm_model("dm_nfnet_f0")
        r50 = timm_model("nf_resnet50")
    assert f0.final.act.name == "gelu_exact" and f0.final.act.gamma > 1.7  # γ in the activation
    assert f0.stem.conv0.ws == "timm" and f0.stem.conv0.gamma == 1.0 and f0.stem.conv0.eps == 1e-5
    assert r50.stem.conv.gamma > 1.7 and r50.final.gamma == 1.0  # γ folded into convs instead
    assert r50.stem.conv.pad_type == "symmetric" and r50.stages[1][0].shortcut.pool is not None
    assert r50.pretrained_cfg["crop_pct"] == 0.94 and r50.input_size == 288
    assert r50.pretrained_cfg["input_size"] == (3, 256, 256) and f0.pretrained_cfg["crop_mode"] == "squash"


@pytest.mark.timm
@pytest.mark.parametrize("name", ["dm_nfnet_f0", "nf_resnet50", "nf_regnet_b1"])
def test_logits_match_timm(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval()
    for p in ref.parameters():  # move gains/biases/skip gains off their init so they all matter
        if p.ndim <= 1 or p.shape[1:] == (1, 1, 1):
            p.data.add_(0.1 * torch.randn_like(p))
    model = from_timm(ref.state_dict(), name).eval()
    x = torch.randn(2, 3, 97, 97)
    with torch.no_grad():
        a, b = model(x), ref(x)
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-4


FIXTURES = Path(__file__).parent / "fixtures"
# Our counterparts of the reduced timm instances in tools/make_timm_parity_fixtures.py (7 classes).
TIMM_TINY = {
    "dm_nfnet_f0": dict(widths=(256, 64, 128, 128), depths=(1, 2, 1, 1), group_width=16),
    "nf_resnet50": dict(width=0.5),  # real depths (3, 4, 6, 3), widths and stem ×1/8
    "nf_regnet_b1": dict(widths=(16, 32, 64, 128), depths=(1, 2, 1, 1)),
}


def _timm_fixture(name, **options):
    """(our logits, timm's logits) for the fixture of ``name``; ``options`` override our timm options."""
    data = np.load(FIXTURES / f"timm_{name}.npz")
    state = {k.split("/", 1)[1]: torch.from_numpy(data[k]) for k in data.files if k.startswith("state_dict/")}
    model = from_timm(state, name, num_classes=7, **TIMM_TINY[name], **options).eval()
    with torch.no_grad():
        return model(torch.from_numpy(data["x"])).numpy(), data["logits"]


def _rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", TIMM_TINY)
def test_logits_match_timm_fixture_fp32(name):
    ours, ref = _timm_fixture(name)
    assert _rel_err(ours, ref) < 1e-4, f"max relative error {_rel_err(ours, ref):.2e}"


@pytest.mark.parametrize("name, option", [
    ("dm_nfnet_f0", dict(activation="gelu")), ("dm_nfnet_f0", dict(gamma_in_act=False)),
    ("dm_nfnet_f0", dict(padding="symmetric")), ("dm_nfnet_f0", dict(ws="official")),
    ("nf_resnet50", dict(padding="same")), ("nf_resnet50", dict(shortcut="conv")),
    ("nf_regnet_b1", dict(padding="same")), ("nf_regnet_b1", dict(ws="official")),
])
def test_each_timm_option_is_needed(name, option):
    """The fixtures are sensitive to every compatibility option: the official choice breaks parity."""
    ours, ref = _timm_fixture(name, **option)
    assert _rel_err(ours, ref) > 1e-4
