"""What a new user hit (issue 25): outputs inside inputs, the validate defaults of the usual good/ test/
ground_truth/ layout, the quickstart's backbone, and the smaller holes, each with the behaviour it must have."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import square_mask, texture, write_png

from defectgen.io.files import MARKER


def _checksums(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def clean(tmp_path, rng) -> Path:
    folder = tmp_path / "clean"
    for i in range(4):
        write_png(folder / f"{i}.png", texture(rng))
    return folder


# ---- 1. outputs inside inputs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["synthesize", "masks", "train-ddpm"])
def test_an_output_folder_inside_an_input_is_refused_and_nothing_is_written(clean, run_cli, verb):
    before = _checksums(clean)
    args = {
        "synthesize": ["synthesize", "--model", "draem", "--normals", clean, "--n", "2", "--out", clean / "sub"],
        "masks": ["masks", "--like", clean, "--n", "2", "--out", clean / "sub"],
        "train-ddpm": ["train-ddpm", "--normals", clean, "--preset", "tiny", "--steps", "1", "--resolution", "32",
                       "--out", clean / "sub"],
    }[verb]
    code, _, err = run_cli(*args)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) <= 2 and lines[0].startswith("error:") and "inside the input" in err, err
    assert _checksums(clean) == before and not (clean / "sub").exists()


def test_the_workspace_default_inside_the_normals_folder_is_refused(clean, run_cli, monkeypatch):
    monkeypatch.chdir(clean)  # the user works inside the normals folder: synth/draem-1 would land in it
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", ".", "--n", "2")
    assert code == 2 and "inside the input" in err, err
    assert not (clean / "synth").exists()


def test_readers_skip_defectgen_output_folders_inside_an_input_tree(clean, tmp_path, run_cli):
    # an output folder someone moved into the normals folder by hand (defectgen itself refuses to write there)
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", clean, "--n", "2", "--out",
                           tmp_path / "s")
    assert code == 0, err
    (tmp_path / "s").rename(clean / "sub")
    assert (clean / "sub" / MARKER).is_file()
    code, out, err = run_cli("inspect", clean, "--json", "--sheet-n", "0")
    assert code == 0, err
    assert json.loads(out)["images"] == 4  # the 4 normals, not the set's images, masks and contact sheet
    assert "skipped 1 defectgen output folder" in err and "sub" in err
    # a folder without the marker is the user's own and is read
    for marker in (clean / "sub").glob(".defectgen-*.json"):  # MARKER and the set's settings file
        marker.unlink()
    code, out, _ = run_cli("inspect", clean, "--json", "--sheet-n", "0")
    assert json.loads(out)["images"] > 4


def test_inspect_refuses_a_contact_sheet_inside_the_dataset(clean, run_cli, monkeypatch):
    monkeypatch.chdir(clean)
    code, _, err = run_cli("inspect", ".")
    assert code == 2 and "contact sheet" in err, err
    assert not list(clean.glob("inspect_*.png"))


# ---- 4. validate finds test/ beside the normals folder ----------------------------------------------------------

def _side_by_side(root: Path, rng) -> None:
    for i in range(3):
        write_png(root / "good" / f"{i}.png", texture(rng))
        write_png(root / "test" / "good" / f"{i}.png", texture(rng))
    for i in range(2):
        write_png(root / "test" / "scratch" / f"{i}.png", texture(rng))
        write_png(root / "ground_truth" / "scratch" / f"{i}_mask.png", square_mask(32, 32, 4, 5, 8))


def test_find_test_beside_the_normals_folder_and_mvtec_train_good(tmp_path, rng, mvtec_dir):
    from defectgen.workspace import find_test_beside

    _side_by_side(tmp_path / "data", rng)
    found, why = find_test_beside(tmp_path / "data" / "good")
    assert found.resolve() == (tmp_path / "data").resolve() and "beside the normals folder good" in why
    found, why = find_test_beside(mvtec_dir / "train" / "good")
    assert found.resolve() == mvtec_dir.resolve() and "train/good" in why
    write_png(tmp_path / "lonely" / "good" / "0.png", texture(rng))
    assert find_test_beside(tmp_path / "lonely" / "good") == (None, "")


def test_validate_as_typed_with_good_test_ground_truth_side_by_side(tmp_path, rng, run_cli, monkeypatch):
    _side_by_side(tmp_path / "data", rng)
    monkeypatch.chdir(tmp_path / "data")
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", "good", "--n", "2")
    assert code == 0, err
    code, _, err = run_cli("validate", "--detector", "exdd", "--resolution", "32", "--overlays", "0")
    assert code == 0, err
    assert "using test set test (test/ beside the normals folder good/)" in err, err
    # the report lands in the workspace beside test/: the folders validate reads are test/ and ground_truth/
    assert (tmp_path / "data" / "reports" / "exdd-1" / "report.json").is_file()


# ---- 6. the quickstart tries a pretrained backbone before `tiny` ------------------------------------------------

def test_first_available_backbone_takes_the_first_that_loads(tmp_path):
    from defectgen.detect.backbone import DEFAULT_BACKBONE, first_available, tiny_model

    tiny_model().save_pretrained(tmp_path / "bb")  # a transformers folder, as a downloaded model is
    assert first_available(["", str(tmp_path / "missing"), str(tmp_path / "bb"), "tiny"]) == str(tmp_path / "bb")
    # offline with an empty cache (conftest sets HF_HUB_OFFLINE): the hub default cannot be had
    assert first_available([str(tmp_path / "missing"), DEFAULT_BACKBONE]) is None


def test_the_quickstart_asks_for_the_default_backbone_before_tiny():
    script = (Path(__file__).parents[1] / "examples" / "quickstart.sh").read_text()
    assert "first_available" in script and "DEFAULT_BACKBONE" in script
    assert script.index("first_available") < script.index("backbone: $backbone")


# ---- 7. smaller holes -------------------------------------------------------------------------------------------

def test_train_ddpm_refuses_labeled_images_whose_masks_are_all_empty(tmp_path, rng, run_cli):
    labeled = tmp_path / "labeled" / "scratch"
    for i in range(2):
        write_png(labeled / f"{i}.png", texture(rng))
        write_png(labeled / f"{i}_mask.png", np.zeros((32, 32), np.uint8))
    code, _, err = run_cli("train-ddpm", "--labeled", tmp_path / "labeled", "--preset", "tiny", "--steps", "1",
                           "--resolution", "32", "--out", tmp_path / "run")
    assert code == 2 and "empty mask" in err, err
    assert err.count("warning:") == 2 and "0_mask.png" in err and "1_mask.png" in err
    assert not (tmp_path / "run").exists()


def test_a_filter_that_empties_the_set_is_an_error_unless_allowed(clean, tmp_path, run_cli):
    out = tmp_path / "set"
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", clean, "--n", "3", "--out", out)
    assert code == 0, err
    before = _checksums(out)
    code, _, err = run_cli("filter", out, "--filter", "change", "--min-change", "0.99")
    assert code == 2 and "reject all 3" in err and "--allow-empty" in err, err
    assert _checksums(out) == before  # nothing moved, the sheet untouched
    code, _, err = run_cli("filter", out, "--filter", "change", "--min-change", "0.99", "--allow-empty")
    assert code == 0, err
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.min() < 255  # redrawn (it says the filters kept nothing), not deleted
    assert (out / "contact_sheet.png").read_bytes() != before["contact_sheet.png"]
    assert json.loads((out / "annotations.json").read_text())["images"] == []


def test_inspect_reports_every_bit_depth_present(tmp_path, rng, run_cli):
    folder = tmp_path / "mixed"
    for i in range(3):
        write_png(folder / f"{i}.png", texture(rng))
    write_png(folder / "deep.png", (texture(rng).astype(np.uint16) * 257))
    code, out, err = run_cli("inspect", folder, "--json", "--sheet-n", "0")
    assert code == 0, err
    assert json.loads(out)["bit_depth"] == {"8": 3, "16": 1}


@pytest.mark.parametrize(("verb", "typed", "suggested"), [("train-ddpm", "33", "try 32"),
                                                          ("train-ddpm", "30", "try 32"),
                                                          ("validate", "33x90", "try 32x96")])
def test_a_bad_resolution_suggests_a_value_the_verb_accepts(mvtec_dir, tmp_path, run_cli, verb, typed, suggested):
    args = (["train-ddpm", "--normals", mvtec_dir / "train" / "good", "--preset", "tiny"] if verb == "train-ddpm"
            else ["validate", "--detector", "exdd", "--train", mvtec_dir, "--test", mvtec_dir, "--synthetic", "none"])
    code, _, err = run_cli(*args, "--resolution", typed, "--out", tmp_path / "o")
    assert code == 2 and suggested in err, err
    if verb == "train-ddpm":
        value = suggested.split()[-1]
        from defectgen.io.resolution import square_side

        assert square_side(value, 4, "the DDPM") == int(value)  # what it suggests, the verb takes


def test_each_verb_says_what_resolution_means_there_and_what_it_picks():
    import typer

    from defectgen.cli import app

    commands = typer.main.get_command(app).commands
    helps = {name: next(p.help for p in commands[name].params if p.name == "resolution")
             for name in ("train-ddpm", "train-ldm", "validate", "inspect")}
    assert "training window" in helps["train-ddpm"] and "default:" in helps["train-ddpm"]
    assert "anomaly" not in helps["train-ddpm"].lower() and "anomaly" not in helps["train-ldm"].lower()
    assert "default:" in helps["train-ldm"]
    assert "Detector input" in helps["validate"] and "Anomaly maps" in helps["validate"]


def test_help_examples_keep_their_line_breaks():
    import typer

    from defectgen.cli import app

    for name, command in typer.main.get_command(app).commands.items():
        for line in (command.help or "").splitlines():
            assert "     --" not in line.strip(), f"{name}: a continuation was joined into {line.strip()!r}"


def test_a_local_looking_model_path_that_does_not_exist_is_one_line(clean, tmp_path, run_cli, monkeypatch):
    (tmp_path / "runs").mkdir()
    code, _, err = run_cli("synthesize", "--model", "runs/nosuch", "--normals", clean, "--n", "1", "--out",
                           tmp_path / "s")
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "no model folder runs/nosuch" in lines[0], err


def test_the_workspace_leaves_no_lock_file(clean, tmp_path, run_cli):
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", clean, "--n", "1")
    assert code == 0, err
    assert (tmp_path / "defectgen-workspace.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")]


def test_train_ddpm_takes_on_bad_skip(clean, tmp_path, run_cli):
    (clean / "broken.png").write_bytes(b"not a png")
    code, _, err = run_cli("train-ddpm", "--normals", clean, "--preset", "tiny", "--steps", "1", "--resolution",
                           "32", "--out", tmp_path / "r1")
    assert code == 2 and "broken.png" in err
    code, _, err = run_cli("train-ddpm", "--normals", clean, "--preset", "tiny", "--steps", "1", "--resolution",
                           "32", "--batch-size", "2", "--on-bad", "skip", "--out", tmp_path / "r2")
    assert code == 0, err
    assert "broken.png" in err and "warning" in err
