"""Closed-loop runs in the simulator: one episode runner (episodes) for the pick benchmark (pick) and the
policy evaluation (policy)."""
