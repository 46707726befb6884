"""`dino-vla launch`: the perception graph as processes, where `ros2 launch` does not exist, on the checked
loopback DDS profile; runs until Ctrl-C (or SIGTERM) or until a node exits."""
from __future__ import annotations

import argparse
import signal
import sys
import time

from dino_vla.commands.common import (add_config_option, add_dds_option, add_model_options, choose_models,
                                      config_files, load_params, loopback_environment, on_ros_domain)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("launch", help="start the perception node graph here (where `ros2 launch` does not "
                              "exist), on the loopback DDS profile")
    p.add_argument("--instruction", "-i", help="initial instruction (default: from the config)")
    p.add_argument("--image-topic", default="/camera/color/image_raw", help="camera topic to subscribe")
    p.add_argument("--namespace", default="", help="namespace of the nodes")
    add_dds_option(p)
    add_config_option(p, ("perception.yaml",))
    add_model_options(p)
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.graph import PERCEPTION_GRAPH, CameraTopics
    from dino_vla.ros.launcher import start_graph
    from dino_vla.ros.lifecycle_client import LifecycleError

    env = loopback_environment(args)
    files = config_files(args)
    choice = choose_models(args, load_params(args), tuple(spec.name for spec in PERCEPTION_GRAPH))
    models = {spec.name: choice.params[spec.name]["model"] for spec in PERCEPTION_GRAPH} \
        if choice.random_weights else None
    with on_ros_domain(args, env) as env:
        try:
            # returns once every model node is configured (its model loaded) and active
            graph = start_graph(files, env, camera=CameraTopics(image=args.image_topic), namespace=args.namespace,
                                instruction=args.instruction, device=args.device, models=models)
        except LifecycleError as err:
            print(f"dino-vla launch: {err}; the graph is stopped", file=sys.stderr)
            return 1
        print(f"dino-vla launch: started {', '.join(graph.processes)} on {args.image_topic} (ROS domain "
              f"{env['ROS_DOMAIN_ID']}, DDS profile {env['FASTDDS_DEFAULT_PROFILES_FILE']}); Ctrl-C stops them",
              flush=True)
        stop = {"now": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        try:
            while not stop["now"]:
                failed = graph.failed()
                if failed:
                    print(f"dino-vla launch: node {failed[0]} exited with code {failed[1]}; stopping the graph",
                          file=sys.stderr)
                    return failed[1] or 1
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            graph.stop()
    return 0
