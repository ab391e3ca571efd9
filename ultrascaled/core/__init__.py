"""The core: states, the pure decisions and the one writer (the reconciler)."""
