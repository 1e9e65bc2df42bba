"""The README's three commands as typed, in a workspace; defaults that cannot be resolved; shards; a killed run."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time

import pytest

from defectgen.workspace import INDEX, Workspace

TINY = """\
train-ddpm: {preset: tiny, steps: 4, batch-size: 2, warmup: 0, resolution: 32, checkpoint-every: 0}
synthesize: {steps: 2}
validate: {steps: 2, resolution: 32, n-draem: 3, overlays: 1}
"""


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_three_commands_as_typed(mvtec_dir, tmp_path, run_cli):
    shutil.copytree(mvtec_dir, tmp_path / "data")
    (tmp_path / "defectgen.yaml").write_text(TINY)  # tiny presets come from the workspace config, not flags

    code, _, err = run_cli("train-ddpm", "--normals", "data/train/good")
    assert code == 0, err
    code, out, err = run_cli("synthesize", "--n", "3", "--prompt", "copper scratches")
    assert code == 0, err
    assert "using model runs/ddpm-1" in err and "using normals data/train/good" in err
    assert "using class scratches" in err
    assert "using output folder" in err and "synth/ddpm-1" in err
    code, out, err = run_cli("validate", "--detector", "ast")
    assert code == 0, err
    assert "using synthetic set synth/ddpm-1" in err and "MVTec test/" in err
    report = json.loads((tmp_path / "reports" / "ast-1" / "report.json").read_text())
    assert set(report["runs"]) == {"synthetic", "none", "draem"}

    code, out, _ = run_cli("runs", "--json")
    entries = json.loads(out)["entries"]
    assert [(e["kind"], e["type"], e["path"]) for e in entries] == [
        ("model", "ddpm", "runs/ddpm-1"), ("set", "ddpm", "synth/ddpm-1"), ("report", "ast", "reports/ast-1")]
    assert entries[0]["figures"]["final_loss"] > 0 and entries[1]["figures"]["n"] == 3
    assert set(entries[2]["figures"]) == {"synthetic", "none", "draem"}
    code, out, _ = run_cli("runs")
    assert code == 0 and "runs/ddpm-1" in out and "loss" in out


@pytest.mark.parametrize("args,flag", [
    (("synthesize", "--n", "2"), "--model"),
    (("synthesize", "--model", "draem", "--n", "2"), "--normals"),
    (("validate", "--detector", "exdd"), "--train"),
])
def test_unresolvable_default_says_which_flag(args, flag, run_cli):
    code, _, err = run_cli(*args)
    assert code == 2 and len(_errors(err)) == 1 and flag in _errors(err)[0], err


def test_validate_without_mvtec_test_asks_for_test(tmp_path, mvtec_dir, run_cli):
    import shutil

    shutil.copytree(mvtec_dir / "train" / "good", tmp_path / "alone" / "good")  # no test/ beside it, nor above
    code, _, err = run_cli("validate", "--detector", "exdd", "--train", tmp_path / "alone" / "good")
    assert code == 2 and "--test" in _errors(err)[0]


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))
            if "contact_sheet" not in p.name}


def _annotations(folder):
    data = json.loads((folder / "annotations.json").read_text())
    data["info"].pop("date_created")
    return data


def test_two_shards_make_the_same_dataset_as_one_process(mvtec_dir, tmp_path, run_cli):
    common = ("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "5", "--seed", "3")
    assert run_cli(*common, "--out", tmp_path / "one")[0] == 0
    code, out, err = run_cli(*common, "--out", tmp_path / "two", "--shard", "1/2")
    assert code == 0, err
    assert not (tmp_path / "two" / "annotations.json").exists()  # incomplete: no COCO yet
    assert sorted(_files(tmp_path / "two")) == ["images/000001.png", "images/000003.png",
                                                "masks/000001.png", "masks/000003.png"]
    code, out, err = run_cli(*common, "--out", tmp_path / "two", "--shard", "0/2")
    assert code == 0, err
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert _annotations(tmp_path / "one") == _annotations(tmp_path / "two")
    code, _, err = run_cli(*common, "--out", tmp_path / "two", "--shard", "2/2")
    assert code == 2


def _hammer(root: str) -> None:
    ws = Workspace(root)
    i = 0
    while True:
        (ws.root / "synth" / f"s{i}").mkdir(parents=True, exist_ok=True)
        ws.record("set", ws.root / "synth" / f"s{i}", type="draem", params={"pad": "x" * 2000})
        i += 1


def test_index_survives_a_killed_run(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for delay in (0.2, 0.35, 0.5):
        proc = ctx.Process(target=_hammer, args=(str(tmp_path),))
        proc.start()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        entries = Workspace(tmp_path).entries()  # parses: never half an index
        assert entries and json.loads((tmp_path / INDEX).read_text())["entries"] == entries
