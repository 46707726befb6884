"""The sim node's STOP is never lost: a STOP taken after a GRASP started its thread but before that thread got
the simulator (the frame timer held it) stops that grasp. The node's own callbacks run here in the order the
executor could run them, on a stand-in simulator that takes 30 steps; no DDS."""
from __future__ import annotations

import threading
import time
import types

from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import Header

from dino_vla.msg import GraspCommand
from dino_vla.ros.sim_node import SimNode
from dino_vla.sim.mujoco_sim import ExecutionStopped


class SteppingSim:
    def execute(self, grasp, lift_m, step_hook):
        try:
            for step in range(30):
                step_hook(step * 0.01)
                time.sleep(0.005)
        except ExecutionStopped as stopped:
            return types.SimpleNamespace(success=False, matches_phrase=False, reason=f"cancelled: {stopped}",
                                         lifted_object=None, lifted_m={})
        return types.SimpleNamespace(success=True, matches_phrase=True, reason="lifted the cup", lifted_object="cup",
                                     lifted_m={"cup": 0.15})


def _command(kind: int, sec: int) -> GraspCommand:
    header = Header(frame_id="base_link")
    header.stamp.sec = sec
    return GraspCommand(header=header, command=kind, approach=Vector3(z=-1.0), gripper_width=0.08, object_class="cup",
                        grasp_pose=Pose(position=Point(x=0.55, z=0.78), orientation=Quaternion(w=1.0)))


def test_a_stop_between_the_grasp_thread_start_and_its_first_step_stops_the_grasp():
    outcomes = []
    log = types.SimpleNamespace(info=lambda line: None, warning=lambda line: None)
    node = types.SimpleNamespace(params={"base_frame": "base_link", "real_time_factor": 0.0, "lift_m": 0.15},
                                 _sim_lock=threading.Lock(), _stop=threading.Event(), _grasp_thread=None,
                                 sim=SteppingSim(), outcome_publisher=types.SimpleNamespace(publish=outcomes.append),
                                 get_logger=lambda: log, report=lambda *args, **kwargs: None)
    node.execute = SimNode.execute.__get__(node)
    node.on_stop = SimNode.on_stop.__get__(node)
    node._sim_lock.acquire()                                   # the frame timer is rendering
    SimNode.on_command(node, _command(GraspCommand.GRASP, 1))  # the grasp thread starts, waits for the simulator
    SimNode.on_command(node, _command(GraspCommand.STOP, 2))   # the next callback: STOP
    node._sim_lock.release()
    node._grasp_thread.join(10)
    by_stamp = {o.header.stamp.sec: o for o in outcomes}
    assert by_stamp[2].reason == "stopped: the grasp in progress was stopped"
    assert not by_stamp[1].success and by_stamp[1].reason.startswith("cancelled: ") and not by_stamp[1].lifted_object
