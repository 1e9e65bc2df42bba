"""A user's files are never lost: paths from files stay inside their folder, --overwrite clears only defectgen's own
folders, failed and interrupted runs leave nothing half-made, and outputs are readable by others."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import texture, write_png


def checksums(root: Path) -> dict[str, str]:
    """Every file (and symbolic link) under root, by path relative to root."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def victim(tmp_path, rng) -> Path:
    """A folder of someone's precious files beside the workspace."""
    folder = tmp_path / "victim"
    write_png(folder / "precious.png", texture(rng))
    write_png(folder / "precious_mask.png", texture(rng))
    (folder / "notes.txt").write_text("do not touch")
    return folder


@pytest.fixture
def draem_set(mvtec_dir, tmp_path, run_cli) -> Path:
    out = tmp_path / "set"
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "3",
                           "--out", out)
    assert code == 0, err
    return out


def one_line_error(code: int, err: str) -> None:
    """Exit 2 and the error in one line (after any progress lines the run printed first), no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error:") and sum(line.startswith("error:") for line in lines) == 1, err
    assert "Traceback" not in err, err


def edit_first_image(set_dir: Path, **fields) -> None:
    path = set_dir / "annotations.json"
    data = json.loads(path.read_text())
    data["images"][0].update(fields)
    path.write_text(json.dumps(data))


# ---- issue: paths taken from files stay inside the set -------------------------------------------------------------

@pytest.mark.parametrize("how", ["traversal", "absolute", "mask-traversal"])
def test_filter_refuses_coco_paths_that_leave_the_set(draem_set, victim, tmp_path, run_cli, how):
    if how == "traversal":
        edit_first_image(draem_set, file_name="../victim/precious.png")
    elif how == "absolute":
        edit_first_image(draem_set, file_name=str(victim / "precious.png"))
    else:
        edit_first_image(draem_set, mask_file="../victim/precious_mask.png")
    outside, inside = checksums(victim), checksums(draem_set)
    code, _, err = run_cli("filter", draem_set, "--filter", "change", "--min-change", "1.0")  # would reject all
    one_line_error(code, err)
    assert "annotations.json" in err and ("outside" in err or "not a path relative" in err)
    assert checksums(victim) == outside
    assert checksums(draem_set) == inside  # refused before touching anything


def test_filter_refuses_a_symlink_in_images_that_points_outside(draem_set, victim, run_cli):
    (draem_set / "images" / "000001.png").unlink()
    (draem_set / "images" / "000001.png").symlink_to(victim / "precious.png")
    outside, inside = checksums(victim), checksums(draem_set)
    code, _, err = run_cli("filter", draem_set, "--filter", "change", "--min-change", "1.0")
    one_line_error(code, err)
    assert "000001.png" in err
    assert checksums(victim) == outside and checksums(draem_set) == inside


def test_filter_run_twice_keeps_the_first_runs_rejects(draem_set, mvtec_dir, run_cli):
    code, _, err = run_cli("filter", draem_set, "--filter", "change", "--min-change", "1.0", "--allow-empty")
    assert code == 0, err  # rejects all 3, as asked
    first = checksums(draem_set / "rejected" / "images")
    assert len(first) == 3
    # refill the set (same settings, new samples 0 and 1) and reject those too: the first rejects must survive
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "2",
                           "--out", draem_set, "--resume")
    assert code == 0, err
    code, _, err = run_cli("filter", draem_set, "--filter", "change", "--min-change", "1.0", "--allow-empty")
    assert code == 0, err
    after = checksums(draem_set / "rejected" / "images")
    assert len(after) == 5 and all(after[k] == v for k, v in first.items())
    assert len(json.loads((draem_set / "rejected" / "scores.json").read_text())) == 5


def test_filter_renumbers_kept_samples_without_clobbering(draem_set, run_cli):
    """Kept samples are renamed to 000000.. even when a kept file's new name is another kept file's old name."""
    data = json.loads((draem_set / "annotations.json").read_text())
    before = {im["id"]: hashlib.sha256((draem_set / im["file_name"]).read_bytes()).hexdigest()
              for im in data["images"]}
    # swap the ids so that id order is the reverse of name order
    ids = [im["id"] for im in data["images"]]
    for im, new in zip(data["images"], reversed(ids), strict=True):
        im["id"] = new + 100
    for a in data["annotations"]:
        a["image_id"] = len(ids) + 1 - a["image_id"] + 100
    (draem_set / "annotations.json").write_text(json.dumps(data))
    code, _, err = run_cli("filter", draem_set, "--filter", "change", "--min-change", "0.0")  # keeps all
    assert code == 0, err
    kept = sorted(p.name for p in (draem_set / "images").iterdir())
    assert kept == ["000000.png", "000001.png", "000002.png"]
    after = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (draem_set / "images").iterdir())
    assert after == sorted(before.values())  # every image is still there, none overwritten


def test_resume_refuses_a_symlink_in_images_that_points_outside(draem_set, victim, mvtec_dir, run_cli):
    (draem_set / "images" / "000001.png").unlink()
    (draem_set / "images" / "000001.png").symlink_to(victim / "precious.png")
    outside = checksums(victim)
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "3",
                           "--out", draem_set, "--resume")
    one_line_error(code, err)
    assert "000001.png" in err and "outside" in err
    assert checksums(victim) == outside


def test_overwrite_replaces_a_defectgen_folder_without_following_its_symlinks(draem_set, victim, mvtec_dir, run_cli):
    (draem_set / "images" / "link.png").symlink_to(victim / "precious.png")
    (draem_set / "linked-folder").symlink_to(victim)
    outside = checksums(victim)
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "2",
                           "--out", draem_set, "--overwrite")
    assert code == 0, err
    assert checksums(victim) == outside
    assert sorted(p.name for p in (draem_set / "images").iterdir()) == ["000000.png", "000001.png"]


def test_resume_with_a_smaller_n_is_refused_and_changes_nothing(draem_set, mvtec_dir, run_cli):
    before = checksums(draem_set)
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "2",
                           "--out", draem_set, "--resume")
    one_line_error(code, err)
    assert "000002.png" in err and "--n 3" in err
    assert checksums(draem_set) == before
    # a larger --n extends the set and annotates every sample
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "4",
                           "--out", draem_set, "--resume")
    assert code == 0, err
    assert len(json.loads((draem_set / "annotations.json").read_text())["images"]) == 4


def test_masks_refuses_a_size_that_cannot_fit_at_once(tmp_path, run_cli):
    started = time.perf_counter()
    code, _, err = run_cli("masks", "--n", "1", "--size", "100000x100000", "--out", tmp_path / "m")
    one_line_error(code, err)
    assert "100000x100000" in err
    assert time.perf_counter() - started < 30  # refused up front, not after trying (a bound, not a benchmark)
    assert not (tmp_path / "m").exists()


# ---- issue: --overwrite never deletes what defectgen did not make ------------------------------------------------

def _synth(run_cli, normals, out, *extra):
    return run_cli("synthesize", "--model", "draem", "--normals", normals, "--n", "2", "--out", out, *extra)


def test_overwrite_refuses_the_normals_folder(mvtec_dir, run_cli):
    good = mvtec_dir / "train" / "good"
    before = checksums(mvtec_dir)
    code, _, err = _synth(run_cli, good, good, "--overwrite")
    one_line_error(code, err)
    assert checksums(mvtec_dir) == before


def test_overwrite_refuses_a_folder_that_contains_the_inputs(mvtec_dir, run_cli):
    before = checksums(mvtec_dir)
    code, _, err = _synth(run_cli, mvtec_dir / "train" / "good", mvtec_dir, "--overwrite")
    one_line_error(code, err)
    assert "contains the input" in err
    assert checksums(mvtec_dir) == before


def test_overwrite_refuses_the_parent_of_the_working_folder(tmp_path, mvtec_dir, monkeypatch, run_cli):
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "a.txt").write_text("mine")
    (tmp_path / ".defectgen-output.json").write_text("{}")  # even a (planted) marker does not make it clearable
    monkeypatch.chdir(work)
    before = checksums(tmp_path)
    code, _, err = _synth(run_cli, mvtec_dir / "train" / "good", Path(".."), "--overwrite")
    one_line_error(code, err)
    assert checksums(tmp_path) == before


def test_overwrite_refuses_a_folder_holding_the_model(tmp_path, mvtec_dir, run_cli):
    (tmp_path / "models" / "ddpm").mkdir(parents=True)
    (tmp_path / "models" / "ddpm" / "defectgen.json").write_text(json.dumps({"kind": "ddpm"}))
    (tmp_path / "models" / ".defectgen-output.json").write_text("{}")
    before = checksums(tmp_path / "models")
    code, _, err = run_cli("synthesize", "--model", tmp_path / "models" / "ddpm", "--normals",
                           mvtec_dir / "train" / "good", "--n", "1", "--out", tmp_path / "models", "--overwrite")
    assert code == 2, err
    assert checksums(tmp_path / "models") == before


@pytest.mark.parametrize("verb", ["masks", "train-ddpm", "train-ldm", "synthesize", "validate"])
def test_overwrite_refuses_a_folder_of_other_files_in_every_verb(verb, tmp_path, mvtec_dir, run_cli):
    out = tmp_path / "theirs"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "thesis.txt").write_text("years of work")
    (out / "photo.png").write_bytes(b"not really a png")
    before = checksums(out)
    good = mvtec_dir / "train" / "good"
    args = {
        "masks": ["masks", "--n", "1", "--size", "32x32"],
        "train-ddpm": ["train-ddpm", "--normals", good, "--preset", "tiny", "--steps", "1"],
        "train-ldm": ["train-ldm", "--labeled", mvtec_dir, "--steps", "1", "--vae-steps", "1"],
        "synthesize": ["synthesize", "--model", "draem", "--normals", good, "--n", "1"],
        "validate": ["validate", "--detector", "exdd", "--train", mvtec_dir, "--test", mvtec_dir, "--resolution",
                     "32", "--baselines", "none", "--synthetic", "none"],
    }[verb]
    code, _, err = run_cli(*args, "--out", out, "--overwrite")
    one_line_error(code, err)
    assert "not made by defectgen" in err
    assert checksums(out) == before


def test_overwrite_still_replaces_a_defectgen_folder(tmp_path, run_cli):
    out = tmp_path / "m"
    assert run_cli("masks", "--n", "3", "--size", "32x32", "--out", out)[0] == 0
    assert (out / ".defectgen-output.json").is_file()
    code, _, err = run_cli("masks", "--n", "1", "--size", "16x16", "--out", out, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000000.png"]


def test_resume_refuses_a_folder_defectgen_did_not_make(tmp_path, mvtec_dir, run_cli):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / ".keep.tmp").write_text("a user's file that looks like a temporary")
    before = checksums(out)
    code, _, err = _synth(run_cli, mvtec_dir / "train" / "good", out, "--resume")
    one_line_error(code, err)
    assert checksums(out) == before


def test_failed_synthesize_before_the_first_sample_leaves_nothing(tmp_path, mvtec_dir, rng, run_cli):
    write_png(tmp_path / "wrong-masks" / "a.png", texture(rng, 8, 8))  # not the normals' size
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "2",
                           "--masks", tmp_path / "wrong-masks", "--out", tmp_path / "out" / "set")
    one_line_error(code, err)
    assert not (tmp_path / "out").exists()  # nor the parent it created
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "2",
                           "--out", tmp_path / "out" / "set")
    assert code == 0, err  # the corrected rerun is not refused as "not empty"


def test_interrupted_training_before_any_checkpoint_leaves_no_folder(tmp_path, mvtec_dir):
    from defectgen.diffusion.train_ddpm import train_ddpm
    from defectgen.diffusion.training import Interrupted, TrainConfig

    def stop(step, loss):
        raise KeyboardInterrupt

    cfg = TrainConfig(steps=5, batch_size=2, checkpoint_every=0, progress=False, save_on_interrupt=False)
    with pytest.raises(Interrupted, match="nothing saved"):
        train_ddpm(tmp_path / "runs" / "ddpm-1", mvtec_dir / "train" / "good", preset="tiny", resolution=32,
                   config=cfg, callback=stop, log=lambda m: None)
    assert not (tmp_path / "runs").exists()


def test_files_get_the_mode_the_umask_gives(tmp_path, run_cli):
    old = os.umask(0o022)
    try:
        assert run_cli("masks", "--n", "1", "--size", "16x16", "--out", tmp_path / "m")[0] == 0
    finally:
        os.umask(old)
    for name in ("annotations.json", "masks/000000.png", ".defectgen-output.json"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o644, name


# ---- checkpoints, Ctrl-C, config ----------------------------------------------------------------------------------

def _train(tmp_path, mvtec_dir, steps, **kw):
    from defectgen.diffusion.train_ddpm import train_ddpm
    from defectgen.diffusion.training import TrainConfig

    cfg = TrainConfig(steps=steps, batch_size=2, checkpoint_every=2, progress=False, ema=False, warmup_steps=0)
    return train_ddpm(tmp_path / "run", mvtec_dir / "train" / "good", preset="tiny", resolution=32, config=cfg,
                      log=kw.get("log", lambda m: None), resume=kw.get("resume", False))


def test_resume_falls_back_from_a_truncated_optimizer_file(tmp_path, mvtec_dir):
    from defectgen.diffusion.training import checkpoints

    _train(tmp_path, mvtec_dir, 4)
    found = checkpoints(tmp_path / "run")
    assert [s for s, _ in found] == [2, 4]
    newest = found[-1][1] / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    messages = []
    _train(tmp_path, mvtec_dir, 4, resume=True, log=messages.append)
    text = "\n".join(messages)
    assert "optimizer.safetensors" in text and "warning" in text and "resuming from" in text and "step 2" in text


def test_resume_with_only_damaged_checkpoints_names_the_file(tmp_path, mvtec_dir, run_cli):
    from defectgen.diffusion.training import checkpoints

    _train(tmp_path, mvtec_dir, 2)
    (only,) = [p for _, p in checkpoints(tmp_path / "run")]
    (only / "optimizer.safetensors").write_bytes(b"PK\x03\x04 truncated")
    code, _, err = run_cli("train-ddpm", "--normals", mvtec_dir / "train" / "good", "--preset", "tiny",
                           "--resolution", "32", "--steps", "3", "--batch-size", "2", "--out", tmp_path / "run",
                           "--resume")
    one_line_error(code, err)
    assert "optimizer.safetensors" in err


def test_sigint_stops_training_with_130_and_resume_completes_it(tmp_path, mvtec_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "defectgen.cli", "train-ddpm", "--normals", str(mvtec_dir / "train" / "good"),
            "--preset", "tiny", "--resolution", "32", "--batch-size", "2", "--checkpoint-every", "5", "--out",
            str(tmp_path / "run")]
    proc = subprocess.Popen([*args, "--steps", "100000"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "run" / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "resume with --resume" in err
    step = int(err.split("interrupted at step ")[1].split()[0])
    assert step >= 5
    # resume finishes the run: a few more steps than were done
    resumed = subprocess.run([*args, "--steps", str(step + 3), "--resume"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {step}" in resumed.stderr
    assert (tmp_path / "run" / "defectgen.json").is_file()


def test_config_typos_name_the_file_and_the_key(tmp_path, mvtec_dir, run_cli):
    good = mvtec_dir / "train" / "good"
    (tmp_path / "defectgen.yaml").write_text("train-ddpm:\n  presett: tiny\n")
    code, _, err = run_cli("train-ddpm", "--normals", good, "--out", tmp_path / "r")
    one_line_error(code, err)
    assert "defectgen.yaml" in err and "presett" in err and "preset" in err
    (tmp_path / "defectgen.yaml").write_text("train-ddpm:\n  steps: many\n")
    code, _, err = run_cli("train-ddpm", "--normals", good, "--out", tmp_path / "r")
    one_line_error(code, err)
    assert "defectgen.yaml" in err and "steps" in err and "many" in err
    (tmp_path / "defectgen.yaml").write_text("trian-ddpm:\n  steps: 3\n")
    code, _, err = run_cli("runs")
    one_line_error(code, err)
    assert "trian-ddpm" in err
    assert not (tmp_path / "r").exists()


def test_config_accepts_flag_names(tmp_path, run_cli):
    (tmp_path / "defectgen.yaml").write_text("masks:\n  out: from-config\n  size: 16x16\n  n: 2\n")
    code, _, err = run_cli("masks")
    assert code == 0, err
    assert len(list((tmp_path / "from-config" / "masks").iterdir())) == 2


def test_help_shows_placeholders_and_no_bool_types(run_cli):
    code, text, _ = run_cli("synthesize", "--help")
    assert code == 0
    assert "synth/<model>-N" in text.replace("\n", " ").replace("│", " ").replace("  ", " ") or "<model>" in text
    assert "<bool>" not in text
    code, text, _ = run_cli("validate", "--help")
    assert "reports/<detector>-N" in text and "<bool>" not in text


def test_interrupted_validate_leaves_no_report_folder(tmp_path, mvtec_dir, monkeypatch, run_cli):
    import defectgen.evaluate.experiment as experiment

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "load_backbone", interrupt)  # Ctrl-C once the report folder exists
    code, _, err = run_cli("validate", "--detector", "exdd", "--train", mvtec_dir, "--test", mvtec_dir,
                           "--resolution", "32", "--synthetic", "none", "--baselines", "none")
    assert code == 130 and "interrupted" in err
    assert not (tmp_path / "reports").exists()
