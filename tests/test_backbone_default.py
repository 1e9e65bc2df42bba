"""The detectors' default backbone is a pretrained one; offline without it, one line names the setting; the
random `tiny` backbone warns that its metrics are meaningless, on stderr and in the report."""

from __future__ import annotations

import json

import pytest

from defectgen.detect.backbone import DEFAULT_BACKBONE, resolve_backbone


def test_default_is_pretrained_unless_configured(monkeypatch):
    monkeypatch.delenv("DEFECTGEN_BACKBONE")
    assert resolve_backbone(None) == DEFAULT_BACKBONE != "tiny"
    monkeypatch.setenv("DEFECTGEN_BACKBONE", "some/folder")
    assert resolve_backbone(None) == "some/folder"
    assert resolve_backbone("tiny") == "tiny"  # a flag wins over the environment


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("DEFECTGEN_BACKBONE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # nothing cached
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_offline_without_a_configured_backbone_is_one_line_and_writes_nothing(mvtec_dir, tmp_path, run_cli,
                                                                                offline_empty_cache):
    out = tmp_path / "report"
    code, _, err = run_cli("validate", "--detector", "exdd", "--train", mvtec_dir, "--test", mvtec_dir,
                           "--synthetic", "none", "--resolution", "32", "--out", out)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "--backbone" in lines[0] and "DEFECTGEN_BACKBONE" in lines[0], err
    assert DEFAULT_BACKBONE in lines[0] and "`" not in lines[0]
    assert not out.exists()


def test_backbone_set_once_in_the_workspace_config(mvtec_dir, tmp_path, run_cli, offline_empty_cache):
    (tmp_path / "defectgen.yaml").write_text("backbone: tiny\n")  # the top level: every verb with --backbone
    code, _, err = run_cli("validate", "--detector", "exdd", "--train", mvtec_dir, "--test", mvtec_dir,
                           "--synthetic", "none", "--resolution", "32", "--overlays", "0", "--out", tmp_path / "r")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["config"]["backbone"] == "tiny"
    (tmp_path / "defectgen.yaml").write_text("backbone: tiny\nbogus-option: 3\n")
    code, _, err = run_cli("runs")
    assert code == 2 and "bogus-option" in err


def test_tiny_backbone_warns_on_stderr_and_in_the_report(mvtec_dir, tmp_path, run_cli):
    code, _, err = run_cli("validate", "--detector", "exdd", "--train", mvtec_dir, "--test", mvtec_dir,
                           "--synthetic", "none", "--resolution", "32", "--overlays", "0", "--backbone", "tiny",
                           "--out", tmp_path / "r")
    assert code == 0, err
    assert "warning:" in err and "random" in err and "--backbone" in err, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["config"]["backbone_pretrained"] is False
    assert "random weights" in (tmp_path / "r" / "report.md").read_text()


def test_pretrained_folder_has_no_warning(mvtec_dir, tmp_path, run_cli):
    from defectgen.detect.backbone import tiny_model

    tiny_model().save_pretrained(tmp_path / "bb")  # a transformers folder, as a downloaded model is
    code, _, err = run_cli("validate", "--detector", "exdd", "--train", mvtec_dir, "--test", mvtec_dir,
                           "--synthetic", "none", "--resolution", "32", "--overlays", "0", "--backbone",
                           tmp_path / "bb", "--out", tmp_path / "r")
    assert code == 0, err
    assert "warning:" not in err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["config"]["backbone_pretrained"] is True
    assert "random weights" not in (tmp_path / "r" / "report.md").read_text()
