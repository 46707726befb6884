"""Every command the README shows, run as a user runs it: the installed `dino-vla` entry point in a fresh
process, the package's default config, no weights (so the tiny random-weight models or the simulator's
stand-in, each announced on the first line), exit codes and the first line of every error asserted."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_vla.pick import FAILURE_REASONS
from dino_vla.policy.checkpoint import read_info
from dino_vla.sim.tasks import SPLITS, draw_task

DINO_VLA = str(Path(sys.executable).parent / "dino-vla")
COMMANDS = ("sim-pick", "detect", "parse", "bench", "bench-pick", "launch", "record-sim", "train", "eval",
            "finetune-segmenter", "finetune-detector", "eval-perception", "pretrain-backbone", "probe-backbone")
TEST_SET = Path(__file__).resolve().parents[1] / "data" / "instructions.jsonl"
UNCLAIMED_DOMAIN = 232


@pytest.fixture(scope="module")
def env(tiny_cache_home, tiny_models):
    """The user's environment here: no hub, the tiny models already built where `--models auto` falls back
    to them, and MuJoCo rendering offscreen. Its ROS_DOMAIN_ID (outside the free range 1..101) is one the
    commands must not take: they claim a free domain unless told `--domain-id env`."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tiny_cache_home), "MUJOCO_GL": "egl",
            "ROS_DOMAIN_ID": str(UNCLAIMED_DOMAIN), "OMP_NUM_THREADS": "1"}


def dino_vla(*args: str, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([DINO_VLA, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def first_line(text: str) -> str:
    """The first line a user reads (progress bars of weight loading aside)."""
    return next((line for line in text.splitlines() if line.strip() and "Loading weights" not in line), "")


@pytest.fixture(scope="module")
def photo(tmp_path_factory, coffee) -> Path:
    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(coffee).save(path)
    return path


# ---- --help ------------------------------------------------------------------------------------------------

def test_help_lists_every_command(env, tmp_path):
    result = dino_vla("--help", env=env, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: dino-vla")
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command(env, tmp_path, command):
    result = dino_vla(command, "--help", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: dino-vla {command}")


def test_an_unknown_command_is_a_usage_error(env, tmp_path):
    result = dino_vla("fly", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "invalid choice: 'fly'" in result.stderr


# ---- detect ------------------------------------------------------------------------------------------------

def test_detect_one_photo(env, tmp_path, photo):
    result = dino_vla("detect", str(photo), "--instruction", "pick up the cup", "--out", "annotated.png",
                      env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert first_line(result.stderr).startswith("NOTICE: no pretrained weights for facebook/dinov2-small")
    summary = json.loads(result.stdout)
    assert summary["image"] == str(photo) and summary["annotated"] == "annotated.png"
    assert summary["target"] == "cup" and summary["random_weights"] is True and summary["meaningful"] is False
    assert set(summary["models"]) == {"features", "detector", "segmenter"}
    annotated = np.asarray(Image.open(tmp_path / "annotated.png"))
    assert annotated.shape == (400, 600, 3)


def test_detect_a_folder(env, tmp_path, photo, coffee):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(coffee).save(folder / "a.png")
    Image.fromarray(coffee[::2, ::2]).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    result = dino_vla("detect", str(folder), "-i", "grab the mug", "-o", "out", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = json.loads(result.stdout)
    assert [Path(s["image"]).name for s in summaries] == ["a.png", "b.jpg"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_annotated.png", "b_annotated.png"]
    assert np.asarray(Image.open(tmp_path / "out" / "b_annotated.png")).shape == (200, 300, 3)


def test_detect_a_missing_photo(env, tmp_path):
    result = dino_vla("detect", "nope.png", "-i", "pick up the cup", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert first_line(result.stderr) == "dino-vla: cannot read image 'nope.png': no such file or folder"


def test_detect_a_file_that_is_not_an_image(env, tmp_path):
    (tmp_path / "photo.png").write_text("not a png")
    result = dino_vla("detect", "photo.png", "-i", "pick up the cup", env=env, cwd=tmp_path)
    assert result.returncode == 1 and "dino-vla: cannot read image 'photo.png'" in result.stderr
    assert not (tmp_path / "annotated.png").exists()


def test_detect_an_empty_folder(env, tmp_path):
    (tmp_path / "empty").mkdir()
    result = dino_vla("detect", "empty", "-i", "pick up the cup", env=env, cwd=tmp_path)
    assert result.returncode == 1 and first_line(result.stderr).startswith("dino-vla: no images (")


def test_detect_an_empty_instruction(env, tmp_path, photo):
    result = dino_vla("detect", str(photo), "--instruction", "", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert first_line(result.stderr) == "dino-vla: refused '' (not_an_instruction): it has no words"


# ---- parse -------------------------------------------------------------------------------------------------

def test_parse_prints_the_structure(env, tmp_path):
    result = dino_vla("parse", "could you grab the rde mug to the left of the bowl?", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "action": "pick", "target": {"noun": "mug", "colour": "red", "size": None},
        "relation": {"type": "left_of", "references": [{"noun": "bowl", "colour": None, "size": None}],
                     "anchor": None},
        "corrections": {"rde": "red"}}


def test_parse_refuses_with_the_reason(env, tmp_path):
    result = dino_vla("parse", "throw the cup", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and json.loads(result.stdout)["refused"] == "unsupported_action"
    assert first_line(result.stderr) == ("dino-vla parse: refused 'throw the cup' (unsupported_action): the robot "
                                         "does not throw things: it picks objects up or finds them (e.g. 'pick up "
                                         "the red mug')")


def test_parse_scores_the_test_set(env, tmp_path):
    result = dino_vla("parse", "--test-set", str(TEST_SET), env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    overall = result.stdout.strip().splitlines()[-1]
    assert overall.startswith("overall") and "parse median" in overall


# ---- bench -------------------------------------------------------------------------------------------------

def test_bench(env, tmp_path, tiny_cache_home):
    result = dino_vla("bench", "-n", "2", "--warmup", "1", "--json", "bench.json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert first_line(result.stderr).startswith("NOTICE: no pretrained weights")
    report = json.loads((tmp_path / "bench.json").read_text())
    stages = ("features", "detector", "segmenter", "segmenter_per_box_naive", "end_to_end")
    assert tuple(report["stages"]) == stages
    for stage in stages:
        s = report["stages"][stage]
        assert s["median_ms"] > 0 and s["p95_ms"] >= s["median_ms"] and s["runs"] == 2 and s["fps"] > 0
    assert report["random_weights"] is True and report["segmenter_naive_over_ours"] > 0
    assert set(report["models"]) == {"features", "detector", "segmenter"}
    for model in report["models"].values():   # the tiny models --models auto fell back to
        assert model["source"].startswith(str(tiny_cache_home)) and model["params_m"] > 0
    assert report["image"] == {"source": "skimage.data.coffee()", "height": 400, "width": 600}
    table = result.stdout[result.stdout.index("median ms"):]
    assert all(stage in table for stage in stages)
    assert "once per box (naive)" in result.stdout and "RANDOM" in result.stdout


def test_bench_real_size_features_once(env, tmp_path):
    """--real-size builds random DINOv2 ViT-S/14 (only the model the timed stage needs) and times it once."""
    result = dino_vla("bench", "--real-size", "-n", "1", "--warmup", "0", "--stages", "features", "--json",
                      "bench.json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert list(report["stages"]) == ["features"] and report["stages"]["features"]["runs"] == 1
    assert list(report["models"]) == ["features"] and 21 < report["models"]["features"]["params_m"] < 23
    assert "REAL sizes" in report["weights"] and report["segmenter_naive_over_ours"] is None


def test_bench_refuses_unknown_stages_and_bad_counts(env, tmp_path):
    result = dino_vla("bench", "--stages", "features", "tracking", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert first_line(result.stderr) == ("dino-vla: --stages: unknown tracking; choose from features, detector, "
                                         "segmenter, end_to_end")
    result = dino_vla("bench", "-n", "0", env=env, cwd=tmp_path)
    assert result.returncode == 1 and first_line(result.stderr).startswith("dino-vla: --runs, --boxes")


@pytest.mark.dds
@pytest.mark.parametrize("layout", ["one process per node", "one process (perception)"])
def test_bench_graph_streams_camera_frames_through_the_nodes(env, tmp_path, layout):
    """A few seconds of a simulated camera at a low rate through the real nodes over loopback DDS: every figure
    comes from frames actually published and outputs actually received."""
    extra = ["--one-process"] if "perception" in layout else []
    result = dino_vla("bench", "--graph", "--rate", "4", "--seconds", "2", "-n", "2", "--warmup", "1", "--threads",
                      "1", "--set", "detector.box_threshold=0.0", "--json", "graph.json", *extra, env=env,
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr + (tmp_path / "out" / "bench_graph" / "nodes.log").read_text()[-3000:]
    assert first_line(result.stderr).startswith("NOTICE: no pretrained weights")
    report = json.loads((tmp_path / "graph.json").read_text())
    assert report["layout"] == layout and report["overrides"] == ["detector.box_threshold=0.0"]
    stream = report["stream"]
    assert stream["frames_published"] == 8 and 1.5 < stream["seconds"] < 2.5
    assert 3 < stream["camera_rate_hz"] < 5
    for stage in ("features", "detector", "segmenter"):
        s = stream["stages"][stage]
        assert 0 < s["outputs"] <= 8 and s["outputs"] + s["frames_without_output"] == 8
        assert 0 < s["from_camera"]["p50_ms"] <= s["from_camera"]["p95_ms"] <= s["from_camera"]["max_ms"]
    assert stream["stages"]["segmenter"]["from_detector"]["p50_ms"] > 0
    masks = stream["camera_to_masks"]
    assert masks["masks"] == stream["stages"]["segmenter"]["outputs"] > 0
    assert masks["dropped_frames"] == 8 - masks["masks"]
    # the masks come after their detections
    assert masks["p50_ms"] > stream["stages"]["segmenter"]["from_detector"]["p50_ms"]
    processes = ["perception"] if "perception" in layout else ["features", "detector", "segmenter"]
    assert list(report["processes"]) == processes
    for usage in report["processes"].values():
        assert 50 < usage["rss_mib"] <= usage["peak_rss_mib"] and usage["cpu_percent"] >= 0
    in_process = report["in_process"]
    assert in_process["runs"] == 2 and in_process["end_to_end"]["p50_ms"] > 0
    assert set(in_process["stages"]) == {"features", "detector", "segmenter"}
    assert report["frame"] == {"height": 480, "width": 640, "count": 1} and "MuJoCo" in report["source"]
    assert "camera -> masks" in result.stdout and "in-process pipeline" in result.stdout


def test_bench_graph_refuses_a_parameter_the_nodes_do_not_have(env, tmp_path):
    result = dino_vla("bench", "--graph", "--set", "detector.no_such_parameter=true", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert first_line(result.stderr).startswith("dino-vla: 'detector.no_such_parameter=true': node 'detector' has "
                                                "no parameter 'no_such_parameter'")
    result = dino_vla("bench", "--graph", "--rate", "0", env=env, cwd=tmp_path)
    assert result.returncode == 1 and first_line(result.stderr).startswith("dino-vla: --rate and --seconds")


# ---- bench-pick and eval -----------------------------------------------------------------------------------

def test_bench_pick_one_scene_per_target(env, tmp_path):
    result = dino_vla("bench-pick", "-n", "1", "--json", "pick.json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert first_line(result.stderr).startswith("NOTICE: no pretrained weights")
    report = json.loads((tmp_path / "pick.json").read_text())
    assert report["perception"] == "simulator ground truth" and report["methods"] == ["planner", "oracle"]
    assert sorted(report["per_target"]) == sorted(["cup", "bottle", "box", "block", "ball", "can"])
    assert len(report["episodes"]) == 6 and report["overall"]["oracle"]["episodes"] == 6
    planner = report["overall"]["planner"]
    assert planner["success_rate"] >= 4 / 6 and planner["wrong_object_rate"] == 0
    lines = result.stdout.splitlines()
    assert any(line.startswith("overall") for line in lines) and lines[-1].startswith("failures: ")


def test_bench_pick_refuses_an_unknown_target(env, tmp_path):
    result = dino_vla("bench-pick", "-n", "1", "--targets", "cup", "spoon", env=env, cwd=tmp_path)
    assert result.returncode == 1 and first_line(result.stderr).startswith("dino-vla: unknown object 'spoon'")


def test_eval_one_scene(env, tmp_path):
    result = dino_vla("eval", "-n", "1", "--json", "eval.json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("eval: 1 held-out scenes (seeds 1000000..)")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["methods"] == ["policy", "baseline"] and len(report["episodes"]) == 1
    assert report["checkpoint"].endswith("sim-tiny") and report["paraphrases"] == "eval"
    assert report["overall"]["policy"]["success_rate"] == 1.0   # the shipped checkpoint on seed 1000000


def test_eval_every_split_side_by_side(env, tmp_path):
    result = dino_vla("eval", "--split", "all", "-n", "1", "--json", "splits", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for split in SPLITS:
        assert f"eval --split {split}: 1 held-out tasks (seeds 1000000..)" in result.stdout
        report = json.loads((tmp_path / "splits" / f"{split}.json").read_text())
        assert report["split"] == split and report["methods"] == ["policy", "geometric"]
        (episode,) = report["episodes"]
        assert episode["instruction"] == draw_task(split, 1_000_000).instruction
        assert set(report["overall"]["geometric"]) >= {"success_rate", "correct_object_rate", "refusal_rate"}
    absent = json.loads((tmp_path / "splits" / "absent.json").read_text())
    assert absent["episodes"][0]["target"] == "(absent)"


def test_eval_of_the_mask_free_policy_with_either_grasp_geometry(env, tmp_path):
    """The shipped mask-free checkpoint on the same task: its grasp pose from the depth planner (the default,
    as the policy node's) or its own regressed offset; the report says which."""
    for geometry in ("depth", "learned"):
        result = dino_vla("eval", "--checkpoint", "shipped-mask-free", "--split", "paraphrase", "-n", "1",
                          *(("--grasp-geometry", geometry) if geometry == "learned" else ()), "--json", geometry,
                          env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / geometry / "paraphrase.json").read_text())
        assert report["grasp_geometry"] == geometry and report["checkpoint"].endswith("mask-free-tiny")
        assert len(report["episodes"]) == 1
    assert dino_vla("eval", "--split", "paraphrase", "-n", "1", "--json", "object-tokens", env=env,
                    cwd=tmp_path).returncode == 0
    assert "grasp_geometry" not in json.loads((tmp_path / "object-tokens" / "paraphrase.json").read_text())


def test_eval_of_an_unknown_split(env, tmp_path):
    result = dino_vla("eval", "--split", "colours", env=env, cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'colours'" in result.stderr


def test_eval_of_a_missing_checkpoint(env, tmp_path):
    result = dino_vla("eval", "-n", "1", "--checkpoint", "nowhere", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert first_line(result.stderr) == ("dino-vla: checkpoint 'nowhere': nowhere is not a policy checkpoint "
                                         "(no policy.safetensors)")


# ---- record-sim and train ----------------------------------------------------------------------------------

def test_record_sim_then_train_one_step_then_eval_it(env, tmp_path):
    result = dino_vla("record-sim", "-n", "1", "--out", "demos", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.splitlines()[-1])
    assert counts["dataset"] == "demos" and counts["frames"] == 1 and counts["episodes"] >= 3

    again = dino_vla("record-sim", "-n", "1", "--out", "demos", env=env, cwd=tmp_path)
    assert again.returncode == 1
    assert first_line(again.stderr) == ("dino-vla: demos already holds a dataset; choose another directory or "
                                        "append")
    appended = dino_vla("record-sim", "-n", "1", "--first-seed", "1", "--append", "--out", "demos",
                        "--splits", "relation", env=env, cwd=tmp_path)
    assert appended.returncode == 0 and json.loads(appended.stdout.splitlines()[-1])["frames"] == 1
    info = json.loads((tmp_path / "demos" / "meta" / "info.json").read_text())
    assert info["frames"] == 2
    episodes = [json.loads(line) for line in (tmp_path / "demos" / "meta" / "episodes.jsonl").read_text().splitlines()]
    assert episodes[0]["extra"]["split"] == "paraphrase" and episodes[-1]["extra"]["split"] == "relation"
    assert {e["instruction"] for e in episodes} >= {draw_task("paraphrase", 0, "train").instruction,
                                                     draw_task("relation", 1, "train").instruction}
    unknown = dino_vla("record-sim", "-n", "1", "--out", "other", "--splits", "relation,colours", env=env,
                       cwd=tmp_path)
    assert unknown.returncode == 1 and first_line(unknown.stderr).startswith(
        "dino-vla: --splits: colours not among the training splits")

    # one epoch over 2 frames at batch size 64 is one optimiser step
    trained = dino_vla("train", "demos", "--out", "ck", "--epochs", "1", "--threads", "1", env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert first_line(trained.stderr).startswith("NOTICE: training on a RANDOM-WEIGHT DINOv2 (random-tiny)")
    final = json.loads(trained.stdout.splitlines()[-1])
    assert final["checkpoint"] == "ck" and final["final"]["epoch"] == 1 and final["final"]["step"] == 1
    for name in ("policy.safetensors", "training_state.safetensors", "README.md", "backbone/model.safetensors"):
        assert (tmp_path / "ck" / name).is_file(), name

    evaluated = dino_vla("eval", "--checkpoint", "ck", "-n", "1", "--json", "eval.json", env=env, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.startswith("eval: 1 held-out scenes") and "checkpoint ck" in evaluated.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["checkpoint"] == "ck" and Path(report["backbone"]) == (tmp_path / "ck" / "backbone").resolve()

    # a policy whose objects are told apart by their crops' features alone, evaluated as any other
    crop = dino_vla("train", "demos", "--out", "crop", "--epochs", "1", "--threads", "1", "--object-features", "crop",
                    "--object-geometry", "position", env=env, cwd=tmp_path)
    assert crop.returncode == 0, crop.stderr
    view = read_info(tmp_path / "crop").config.view
    assert (view.object_features, view.object_geometry) == ("crop", "position")
    evaluated = dino_vla("eval", "--checkpoint", "crop", "--split", "recolour", "-n", "1", "--json", "splits",
                         env=env, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert len(json.loads((tmp_path / "splits" / "recolour.json").read_text())["episodes"]) == 1
    for flags, error in ((("--finetune-backbone", "--object-features", "crop"), "it needs --object-features mask"),
                         (("--policy", "mask-free", "--object-geometry", "position"), "the object-token policy's")):
        wrong = dino_vla("train", "demos", "--out", "x", *flags, env=env, cwd=tmp_path)
        assert wrong.returncode == 1 and wrong.stderr.splitlines()[-1].endswith(error), wrong.stderr


@pytest.fixture(scope="module")
def mask_free(env, tmp_path_factory):
    """(working directory, the output of `train --policy mask-free`): one epoch on two recorded scenes."""
    cwd = tmp_path_factory.mktemp("mask-free")
    assert dino_vla("record-sim", "-n", "2", "--out", "demos", env=env, cwd=cwd).returncode == 0
    return cwd, dino_vla("train", "demos", "--policy", "mask-free", "--out", "mf", "--epochs", "1", "--threads", "1",
                         env=env, cwd=cwd)


def test_train_a_mask_free_policy_then_eval_it(env, mask_free):
    cwd, trained = mask_free
    assert trained.returncode == 0, trained.stderr
    final = json.loads(trained.stdout.splitlines()[-1])
    assert final["policy"] == "mask-free" and final["final"]["epoch"] == 1 and final["final"]["step"] == 1
    for name in ("policy.safetensors", "training_state.safetensors", "README.md", "backbone/model.safetensors"):
        assert (cwd / "mf" / name).is_file(), name
    assert list((cwd / "demos" / "cache").glob("patches-*.safetensors"))
    wrong = dino_vla("train", "demos", "--policy", "mask-free", "--out", "x", "--frames-per-batch", "0", env=env,
                     cwd=cwd)
    assert wrong.returncode == 1 and wrong.stderr.splitlines()[-1] == "dino-vla: frames-per-batch must be >= 1, got 0"

    evaluated = dino_vla("eval", "--checkpoint", "mf", "--split", "paraphrase", "-n", "1", "--json", "splits",
                         env=env, cwd=cwd)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "eval --split paraphrase: 1 held-out tasks" in evaluated.stdout and "checkpoint mf" in evaluated.stdout
    report = json.loads((cwd / "splits" / "paraphrase.json").read_text())
    assert report["checkpoint"] == "mf" and len(report["episodes"]) == 1


@pytest.mark.dds
def test_sim_pick_with_a_mask_free_policy(env, mask_free):
    cwd, trained = mask_free
    assert trained.returncode == 0, trained.stderr
    # no ground truth at run time: no stand-in masks and no perception banner; it picks or refuses
    picked = dino_vla("sim-pick", "--grasp-source", "policy", "--policy-checkpoint", "mf", "--out", "record",
                      env=env, cwd=cwd)
    log = (cwd / "record" / "nodes.log").read_text()
    assert picked.returncode in (0, 3), picked.stderr + log[-3000:]
    assert "NOTICE" not in picked.stderr and "[localiser]" not in log and "mask-free policy loaded" in log
    summary = json.loads(picked.stdout)
    assert summary["perception_source"] == "policy mf"
    assert summary["success"] or summary["failure_reason"] in FAILURE_REASONS, summary   # one epoch: any outcome
    refused = dino_vla("sim-pick", "--policy-checkpoint", "mf", env=env, cwd=cwd)
    assert refused.returncode == 1 and "--policy-checkpoint needs --grasp-source policy" in refused.stderr


def test_finetune_segmenter_then_resume_then_eval_perception(env, tmp_path):
    assert dino_vla("record-sim", "-n", "2", "--out", "frames", env=env, cwd=tmp_path).returncode == 0
    tuned = dino_vla("finetune-segmenter", "--data", "frames", "--out", "sam", "--steps", "2", "--batch-size", "2",
                     "--threads", "1", env=env, cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr
    assert first_line(tuned.stderr).startswith("NOTICE: starting from a RANDOM-WEIGHT tiny SAM")
    assert json.loads(tuned.stdout.splitlines()[-1])["steps"] == 2
    for name in ("model.safetensors", "config.json", "finetune_segmenter.json", "training_state.safetensors"):
        assert (tmp_path / "sam" / name).is_file(), name
    again = dino_vla("finetune-segmenter", "--data", "frames", "--out", "sam", "--steps", "2", env=env, cwd=tmp_path)
    assert again.returncode == 1 and "already holds a fine-tuned segmenter" in again.stderr.splitlines()[-1]
    resumed = dino_vla("finetune-segmenter", "--data", "frames", "--out", "sam", "--steps", "3", "--resume",
                       env=env, cwd=tmp_path)
    assert resumed.returncode == 0 and json.loads(resumed.stdout.splitlines()[-1])["steps"] == 3, resumed.stderr

    scored = dino_vla("eval-perception", "--data", "frames", "--segmenter", "sam", "--segmenter",
                      str(Path(env["XDG_CACHE_HOME"]) / "dino_vla" / "random-models" / "tiny-segmenter"),
                      "--crop-context", "2", "--json", "scores.json", env=env, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.splitlines()[0].split() == ["segmenter", "masks", "mean", "IoU", "IoU>=0.8"]
    report = json.loads((tmp_path / "scores.json").read_text())
    assert report["frames"] == 2 and len(report["segmenters"]) == 2
    assert all(r["instances"] > 0 and 0 <= r["mean_iou"] <= 1 for r in report["segmenters"].values())

    picked = dino_vla("bench-pick", "-n", "1", "--targets", "cup", "--perception", "true-boxes", "--segmenter", "sam",
                      "--crop-context", "2", env=env, cwd=tmp_path)
    assert picked.returncode == 0, picked.stderr
    assert "perception: simulator boxes + sam (crop_context 2)" in picked.stderr
    assert any(line.startswith("cup           1 |") for line in picked.stdout.splitlines()), picked.stdout

    nothing = dino_vla("finetune-segmenter", "--data", "nothing", "--out", "x", env=env, cwd=tmp_path)
    assert nothing.returncode == 1 and nothing.stderr.strip().splitlines()[-1] == (
        "dino-vla: nothing is not a dataset (no meta/info.json)")
    bad = dino_vla("eval-perception", "--data", "frames", "--segmenter", "no-such-sam", env=env, cwd=tmp_path)
    assert bad.returncode == 1 and "no-such-sam" in bad.stderr.strip().splitlines()[-1]


def test_finetune_detector_then_resume_then_eval_perception_and_bench_pick_trained(env, tmp_path):
    assert dino_vla("record-sim", "-n", "3", "--out", "frames", env=env, cwd=tmp_path).returncode == 0
    tuned = dino_vla("finetune-detector", "--data", "frames", "--out", "det", "--steps", "2", "--batch-size", "2",
                     "--validation-frames", "1", "--threads", "1", env=env, cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr
    assert first_line(tuned.stderr).startswith("NOTICE: starting from a RANDOM-WEIGHT tiny Grounding DINO")
    summary = json.loads(tuned.stdout.splitlines()[-1])
    assert summary["steps"] == 2 and summary["processes"] == 1 and "target_top1" in summary["last"]
    for name in ("model.safetensors", "config.json", "finetune_detector.json", "training_state.safetensors"):
        assert (tmp_path / "det" / name).is_file(), name
    again = dino_vla("finetune-detector", "--data", "frames", "--out", "det", "--steps", "2", env=env, cwd=tmp_path)
    assert again.returncode == 1 and "already holds a fine-tuned detector" in again.stderr.splitlines()[-1]
    resumed = dino_vla("finetune-detector", "--data", "frames", "--out", "det", "--steps", "3", "--resume",
                       env=env, cwd=tmp_path)
    assert resumed.returncode == 0 and json.loads(resumed.stdout.splitlines()[-1])["steps"] == 3, resumed.stderr

    start = str(Path(env["XDG_CACHE_HOME"]) / "dino_vla" / "random-models" / "tiny-detector")
    scored = dino_vla("eval-perception", "--data", "frames", "--detector", start, "--detector", "det",
                      "--json", "boxes.json", env=env, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.splitlines()[0].split() == ["detector", "boxes", "AP50", "recall", "top-1", "instr"]
    report = json.loads((tmp_path / "boxes.json").read_text())
    assert report["frames"] == 3 and list(report["detectors"]) == [start, "det"] and not report["segmenters"]
    for r in report["detectors"].values():
        assert r["instances"] > 0 and r["instructions"] > 0 and 0 <= r["ap50"] <= 1 and 0 <= r["target_top1"] <= 1
        assert set(r["per_phrase"]) <= {"cup", "box", "ball", "bottle", "can", "block", "jar", "bowl", "cube",
                                        "packet", "tumbler"}

    picked = dino_vla("bench-pick", "-n", "1", "--targets", "cup", "--perception", "trained", "--detector", "det",
                      "--box-threshold", "0", env=env, cwd=tmp_path)
    assert picked.returncode == 0, picked.stderr
    assert re.search(r"perception: det \+ \S*sim-tiny-sam \(crop_context 2\)", picked.stderr), picked.stderr
    assert any(line.startswith("cup           1 |") for line in picked.stdout.splitlines()), picked.stdout

    untrained = dino_vla("bench-pick", "-n", "1", "--perception", "trained", env=env, cwd=tmp_path)
    assert untrained.returncode == 1 and untrained.stderr.strip().splitlines()[-1] == (
        "dino-vla: --perception trained needs --detector DIR (a finetune-detector output)")
    nothing = dino_vla("finetune-detector", "--data", "nothing", "--out", "x", env=env, cwd=tmp_path)
    assert nothing.returncode == 1 and nothing.stderr.strip().splitlines()[-1] == (
        "dino-vla: nothing is not a dataset (no meta/info.json)")
    sam = str(Path(env["XDG_CACHE_HOME"]) / "dino_vla" / "random-models" / "tiny-segmenter")
    wrong = dino_vla("finetune-detector", "--data", "frames", "--out", "y", "--model", sam, env=env, cwd=tmp_path)
    assert wrong.returncode == 1 and "holds a 'sam' model, not Grounding DINO" in wrong.stderr.splitlines()[-1]
    neither = dino_vla("eval-perception", "--data", "frames", env=env, cwd=tmp_path)
    assert neither.returncode == 1 and "--segmenter or --detector" in neither.stderr.splitlines()[-1]


def test_train_on_something_that_is_not_a_dataset(env, tmp_path):
    result = dino_vla("train", "nothing", "--out", "ck", "--epochs", "1", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "dino-vla: nothing is not a dataset (no meta/info.json)"



SMALL_DISTILLATION = ("--batch-size", "2", "--global-size", "56", "--local-size", "28", "--local-crops", "2",
                      "--prototypes", "16", "--threads", "1")


def test_pretrain_backbone_then_resume_and_its_errors(env, tmp_path):
    assert dino_vla("record-sim", "-n", "2", "--out", "demos", env=env, cwd=tmp_path).returncode == 0
    pretrained = dino_vla("pretrain-backbone", "--data", "demos", "--out", "bb", "--steps", "2", *SMALL_DISTILLATION,
                          env=env, cwd=tmp_path)
    assert pretrained.returncode == 0, pretrained.stderr
    assert first_line(pretrained.stderr).startswith("NOTICE: starting from a RANDOM-WEIGHT tiny DINOv2")
    summary = json.loads(pretrained.stdout.splitlines()[-1])
    assert summary["steps"] == 2 and summary["frames"] == 2 and 0 < summary["teacher_entropy"] <= summary["log_k"]
    assert "H=" in pretrained.stderr and "nn=" in pretrained.stderr       # collapse watched in the progress bar
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "pretrain_backbone.json",
                 "distillation.safetensors", "training_state.safetensors"):
        assert (tmp_path / "bb" / name).is_file(), name
    again = dino_vla("pretrain-backbone", "--data", "demos", "--out", "bb", env=env, cwd=tmp_path)
    assert again.returncode == 1 and "already holds a pretrained backbone" in again.stderr.splitlines()[-1]
    resumed = dino_vla("pretrain-backbone", "--data", "demos", "--out", "bb", "--steps", "3", "--resume",
                       "--threads", "1", env=env, cwd=tmp_path)
    assert resumed.returncode == 0 and json.loads(resumed.stdout.splitlines()[-1])["steps"] == 3, resumed.stderr

    other = dino_vla("pretrain-backbone", "--data", "demos", "--out", "x", "--model",
                     str(Path(env["XDG_CACHE_HOME"]) / "dino_vla" / "random-models" / "tiny-segmenter"), env=env,
                     cwd=tmp_path)
    assert other.returncode == 1 and "holds a 'sam' model, not a DINOv2 backbone" in other.stderr.splitlines()[-1]
    (tmp_path / "empty").mkdir()
    empty = dino_vla("pretrain-backbone", "--data", "empty", "--out", "x", env=env, cwd=tmp_path)
    assert empty.returncode == 1 and empty.stderr.strip().splitlines()[-1].startswith(
        "dino-vla: empty holds no frames")

    # object views: the preset (BatchNorm heads, lr 3e-4) where nothing else is given, what is given over it
    objects = dino_vla("pretrain-backbone", "--data", "demos", "--out", "bb-objects", "--views", "objects",
                       "--steps", "2", *SMALL_DISTILLATION, env=env, cwd=tmp_path)
    assert objects.returncode == 0, objects.stderr
    summary = json.loads(objects.stdout.splitlines()[-1])
    assert summary["steps"] == 2 and summary["frames"] == 2 and summary["objects"] >= 4, summary
    settings = json.loads((tmp_path / "bb-objects" / "pretrain_backbone.json").read_text())["settings"]
    assert settings["views"] == "objects" and settings["head_batch_norm"] and settings["learning_rate"] == 3e-4
    assert settings["global_size"] == 56 and settings["global_scale"] == [0.7, 1.0]
    folder = dino_vla("pretrain-backbone", "--data", "empty", "--out", "x", "--views", "objects", env=env,
                      cwd=tmp_path)
    assert folder.returncode == 1 and "cuts objects out by depth" in folder.stderr.splitlines()[-1]


def test_probe_backbone_and_a_policy_trained_on_a_pretrained_backbone(env, tmp_path):
    assert dino_vla("record-sim", "-n", "2", "--out", "demos", env=env, cwd=tmp_path).returncode == 0
    assert dino_vla("pretrain-backbone", "--data", "demos", "--out", "bb", "--steps", "1", *SMALL_DISTILLATION,
                    env=env, cwd=tmp_path).returncode == 0
    probed = dino_vla("probe-backbone", "--backbone", "random-tiny", "--backbone", "bb", "--scenes", "3", "-k", "3",
                      "--json", "probe.json", env=env, cwd=tmp_path)
    assert probed.returncode == 0, probed.stderr
    assert probed.stdout.splitlines()[0].split() == ["backbone", "refs", "queries", "k-NN", "CLS", "k-NN", "patches",
                                                     "chance"]
    report = json.loads((tmp_path / "probe.json").read_text())
    assert report["paint"] == "one" and set(report["backbones"]) == {"random-tiny", "bb"}
    assert all(r["queries"] > 0 and 0 <= r["cls_accuracy"] <= 1 for r in report["backbones"].values())

    # the policy trains on it, and its checkpoint carries the backbone's weights (not its training state)
    trained = dino_vla("train", "demos", "--out", "ck", "--epochs", "1", "--backbone", "bb", "--threads", "1",
                       env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    carried = tmp_path / "ck" / "backbone"
    assert (carried / "model.safetensors").read_bytes() == (tmp_path / "bb" / "model.safetensors").read_bytes()
    assert not (carried / "distillation.safetensors").exists()

# ---- sim-pick and launch: node processes over DDS ----------------------------------------------------------

@pytest.mark.dds
def test_sim_pick(env, tmp_path):
    result = dino_vla("sim-pick", "--instruction", "pick up the cup", "--seed", "0", "--out", "record", env=env,
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr + (tmp_path / "record" / "nodes.log").read_text()[-3000:]
    assert first_line(result.stderr).startswith("NOTICE: no pretrained weights")
    assert re.search(r"^ROS domain \d+ \(free; --domain-id to choose\)$", result.stderr, re.MULTILINE)
    summary = json.loads(result.stdout)
    assert summary["success"] and summary["lifted_object"] == "cup"
    assert summary["perception_source"] == "simulator ground truth"
    for name in ("summary.json", "perceived.png", "after.png", "nodes.log"):
        assert (tmp_path / "record" / name).is_file(), name


@pytest.mark.dds
def test_two_sim_picks_at_once_each_pick_in_its_own_scene(env, tmp_path):
    """Two graphs on one host: each sim-pick claims a domain of its own, so each goal is answered by the pick
    server it started, in its own scene. The scenes are chosen so that a goal answered by the other graph
    fails: seed 1 has a box and no bottle, seed 0 a bottle and no box."""
    from dino_vla.sim.scene import random_scene

    runs = {"box": (1, "grab the box"), "bottle": (0, "pick up the bottle")}
    started = {target: subprocess.Popen(
        [DINO_VLA, "sim-pick", "--seed", str(seed), "--instruction", instruction, "--out", target], env=env,
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for target, (seed, instruction)
        in runs.items()}
    domains = {}
    try:
        for target, process in started.items():
            stdout, stderr = process.communicate(timeout=500)
            assert process.returncode == 0, stderr + (tmp_path / target / "nodes.log").read_text()[-3000:]
            domains[target] = int(re.search(r"^ROS domain (\d+) \(free; --domain-id to choose\)$", stderr,
                                            re.MULTILINE).group(1))
            summary = json.loads(stdout)
            assert json.loads((tmp_path / target / "summary.json").read_text()) == summary
            assert summary["success"] and summary["chosen_object"] == summary["lifted_object"] == target
            # where config/sim.yaml's scene (target cup, 3 distractors) of this seed has the object
            placed = random_scene(runs[target][0], target="cup", n_distractors=3).get(target)
            grasp = summary["grasp"]["position_m"]
            assert np.hypot(grasp[0] - placed.x, grasp[1] - placed.y) < 0.02, (target, grasp, placed)
    finally:
        for process in started.values():   # its nodes get SIGINT when it dies
            if process.poll() is None:
                process.kill()
                process.wait()
    assert domains["box"] != domains["bottle"] and UNCLAIMED_DOMAIN not in domains.values(), domains


@pytest.mark.dds
def test_sim_pick_with_a_trained_detector(env, tmp_path):
    """--perception trained: the detector and segmenter nodes run the models named (a finetune-detector output and
    the shipped sim-tiny-sam); a two-step detector rarely finds the cup, so only the graph's answer is asserted."""
    assert dino_vla("record-sim", "-n", "2", "--out", "frames", env=env, cwd=tmp_path).returncode == 0
    assert dino_vla("finetune-detector", "--data", "frames", "--out", "det", "--steps", "1", "--batch-size", "1",
                    "--validation-frames", "0", env=env, cwd=tmp_path).returncode == 0
    result = dino_vla("sim-pick", "--perception", "trained", "--detector", "det", "--box-threshold", "0",
                      "--out", "record", env=env, cwd=tmp_path)
    assert result.returncode in (0, 3), result.stderr + (tmp_path / "record" / "nodes.log").read_text()[-3000:]
    summary = json.loads(result.stdout)
    assert summary["perception_source"].endswith("sim-tiny-sam"), summary
    assert summary["perception_source"] != "simulator ground truth"


def test_sim_pick_refuses_a_missing_dds_profile(env, tmp_path):
    result = dino_vla("sim-pick", "--dds-profile", "nope.xml", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and first_line(result.stderr).startswith("dino-vla sim-pick:")
    assert "nope.xml" in result.stderr


def test_launch_refuses_a_missing_dds_profile(env, tmp_path):
    result = dino_vla("launch", "--dds-profile", "nope.xml", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and first_line(result.stderr).startswith("dino-vla launch:")
    assert "nope.xml" in result.stderr


@pytest.mark.dds
def test_launch_serves_masks_and_stops_on_ctrl_c(env, dds_env, tmp_path, coffee):
    """`dino-vla launch` with the tiny models, on this test's domain (`--domain-id env`): an image published on
    the camera topic comes back as masks; Ctrl-C (SIGINT) stops every node and the launcher exits 0."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image as ImageMsg

    from dino_vla.msg import SegmentationMasks
    from dino_vla.ros.conversions import numpy_to_image

    log = tmp_path / "launch.log"
    with open(log, "w") as out:   # the nodes write here too
        launcher = subprocess.Popen([DINO_VLA, "launch", "--instruction", "pick up the cup", "--domain-id", "env"],
                                    env={**env, **dds_env}, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    node = rclpy.create_node("e2e_launch_probe")
    try:
        deadline = time.monotonic() + 60
        while "dino-vla launch: started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "dino-vla launch: started features, detector, segmenter" in log.read_text(), log.read_text()
        assert f"ROS domain {dds_env['ROS_DOMAIN_ID']} (ROS_DOMAIN_ID from the environment)" in log.read_text()
        masks: list = []
        node.create_subscription(SegmentationMasks, "masks", masks.append, 10)
        camera = node.create_publisher(ImageMsg, "/camera/color/image_raw", qos_profile_sensor_data)
        deadline = time.monotonic() + 120
        while not masks and time.monotonic() < deadline and launcher.poll() is None:
            camera.publish(numpy_to_image(coffee, "rgb8"))
            rclpy.spin_once(node, timeout_sec=0.5)
        assert masks, f"no masks from the launched graph:\n{log.read_text()[-3000:]}"
        assert masks[0].instruction == "pick up the cup" and masks[0].labels.width == 600
    finally:
        node.destroy_node()
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(30)
        finally:
            launcher.kill()
    assert launcher.returncode == 0, log.read_text()[-3000:]


@pytest.mark.dds
def test_launch_stops_when_a_model_cannot_load(env, dds_env, tmp_path):
    """--models pretrained without the weights here: the model nodes fail their configure transition, and the
    launcher says so, stops every node and exits 1."""
    result = dino_vla("launch", "--models", "pretrained", "--domain-id", "env", env={**env, **dds_env},
                      cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r"^dino-vla launch: /(features|detector|segmenter): configure failed \(its log says why\); "
                     r"the graph is stopped$", result.stderr, re.MULTILINE), result.stderr[-3000:]
    assert "configure failed: " in result.stderr and "Traceback" not in result.stderr
