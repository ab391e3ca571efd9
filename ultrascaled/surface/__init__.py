"""The operator's faces: the control API, the dashboard and the CLI."""
