"""The VLA grasp policy (ROS-free): token inputs (tokens), the network (model), checkpoints, demonstration
datasets (dataset, sim_expert, language), training (train), evaluation against the geometric baseline
(evaluate) and the run-time GraspPolicy (runner)."""
