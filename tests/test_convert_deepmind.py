"""DeepMind (JAX/Haiku) parity: our models with the official parameters give the official logits.

Fixtures were produced by tools/make_dm_parity_fixtures.py from the official code (see
tests/fixtures/README.md); nothing here needs JAX.
"""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import normfree
from normfree.convert import from_deepmind
from normfree.convert.deepmind import read_params

FIXTURES = Path(__file__).parent / "fixtures"
# Our counterparts of the tiny official instances built by the generator.
TINY = {
    "nf_resnet": ("nf_resnet50", dict(depth=(1, 2, 1, 1), width=1)),
    "nf_regnet": ("nf_regnet_b0", dict(widths=(16, 32, 64, 128), depths=(1, 2, 1, 1))),
    "nfnet": ("nfnet_f0", dict(widths=(32, 64, 128, 128), depths=(1, 2, 1, 1), group_width=8)),
}


def _tiny(family):
    name, kw = TINY[family]
    if name == "nf_resnet50":  # depth is fixed by the registered name; build via the family builder
        model = normfree.models.resnet(**kw, num_classes=7)
        model.model_name = name
        return model
    return normfree.create_model(name, num_classes=7, **kw)


@pytest.mark.parametrize("family", TINY)
def test_logits_match_official_fp32(family):
    io = np.load(FIXTURES / f"dm_{family}.io.npz")
    model = from_deepmind(_tiny(family), FIXTURES / f"dm_{family}.params.npz").eval()
    x = torch.from_numpy(io["x"]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        ours = model(x).numpy()
    ref = io["logits"]
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, f"max relative error {rel:.2e}"


def test_mismatches_are_listed_not_skipped():
    params = read_params(FIXTURES / "dm_nfnet.params.npz")
    flat = {f"NFNet/{k}": v for k, v in params.items()}
    del flat["NFNet/nf_block_2/conv1b/w"]
    flat["NFNet/nf_block_2/conv9/w"] = np.zeros(3)
    flat["NFNet/final_conv/gain"] = np.zeros(5)
    with pytest.raises(ValueError) as err:
        from_deepmind(_tiny("nfnet"), flat)
    msg = str(err.value)
    assert "missing: stages.1.1.branch.conv1b.weight" in msg
    assert "unexpected: nf_block_2/conv9/w" in msg
    assert "final.conv.gain (5,) vs model (256,)" in msg
    with pytest.raises(ValueError, match="do not fit nf_regnet_b0"):
        from_deepmind(_tiny("nf_regnet"), FIXTURES / "dm_nfnet.params.npz")


def test_nested_haiku_mapping_and_pickle_refusal(tmp_path):
    flat = read_params(FIXTURES / "dm_nf_regnet.params.npz")
    nested = {}
    for key, value in flat.items():
        module, param = key.rsplit("/", 1)
        nested.setdefault("NF_RegNet/~/" + module.replace("/", "/~/"), {})[param] = value
    a = from_deepmind(_tiny("nf_regnet"), nested)
    b = from_deepmind(_tiny("nf_regnet"), FIXTURES / "dm_nf_regnet.params.npz")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    pickled = tmp_path / "F0_haiku.npz"  # the official release files are pickles despite the suffix
    pickled.write_bytes(pickle.dumps(nested))
    with pytest.raises(ValueError, match="allow_pickle"):
        from_deepmind(_tiny("nf_regnet"), pickled)
    c = from_deepmind(_tiny("nf_regnet"), pickled, allow_pickle=True)
    assert all(torch.equal(c.state_dict()[k], v) for k, v in b.state_dict().items())


def test_bn_models_are_refused():
    with pytest.raises(ValueError, match="no DeepMind layout"):
        from_deepmind("bn_cifar_resnet20", {"r/x/w": np.zeros(1)})


def _to_haiku(model):
    """Inverse mapping (ours → Haiku layout), to round-trip a model through the CLI."""
    from normfree.convert.deepmind import haiku_names

    own = model.state_dict()
    out = {}
    for hk_key, (key, layout) in haiku_names(model).items():
        v = own[key].numpy()
        out[f"Net/{hk_key}"] = v.transpose(2, 3, 1, 0) if layout == "hwio" else v.T if layout == "io" else v
    return out


def test_cli_convert_round_trip(tmp_path, capsys):
    from safetensors.torch import load_file

    from normfree.cli import main

    torch.manual_seed(0)
    src = normfree.create_model("nf_cifar_resnet20")
    for p in src.parameters():
        p.data.normal_()
    np.savez(tmp_path / "p.npz", **_to_haiku(src))
    out = tmp_path / "m.safetensors"
    assert main(["convert", "--from", "deepmind", str(tmp_path / "p.npz"), "--model",
                 "nf_cifar_resnet20", "--out", str(out)]) == 0
    loaded = load_file(out)
    assert loaded.keys() == src.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in src.state_dict().items())
    assert main(["convert", "--from", "deepmind", str(tmp_path / "p.npz"), "--model",
                 "nf_cifar_resnet56", "--out", str(out)]) == 2
    assert "do not fit nf_cifar_resnet56: 132 missing" in capsys.readouterr().err
    torch.save({}, tmp_path / "x.pth")
    assert main(["convert", "--from", "timm", str(tmp_path / "x.pth"), "--model", "nf_resnet50",
                 "--out", str(out)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err


def test_params_from_several_networks_are_refused():
    flat = {"NFNet/~/stem_conv0/w": np.zeros((3, 3, 3, 16)), "Other/~/stem_conv0/w": np.zeros((3, 3, 3, 16))}
    with pytest.raises(ValueError, match="several root modules"):
        read_params(flat)
    assert list(read_params({"AnyName/~/stem_conv0/w": np.zeros(2)})) == ["stem_conv0/w"]  # root dropped


def test_strict_loading_refuses_tensors_the_model_lacks():
    from normfree.convert.common import load_strict

    model = normfree.create_model("nf_cifar_resnet20", width=0.25)
    tensors = {**model.state_dict(), "stages.9.0.extra": torch.zeros(2)}
    with pytest.raises(ValueError, match="1 unexpected: stages.9.0.extra"):
        load_strict(model, tensors, source="test")
