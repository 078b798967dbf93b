"""Backbone use without torchvision: features_only / out_indices maps, feature_info, and a backbone in
which every parameter reaches the loss (what DDP needs). torchvision itself: test_torchvision_client.py."""
from __future__ import annotations

import pytest
import torch

import normfree
from normfree.errors import ModelOptionError, ModelSpecError

from .tiny import TINY, tiny_regnet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_features_only_maps_match_forward_intermediates_and_feature_info():
    net = tiny_regnet().eval()
    feats = normfree.create_model("nf_regnet_b0", features_only=True, **TINY)
    feats.load_state_dict({k.replace("stages.", "stages_", 1): v for k, v in net.state_dict().items()
                           if not k.startswith("fc.")})
    x = torch.randn(2, 3, 64, 64)
    maps = feats.eval()(x)
    ref = net.forward_intermediates(x)
    assert len(maps) == len(ref) == len(feats.feature_info)
    for m, r in zip(maps, ref):
        torch.testing.assert_close(m, r, rtol=0, atol=0)
    assert feats.feature_info.channels() == [m.shape[1] for m in maps]
    assert feats.feature_info.reduction() == [64 // m.shape[-1] for m in maps]
    assert not any(n.startswith("fc") for n, _ in feats.named_parameters())


def test_features_only_out_indices_every_parameter_gets_a_gradient():
    """No classifier and nothing after the last requested map: DDP would find no unused parameter."""
    feats = normfree.create_model("nf_regnet_b0", features_only=True, out_indices=(1, 3), **TINY)
    assert feats.feature_info.reduction() == [4, 16]
    maps = feats(torch.randn(2, 3, 64, 64))
    assert [m.shape[1] for m in maps] == feats.feature_info.channels()
    sum(m.square().mean() for m in maps).backward()
    unused = [n for n, p in feats.named_parameters() if p.grad is None]
    assert unused == []


def test_feature_info_names_are_children_and_module_paths():
    """FeatureNet's names are direct children (BackboneWithFPN's return_layers); the full network's are
    module paths (create_feature_extractor's return_nodes)."""
    feats = normfree.create_model("nf_regnet_b0", features_only=True, out_indices=(1, 2, 4), **TINY)
    assert set(feats.feature_info.module_name()) <= {n for n, _ in feats.named_children()}
    net = tiny_regnet()
    assert {i["module"] for i in net.feature_info} <= {n for n, _ in net.named_modules()}


def test_out_indices_errors():
    with pytest.raises(ModelOptionError, match="features_only"):
        normfree.create_model("nf_regnet_b0", out_indices=(1,), **TINY)
    with pytest.raises(ModelSpecError, match="out_indices"):
        normfree.create_model("nf_regnet_b0", features_only=True, out_indices=(1, 9), **TINY)
