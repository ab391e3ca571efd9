"""The loops that run the core against the host: the supervisor, the rollout and autoscale loops."""
