"""NF-RegNet and NFNet: official parameter counts, multiply-adds and structure (meta device: instant)."""
import pytest
import torch

import normfree
from normfree.layers import GAMMAS, AvgPoolSame, GammaAct, ScaledStdConv2d
from normfree.profile import count_macs, count_params

# Official counts (nf_architecture.md §3/§4; NFNet F0–F6 equal the DeepMind README).
REGNET_PARAMS_M = {"b0": 8.60, "b1": 10.02, "b2": 13.79, "b3": 18.14, "b4": 29.32, "b5": 48.71,
                   "b6": 70.05, "b7": 101.74, "b8": 142.31}
NFNET_PARAMS_M = {"f0": 71.49, "f1": 132.63, "f2": 193.78, "f3": 254.92, "f4": 316.07, "f5": 377.21,
                  "f6": 438.36, "f7": 499.50, "f0plus": 118.82}
# DeepMind count_conv_flops MACs (G). The official counter divides H, W by each stride as floats, so at
# sizes not divisible by 32 (B2 @272, B5 @456, ...) count_macs follows it, not the real output shapes.
REGNET_MACS_G = {("b0", 224): 0.444, ("b0", 192): 0.327, ("b1", 256): 0.734, ("b1", 224): 0.563,
                 ("b3", 320): 1.999, ("b3", 288): 1.621, ("b4", 384): 4.467, ("b4", 320): 3.107,
                 ("b5", 384): 7.496, ("b6", 448): 14.183, ("b7", 512): 27.283, ("b8", 672): 63.719,
                 ("b2", 272): 1.099, ("b5", 456): 10.561, ("b6", 528): 19.687, ("b7", 600): 37.448}
NFNET_MACS_G = {"f0": 12.38, "f1": 35.54, "f2": 62.59, "f3": 114.76, "f4": 215.24}


@pytest.mark.parametrize("v,params", REGNET_PARAMS_M.items())
def test_nf_regnet_params_match_official(meta_model, v, params):
    assert round(count_params(meta_model(f"nf_regnet_{v}")) / 1e6, 2) == params


@pytest.mark.parametrize("v,params", NFNET_PARAMS_M.items())
def test_nfnet_params_match_official(meta_model, v, params):
    assert round(count_params(meta_model(f"nfnet_{v}")) / 1e6, 2) == params


@pytest.mark.parametrize("v,size", REGNET_MACS_G)
def test_nf_regnet_macs_match_official(meta_model, v, size):
    assert round(count_macs(meta_model(f"nf_regnet_{v}"), size) / 1e9, 3) == REGNET_MACS_G[v, size]


@pytest.mark.parametrize("v,macs", NFNET_MACS_G.items())
def test_nfnet_macs_at_test_resolution_match_official(meta_model, v, macs):
    m = meta_model(f"nfnet_{v}")
    assert round(count_macs(m, m.pretrained_cfg["test_input_size"][-1]) / 1e9, 2) == macs


def test_every_variant_is_registered_with_its_resolutions(meta_model):
    names = normfree.list_models("nf_regnet_b*") + normfree.list_models("nfnet_f*")
    assert len(names) == 9 + 16
    m = meta_model("nfnet_f3plus")
    cfg = m.pretrained_cfg
    assert (cfg["input_size"], cfg["test_input_size"]) == ((3, 320, 320), (3, 416, 416))
    assert (m.input_size, m.drop_rate) == (416, 0.4)
    assert cfg["eval_policy"] == "resize_crop_32" and cfg["crop_mode"] == "squash"
    assert cfg["crop_pct"] == pytest.approx(416 / 448, abs=1e-4)
    b5 = meta_model("nf_regnet_b5")
    cfg = b5.pretrained_cfg
    assert (cfg["input_size"], cfg["test_input_size"]) == ((3, 384, 384), (3, 456, 456))
    assert (b5.input_size, b5.drop_rate) == (456, 0.4)
    assert cfg["eval_policy"] == "crop_resize" and cfg["interpolation"] == "bicubic"
    assert meta_model("nf_regnet_b0", drop_rate=0.0).drop_rate == 0.0


def test_nf_regnet_b0_structure(meta_model):
    m = meta_model("nf_regnet_b0")
    assert m.stem.conv.out_channels == 36 and m.stem.conv.stride == (2, 2)
    assert [s[0].out_ch for s in m.stages] == [36, 78, 156, 330]  # ×0.75, no rounding
    first = m.stages[0][0]
    assert first.branch.conv0.out_channels == 32  # expansion 1 → 36 → 4 groups of 8
    assert [s[0].branch.conv0.out_channels for s in m.stages[1:]] == [80, 168, 344]
    assert [s[1].branch.conv0.out_channels for s in m.stages[1:]] == [168, 344, 736]
    for stage in m.stages:
        blk = stage[0]
        assert blk.stride == 2 and isinstance(blk.shortcut.pool, AvgPoolSame)
        assert blk.branch.conv1.groups == blk.branch.conv1.out_channels // 8
        names = list(blk.branch._modules)
        assert names == ["conv0", "act1", "conv1", "se", "act2", "conv2"]  # SE after the 3×3
        assert blk.branch.se.gain == 2.0
        assert blk.branch.se.fc0.out_features == int(blk.branch.conv1.out_channels * 0.5)
    assert m.final.conv.out_channels == 960 and m.num_features == 960
    assert isinstance(m.final.act, GammaAct) and m.final.act.gamma == GAMMAS["silu"]
    assert meta_model("nf_regnet_b8").final.conv.out_channels == 2112


def test_nf_regnet_classifier_is_zero_initialized():
    m = normfree.create_model("nf_regnet_b0", widths=(16, 32, 64, 128), depths=(1, 1, 1, 1))
    assert torch.count_nonzero(m.fc.weight) == 0


def test_nfnet_f0_structure(meta_model):
    m = meta_model("nfnet_f0")
    stem = [c for c in m.stem if isinstance(c, ScaledStdConv2d)]
    assert [(c.out_channels, c.stride[0]) for c in stem] == [(16, 2), (32, 1), (64, 1), (128, 2)]
    assert isinstance(m.stem[-1], ScaledStdConv2d)  # no activation after the last stem conv
    assert [s[0].branch.conv0.out_channels for s in m.stages] == [128, 256, 768, 768]
    assert [s[0].branch.conv1.groups for s in m.stages] == [1, 2, 6, 6]
    assert [s[0].stride for s in m.stages] == [1, 2, 2, 2]
    assert isinstance(m.stages[0][0].shortcut, ScaledStdConv2d)  # stride 1: plain 1×1
    blk = m.stages[2][3]
    assert list(blk.branch._modules) == ["conv0", "act1", "conv1", "act2", "conv1b", "act3", "conv2",
                                         "se"]
    assert blk.branch.se.fc0.out_features == 768
    assert m.final.conv.out_channels == 3072
    assert m.final.act.name == "gelu" and meta_model("nfnet_f0", activation="gelu_exact").final.act.name \
        == "gelu_exact"
    rates = [b.drop_path.rate for b in m.blocks()]
    assert rates == pytest.approx([0.25 * i / 12 for i in range(12)])


def test_nfnet_classifier_init_std():
    torch.manual_seed(0)
    m = normfree.create_model("nfnet_f0", widths=(32, 64, 128, 128), depths=(1, 1, 1, 1),
                              group_width=8, num_classes=4000)
    assert m.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_tiny_instances_run_on_odd_sizes(padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 37, 45)
    for name, kw in [("nf_regnet_b0", dict(widths=(16, 32, 64, 128))),
                     ("nfnet_f0", dict(widths=(32, 64, 128, 128), group_width=8))]:
        m = normfree.create_model(name, depths=(1, 2, 1, 1), num_classes=3, padding=padding, **kw).eval()
        with torch.no_grad():
            out = m(x)
        assert out.shape == (2, 3) and torch.isfinite(out).all()
        assert m.expected_var == pytest.approx([1.04, 1.04, 1.08, 1.04, 1.04])


def test_bad_variant_and_group_width_give_clear_errors():
    with pytest.raises(ValueError, match="unknown NFNet variant"):
        normfree.models.nfnet("F9")
    with pytest.raises(ValueError, match="group width"):
        normfree.create_model("nfnet_f0", widths=(32, 64, 128, 128))
