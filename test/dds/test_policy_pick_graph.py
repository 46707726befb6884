"""The shipped policy checkpoint picks in simulation over real DDS: sim, features (the checkpoint's own
tiny DINOv2), policy and pick nodes as separate processes, from the same graph description and parameters as
`dino-vla sim-pick --grasp-source policy`, driven through the Pick action with held-out paraphrases."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dino_vla.config import config_dir
from dino_vla.graph import pick_graph, pick_graph_params
from dino_vla.ros.launcher import start_graph
from dino_vla.ros.pick_client import PickClient
from dino_vla.policy.checkpoint import resolve_checkpoint

CONFIG = [str(config_dir() / name) for name in ("perception.yaml", "pick.yaml", "policy.yaml", "sim.yaml")]
SEED = 3   # cup, and distractors around it


@pytest.fixture
def graph(dds_env, tmp_path_factory):
    """A fresh graph per test: the simulated gripper keeps what it lifted, so a second pick in the same scene
    would carry the first object along (and collide with it)."""
    log = open(tmp_path_factory.mktemp("policy-graph") / "nodes.log", "w+")
    node_params = pick_graph_params(True, False, "policy", CONFIG)
    node_params["sim"] = {**node_params.get("sim", {}), "seed": SEED}
    specs = pick_graph(simulated=True, model_perception=False, grasp_source="policy")
    running = start_graph(CONFIG, dict(dds_env, MUJOCO_GL="egl", OMP_NUM_THREADS="1"), specs=specs,
                          node_params=node_params, stdout=log, stderr=subprocess.STDOUT)
    client = PickClient()
    try:
        client.wait_for_nodes(specs, 120, running)
    except RuntimeError as err:
        running.stop()
        log.seek(0)
        pytest.fail(f"policy pick graph did not come up: {err}\n{log.read()[-3000:]}")
    yield client, log
    client.close()
    running.stop()
    log.close()


def test_the_shipped_policy_uses_its_own_backbone():
    params = pick_graph_params(True, False, "policy", CONFIG)
    assert Path(params["features"]["model"]).resolve() == (Path(resolve_checkpoint("shipped")) / "backbone").resolve()


@pytest.mark.parametrize("instruction, target", [("grab the mug", "cup"), ("lift the white bottle", "bottle")])
def test_the_shipped_policy_picks_the_named_object_over_dds(graph, instruction, target):
    client, log = graph
    record = client.pick(instruction, 120)
    r = record.result
    log.seek(0)
    assert r.success and r.lifted_object == target, f"{r.failure_reason}: {r.message}\n{log.read()[-2000:]}"
    assert r.perception_source.startswith("policy ") and "sim-tiny" in r.perception_source
    assert not r.grasp.dry_run and r.lifted_m > 0.1
