"""`python -m ultrascaled.spec`: print the key table of docs/configuration.md."""
from ultrascaled.spec.reference import reference_markdown

print(reference_markdown(), end="")
