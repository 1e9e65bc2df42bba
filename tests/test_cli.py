"""The command line as a user meets it: help, masks, inspect, output safety, one-line errors with exit 2."""

from __future__ import annotations

import json

import numpy as np

from defectgen.io import read_mask
from tests.conftest import square_mask, texture, write_png


def test_every_verb_has_help_with_every_flag_and_an_example(run_cli, monkeypatch):
    import typer

    from defectgen.cli import app

    commands = typer.main.get_command(app).commands
    assert {"train-ddpm", "train-ldm", "synthesize", "filter", "masks", "validate", "inspect", "runs"} <= set(commands)
    monkeypatch.setenv("COLUMNS", "200")  # flags are not wrapped
    code, out, _ = run_cli("--help")
    assert code == 0
    for verb, command in commands.items():
        assert verb in out
        code, text, err = run_cli(verb, "--help")
        assert code == 0, err
        assert f"defectgen {verb}" in text  # an example line
        flat = text.replace("│", " ")
        for param in command.params:
            if param.param_type_name == "option":
                for flag in param.opts + param.secondary_opts:
                    assert flag in flat, (verb, flag)


def test_help_prints_no_type_after_flags(run_cli, monkeypatch):
    """Every verb is a cli.common.Command (the app a Group): without that class typer's rich help prints <bool>
    after --overwrite, --json, --help and the other value-less flags."""
    import typer

    from defectgen.cli import app
    from defectgen.cli.common import Command, Group

    group = typer.main.get_command(app)
    assert isinstance(group, Group)
    monkeypatch.setenv("COLUMNS", "200")
    for verb, command in group.commands.items():
        assert isinstance(command, Command), verb
        code, text, err = run_cli(verb, "--help")
        assert code == 0, err
        assert "<bool>" not in text, verb
    code, text, _ = run_cli("--help")
    assert code == 0 and "--debug" in text and "<bool>" not in text


def test_shared_options_keep_each_verbs_default():
    import typer

    from defectgen.cli import app

    commands = typer.main.get_command(app).commands
    defaults = {verb: {p.name: p.default for p in commands[verb].params} for verb in commands}
    assert defaults["train-ddpm"]["steps"] == 20000 and defaults["train-ldm"]["steps"] == 5000
    assert defaults["train-ddpm"]["checkpoint_every"] == 1000 and defaults["train-ldm"]["checkpoint_every"] == 500
    assert defaults["filter"]["filters"] == "change" and defaults["synthesize"]["filters"] is None
    assert defaults["filter"]["tau0"] == defaults["synthesize"]["tau0"] == 0.5


def test_library_errors_show_the_verbs_flags(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)  # an empty workspace
    code, _, err = run_cli("train-ddpm", "--normals", tmp_path, "--resume")
    assert code == 2 and "--resume needs --out" in err and "`" not in err, err


def test_masks_like_folder_follows_image_sizes_and_is_reproducible(tmp_path, rng, run_cli):
    write_png(tmp_path / "good" / "a.png", texture(rng, 40, 60))
    write_png(tmp_path / "good" / "b.png", texture(rng, 50, 30))
    for out in ("m1", "m2"):
        code, _, err = run_cli("masks", "--kind", "bbox", "--n", "4", "--like", tmp_path / "good", "--seed", "9",
                               "--out", tmp_path / out)
        assert code == 0, err
    shapes = [read_mask(tmp_path / "m1" / "masks" / f"{i:06d}.png").shape for i in range(4)]
    assert shapes == [(40, 60), (50, 30), (40, 60), (50, 30)]
    for i in range(4):
        assert np.array_equal(read_mask(tmp_path / "m1" / "masks" / f"{i:06d}.png"),
                              read_mask(tmp_path / "m2" / "masks" / f"{i:06d}.png"))


def test_masks_like_labeled_uses_box_statistics(tmp_path, rng, run_cli):
    for i in range(3):
        write_png(tmp_path / "lab" / "dent" / f"{i}.png", texture(rng, 40, 40))
        write_png(tmp_path / "lab" / "dent" / f"{i}_mask.png", square_mask(40, 40, 2, 2, 10))
    code, _, err = run_cli("masks", "--kind", "bbox", "--n", "6", "--size", "80x80", "--like-labeled",
                           tmp_path / "lab", "--out", tmp_path / "m")
    assert code == 0, err
    for i in range(6):
        ys, xs = np.nonzero(read_mask(tmp_path / "m" / "masks" / f"{i:06d}.png"))
        assert 16 <= xs.max() - xs.min() + 1 <= 24  # 25% of the side, +-15%


def test_output_folder_is_not_overwritten_without_flag(tmp_path, run_cli):
    out = tmp_path / "m"
    assert run_cli("masks", "--n", "2", "--size", "32x32", "--out", out)[0] == 0
    before = (out / "annotations.json").read_bytes()
    code, _, err = run_cli("masks", "--n", "3", "--size", "32x32", "--seed", "1", "--out", out)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert (out / "annotations.json").read_bytes() == before  # nothing already written is lost
    assert run_cli("masks", "--n", "3", "--size", "32x32", "--seed", "1", "--out", out, "--overwrite")[0] == 0
    assert len(list((out / "masks").iterdir())) == 3


def test_inspect_table_json_and_contact_sheet(mvtec_dir, tmp_path, run_cli):
    sheet = tmp_path / "sheet.png"
    code, out, err = run_cli("inspect", mvtec_dir, "--json", "--sheet", sheet)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["format"] == "mvtec" and summary["images"] == 10
    assert summary["classes"] == {"good": 6, "scratch": 4}
    assert summary["splits"] == {"train": 4, "test": 4, "labeled": 2}
    assert summary["masks"] == 4 and summary["channels"] == {"1": 10}
    assert abs(summary["mask_area_fraction"]["max"] - 36 / 1024) < 1e-5
    from defectgen.io import read_image

    picture = read_image(sheet)
    assert picture.shape[2] == 3
    red = (picture[:, :, 0] > 200) & (picture[:, :, 1] < 80)
    assert red.sum() > 20  # the mask outlines are drawn
    code, out, _ = run_cli("inspect", mvtec_dir, "--sheet", sheet)
    assert code == 0 and "scratch" in out and "mvtec" in out


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, rng, run_cli):
    write_png(tmp_path / "good" / "a.png", texture(rng, 20, 20))
    (tmp_path / "bad" ).mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    write_png(tmp_path / "pairs" / "x" / "p.png", texture(rng, 20, 20))
    write_png(tmp_path / "pairs" / "x" / "p_mask.png", square_mask(20, 24, 1, 1, 3))
    cases = [
        (("inspect", tmp_path / "missing"), "missing"),
        (("inspect", tmp_path / "bad"), "broken.jpg"),
        (("inspect", tmp_path / "pairs"), "p_mask.png"),
        (("masks", "--like", tmp_path / "missing", "--n", "1", "--out", tmp_path / "o"), "missing"),
    ]
    for args, name in cases:
        code, out, err = run_cli(*args)
        assert code == 2, (args, out, err)
        lines = [line for line in err.strip().splitlines() if line]
        assert len(lines) == 1 and lines[0].startswith("error:") and name in lines[0], err
        assert "Traceback" not in err
    # --on-bad skip reads what it can and says how much it skipped
    write_png(tmp_path / "bad" / "fine.png", texture(rng, 20, 20))
    code, out, _ = run_cli("inspect", tmp_path / "bad", "--on-bad", "skip", "--sheet-n", "0")
    assert code == 0 and "skipped 1" in out


def test_debug_lets_the_exception_through(tmp_path, run_cli):
    import pytest

    from defectgen.errors import DefectgenError

    with pytest.raises(DefectgenError, match="missing"):  # Python then prints the full traceback
        run_cli("--debug", "inspect", tmp_path / "missing")
