"""Backbone use: forward_intermediates / feature_info for every family."""
import math

import pytest
import torch

import normfree

MODELS = [("nf_resnet26", dict(width=0.25)), ("bn_resnet26", dict(width=0.25)), ("nf_cifar_resnet20", {}),
          ("nf_regnet_b0", dict(widths=(16, 32, 64, 128), depths=(1, 1, 1, 1))),
          ("nfnet_f0", dict(widths=(32, 64, 128, 128), depths=(1, 1, 1, 1), group_width=8))]


@pytest.mark.parametrize("name, kw", MODELS, ids=[m[0] for m in MODELS])
def test_intermediates_match_feature_info(name, kw):
    torch.manual_seed(0)
    model = normfree.create_model(name, num_classes=3, **kw).eval()
    x = torch.randn(2, 3, 45, 38)  # odd sizes: TF-SAME outputs are ceil(size / reduction)
    with torch.no_grad():
        feats = model.forward_intermediates(x)
        torch.testing.assert_close(feats[-1], model.forward_features(x), rtol=0, atol=0)
        # the classifier sees the global average of the features (eval: dropout off)
        torch.testing.assert_close(model(x), model.fc(feats[-1].mean(dim=(2, 3))))
    info = model.feature_info
    assert len(feats) == len(info) == len(model.stages) + 1
    assert info[-1]["num_chs"] == model.num_features and info[-1]["module"] == "final"
    for f, i in zip(feats, info):
        assert f.shape == (2, i["num_chs"], math.ceil(45 / i["reduction"]), math.ceil(38 / i["reduction"]))
        dict(model.named_modules())[i["module"]]  # names a real module
    assert [i["reduction"] for i in info] == sorted(i["reduction"] for i in info)


def test_intermediates_train_with_checkpointing_and_reject_bad_input():
    model = normfree.create_model("nf_resnet26", width=0.25, skipinit_gain=0.5).set_grad_checkpointing(True)
    feats = model.forward_intermediates(torch.randn(2, 3, 32, 32))
    sum(f.mean() for f in feats).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("fc."))
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(torch.randn(3, 32, 32))


def test_hooks_on_stages_fire_in_every_path():
    model = normfree.create_model("nf_resnet26", width=0.25, skipinit_gain=0.5)
    calls = []
    model.stages.register_forward_hook(lambda *_: calls.append("stages"))
    model.stages[1].register_forward_hook(lambda *_: calls.append("stage1"))
    x = torch.randn(2, 3, 32, 32)
    model(x)
    assert calls == ["stage1", "stages"]
    calls.clear()
    model.forward_intermediates(x)
    assert calls == ["stage1"]  # stages run one at a time here
