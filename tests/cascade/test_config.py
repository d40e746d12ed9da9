import pytest

from cascade.config import load_config, save_gate
from cascade.errors import ConfigError
from cascade.gate import GateRule


def test_load_default_shape(tiny_config):
    cfg = load_config(tiny_config)
    assert cfg.threshold == 0.6 and cfg.rule is GateRule.P_NORMAL and cfg.normal_label == "normal"
    assert cfg.stage1_dir.name == "stage1" and cfg.stage2_dir.name == "stage2"


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "m").mkdir()
    p = tmp_path / "c.toml"
    p.write_text('[stage1]\nmodel_dir = "m/a"\n[stage2]\nmodel_dir = "m/b"\n[gate]\n')
    cfg = load_config(p)
    assert cfg.stage1_dir == (tmp_path / "m" / "a").resolve() and cfg.threshold == 0.6


def test_save_gate_keeps_comments_and_other_tables(tmp_path, tiny_config):
    p = tmp_path / "c.toml"
    p.write_text(tiny_config.read_text())
    save_gate(p, 0.4321, "top1")
    text = p.read_text()
    assert "# my comment" in text and 'keep = "me"' in text
    cfg = load_config(p)
    assert cfg.threshold == pytest.approx(0.4321) and cfg.rule is GateRule.TOP1
    assert not list(tmp_path.glob(".c.toml.*"))  # no temp file left behind


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not = [toml", "not valid TOML"),
        ('[stage1]\nmodel_dir = "a"\n', r"no \[stage2\]"),
        ('[stage1]\n[stage2]\nmodel_dir = "b"\n[gate]\n', "needs model_dir"),
        ('[stage1]\nmodel_dir = "a"\n[stage2]\nmodel_dir = "b"\n[gate]\nthreshold = 1.5\n', r"\[0, 1\]"),
        ('[stage1]\nmodel_dir = "a"\n[stage2]\nmodel_dir = "b"\n[gate]\nrule = "vote"\n', "unknown gate rule"),
        # these were accepted: true as a gate of 1.0, a quoted "0.5", a folder named "3"
        ('[stage1]\nmodel_dir = "a"\n[stage2]\nmodel_dir = "b"\n[gate]\nthreshold = true\n', "must be a number"),
        ('[stage1]\nmodel_dir = "a"\n[stage2]\nmodel_dir = "b"\n[gate]\nthreshold = "0.5"\n', "no quotes"),
        ('[stage1]\nmodel_dir = 3\n[stage2]\nmodel_dir = "b"\n[gate]\n', r"needs model_dir.*a string"),
        ('[stage1]\nmodel_dir = "a"\n[stage2]\nmodel_dir = "b"\n[gate]\nthreshold = nan\n', r"\[0, 1\]"),
    ],
)
def test_bad_configs(tmp_path, text, match):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_missing_config_and_bad_threshold_on_save(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        save_gate(tmp_path / "nope.toml", 0.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        save_gate(tmp_path / "nope.toml", 2.0)
