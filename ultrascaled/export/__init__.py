"""The fleet beyond one host: Kubernetes manifests."""
