"""The model nodes named on the command line (features, detector, segmenter) in one process, on one executor:
`python -m dino_vla.ros.perception_process features detector segmenter --ros-args ...` (what start_graph runs
with one_process, for `dino-vla bench --graph --one-process`). Each node keeps its name, parameters and
topics; the process shares one Python interpreter, one torch and one DDS participant per node. rclpy has no
intra-process transport (rclcpp's), so messages between them are still serialised."""
from __future__ import annotations

import sys

from dino_vla.ros.detector_node import DetectorNode
from dino_vla.ros.features_node import FeaturesNode
from dino_vla.ros.node_base import run_nodes
from dino_vla.ros.segmenter_node import SegmenterNode

NODES = {cls.STAGE: cls for cls in (FeaturesNode, DetectorNode, SegmenterNode)}


def main(args: list[str] | None = None) -> int:
    argv = list(sys.argv if args is None else args)
    names = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    unknown = [n for n in names if n not in NODES]
    if not names or unknown or len(set(names)) != len(names):
        print(f"usage: {argv[0]} NODE... [--ros-args ...]: each of {', '.join(NODES)} at most once"
              + (f" (unknown: {', '.join(unknown)})" if unknown else ""), file=sys.stderr)
        return 1
    return run_nodes([NODES[n] for n in names], argv)


if __name__ == "__main__":
    raise SystemExit(main())
