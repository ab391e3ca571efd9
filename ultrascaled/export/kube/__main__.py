"""`python -m ultrascaled.export.kube [FILE]`: print docs/kubernetes.md's tables, or rewrite FILE's."""
import sys

from ultrascaled.export.kube.tables import tables_markdown, with_tables

if __name__ == "__main__":
    # python -m ultrascaled.export.kube: print the tables; `... docs/kubernetes.md` rewrites them there
    if len(sys.argv) > 1:
        with open(sys.argv[1]) as f:
            text = with_tables(f.read())
        with open(sys.argv[1], "w") as f:
            f.write(text)
    else:
        print(tables_markdown(), end="")
