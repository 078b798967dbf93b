"""timm itself: from_timm / to_timm round trips against timm's own NormFreeNet (logits equal, every
tensor back where timm keeps it), full-size layouts of every mapped name, and the reasoned refusals.
Needs timm, so it runs in the timm venv (``make test-timm``)."""
from __future__ import annotations

import pytest
import torch

import normfree
from normfree.convert.timm import TIMM_MODELS, from_timm, timm_model, to_timm
from normfree.errors import ModelSpecError

pytestmark = [pytest.mark.timm, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def timm():
    """Imported here, not at module level: the main venv deselects these tests without importing timm."""
    import timm

    return timm

# Reduced instances: timm's NfCfg fields as create_model overrides, and ours. The NFNet stems are
# fixed at 16-32-64-(widths[0]/2) channels, so their first width stays 256.
TINY = {
    "dm_nfnet_f0": (dict(channels=(256, 64, 128, 128), depths=(1, 1, 1, 1), group_size=16, num_features=256),
                    dict(widths=(256, 64, 128, 128), depths=(1, 1, 1, 1), group_width=16)),
    "nfnet_l0": (dict(channels=(256, 64, 128, 128), depths=(1, 1, 1, 1), group_size=16, num_features=192),
                 dict(widths=(256, 64, 128, 128), depths=(1, 1, 1, 1), group_width=16)),
    "nf_resnet26": (dict(channels=(32, 64, 128, 256), stem_chs=8), dict(width=0.5)),
    "nf_resnet50": (dict(channels=(32, 64, 128, 256), stem_chs=8), dict(width=0.5)),
    "nf_regnet_b1": (dict(channels=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_features=1280 * 128 // 440),
                     dict(widths=(16, 32, 64, 128), depths=(1, 1, 1, 1))),
}
# fp32, the same operations in another order (timm standardizes with F.batch_norm): ~1e-7 measured.
TOL = 1e-5


def _timm_pair(timm, name: str):
    """(timm's tiny model with gains, biases and skip gains moved off their init, ours from its weights)."""
    theirs, ours = TINY[name]
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False, num_classes=7, **theirs).eval()
    with torch.no_grad():
        for p in ref.parameters():
            if p.ndim <= 1 or p.shape[1:] == (1, 1, 1):
                p.add_(0.1 * torch.randn_like(p))
    return ref, from_timm(ref.state_dict(), name, num_classes=7, **ours).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", TINY)
def test_from_timm_to_timm_round_trip(timm, name):
    ref, model = _timm_pair(timm, name)
    x = torch.randn(2, 3, 45, 51)  # odd sizes: padding and the average-pool shortcut's ragged edge
    with torch.no_grad():
        assert _rel(model(x), ref(x)) < TOL
    back = to_timm(model, name)
    state = ref.state_dict()
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)  # every tensor where timm keeps it


@pytest.mark.parametrize("name", TINY)
def test_to_timm_carries_skip_gains(timm, name):
    """A trained model's skip gains reach timm: as timm's skipinit_gain (dm_nfnet), folded into the last
    conv where timm's blocks have none, or refused where the branch ends in SE (nfnet_l0)."""
    ref, model = _timm_pair(timm, name)
    with torch.no_grad():
        for b in model.blocks():
            b.skip_gain.fill_(0.7)
    if name == "nfnet_l0":
        with pytest.raises(ModelSpecError, match="cannot be folded"):
            to_timm(model, name)
        return
    ref.load_state_dict(to_timm(model, name))
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert _rel(ref(x), model(x)) < TOL


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_full_size_timm_models_load_strictly(timm, name):
    """Every mapped name at full size (on the meta device: shapes only): timm's own state dict loads
    strictly into ours (from_timm refuses any missing, unexpected or mis-shaped tensor)."""
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False)
        model = from_timm(ref.state_dict(), name)
    extra = 0 if name.startswith("dm_nfnet_") else len(list(model.blocks()))  # our skip gains (timm: none)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters()) + extra


def test_refusals_name_the_reason(timm):
    with torch.device("meta"):
        eca = timm.create_model("eca_nfnet_l0", pretrained=False).state_dict()
    with pytest.raises(ModelSpecError, match="ECA attention"):
        from_timm(eca, "eca_nfnet_l0")
    with pytest.raises(ModelSpecError, match="timm's structure"):  # official structure, other numbers
        to_timm(normfree.create_model("nf_resnet26", width=0.25), "nf_resnet26")
    with pytest.raises(ModelSpecError, match=r"options \['padding'\] differ"):
        to_timm(timm_model("nf_resnet26", width=0.25, padding="same"), "nf_resnet26")
