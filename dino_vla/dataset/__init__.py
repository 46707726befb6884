"""Demonstration datasets: the on-disk format (format), what a robot's recorder computes for it (recording),
the simulator's scripted demonstrations (sim_recording) and the instruction wordings they are named by
(paraphrases). Apart from the policy that trains on them: a robot's own recordings are data for any learner."""
