"""Test support shared by the test folders and bench/: `support.harness` runs a real daemon."""
