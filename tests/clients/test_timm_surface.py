"""timm's model surface and names on normfree models (no timm needed; the real timm round trip is in
test_timm_client.py)."""
from __future__ import annotations

import re

import pytest
import torch

import normfree
from normfree.errors import ModelOptionError
from normfree.train.optim import param_groups

from .tiny import TINY, tiny_regnet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_timm_head_split_and_cfg():
    model = tiny_regnet().eval()
    x = torch.randn(2, 3, 40, 40)
    feats = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(feats), model(x), rtol=0, atol=0)
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model.fc(pooled), model(x), rtol=0, atol=0)
    assert model.default_cfg is model.pretrained_cfg


def test_no_weight_decay_is_the_trainers_rule():
    model = tiny_regnet()
    plain = {id(p) for p in param_groups(model, 1e-4)[1]["params"]}
    names = model.no_weight_decay()
    assert {n for n, p in model.named_parameters() if id(p) in plain} == names
    assert any(n.endswith("skip_gain") for n in names) and not any(n.endswith(".weight") and "conv" in n
                                                                   for n in names)


@pytest.mark.parametrize("coarse", [False, True])
def test_group_matcher_covers_every_parameter_but_the_classifier(coarse):
    model = tiny_regnet()
    spec = model.group_matcher(coarse)
    patterns = [spec["stem"]] + [p for p, _ in spec["blocks"]]
    for name, _ in model.named_parameters():
        hit = any(re.match(p, name) for p in patterns)
        assert hit != name.startswith("fc."), name


def test_timm_names_are_aliases():
    torch.manual_seed(0)
    a = normfree.create_model("nf_regnet_b0", drop_path_rate=0.3, **TINY)
    assert [b.drop_path.rate for b in a.blocks()] == pytest.approx([0.3 * i / 4 for i in range(4)])
    with pytest.raises(ModelOptionError, match="pass one"):
        normfree.create_model("nf_regnet_b0", drop_path_rate=0.3, stochdepth_rate=0.1, **TINY)
    with pytest.raises(ModelOptionError, match="stochdepth_rate"):  # the typo hint names the right option
        normfree.create_model("nf_regnet_b0", stochdepth_rat=0.1, **TINY)
    tiny_f0 = {"widths": [256, 256, 256, 256], "depths": [1, 1, 1, 1], "num_classes": 3}
    torch.manual_seed(0)
    dm = normfree.create_model("dm_nfnet_f0", **tiny_f0)
    torch.manual_seed(0)
    ours = normfree.create_model("nfnet_f0", **tiny_f0)
    assert dm.model_name == "nfnet_f0"
    for (k, v), (k2, v2) in zip(dm.state_dict().items(), ours.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
