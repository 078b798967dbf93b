import pytest

import normfree
from normfree.cli import main


def test_list_models_patterns():
    names = normfree.list_models()
    assert {"nf_resnet50", "bn_resnet50", "nf_cifar_resnet20", "nf_wrn28_10"} <= set(names)
    assert normfree.list_models("nf_resnet*")[:2] == ["nf_resnet26", "nf_resnet50"]
    assert all("wrn" in n for n in normfree.list_models("wrn"))


def test_unknown_model_names_closest_matches():
    with pytest.raises(ValueError, match="nf_resnet50"):
        normfree.create_model("nf_resnet5O")


def test_unknown_keyword_is_named():
    with pytest.raises(TypeError, match="'widht'.*did you mean 'width'"):
        normfree.create_model("nf_cifar_resnet20", widht=2)
    with pytest.raises(TypeError, match="fixed by the name"):
        normfree.create_model("nf_resnet50", depth=101)


def test_bad_values_raise_clearly():
    with pytest.raises(ValueError, match="activation"):
        normfree.create_model("nf_cifar_resnet20", activation="nope")
    with pytest.raises(ValueError, match="num_classes"):
        normfree.create_model("nf_cifar_resnet20", num_classes=-1)


def test_cli_models_table(capsys):
    assert main(["models", "cifar_resnet20"]) == 0
    out = capsys.readouterr().out
    assert "nf_cifar_resnet20" in out and "0.27" in out and "bn_cifar_resnet20" in out


def test_cli_errors_exit_2(capsys):
    assert main(["models", "no_such_model"]) == 2
    assert "no model matches" in capsys.readouterr().err


def test_cli_demo(capsys, tmp_path):
    # The README's main job: model table, then the SPP story figure (reduced width and size here).
    assert main(["demo", "--pattern", "wrn16", "--width", "0.25", "--image-size", "64", "--batch-size", "4",
                 "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nf_wrn16_4" in out and "nf_resnet50:std_conv=False,width=0.25 (16 blocks" in out
    assert {p.name for p in tmp_path.iterdir()} == {"spp.png", "spp.json", "spp.csv"}
