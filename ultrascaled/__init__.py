"""ultrascale: a process supervisor for gunicorn fleets behind nginx (README "Layout" maps the folders)."""
