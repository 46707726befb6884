"""The VLA grasp policy (ROS-free): token inputs (tokens), the network (model), checkpoints, training (train)
and the run-time GraspPolicy (runner), plus the bounds its commands go out under (limits). Its data are
dino_vla.dataset's; its closed-loop evaluation is dino_vla.evaluation's."""
