"""The path rule: every path the daemon, nginx or gunicorn write to stays out of the system.

The daemon and the managed nginx usually run as root, so a spec (or a reload through the API)
that names `/etc/passwd` as a log would have a root process append to it. Every written path is
therefore checked, at `--check`, at start and on every reload (docs/security.md, "Paths"):

- it must not be, or lie under, a system location (SYSTEM_TREES: /etc, /usr, /boot, /proc,
  package databases and the like);
- a folder of the fleet's own (state, logs, releases, nginx's prefix) must be a folder of its
  own, not a shared parent such as /var/lib or /tmp itself (SHARED_PARENTS), and a file must
  not lie directly in one (/var/log/auth.log);
- where the target (or any folder on its way) exists, it is resolved: a symlink is judged by
  where it leads, and a file must be a regular file, a folder a folder.

System-mode nginx is the one exception, and it is named: the system nginx's upstream include
may be written under /etc/nginx/ (nginx.upstream_file), and its logs under /var/log/nginx/.
"""
from __future__ import annotations

import os
import stat
from typing import Iterator

SYSTEM_TREES = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot",
                "/proc", "/sys", "/dev", "/root", "/snap", "/var/lib/dpkg", "/var/lib/apt",
                "/var/lib/systemd", "/var/cache/apt", "/var/cache/debconf", "/var/log/journal",
                "/var/spool", "/var/mail", "/var/backups", "/run/systemd", "/run/user")
SHARED_PARENTS = ("/", "/var", "/var/lib", "/var/log", "/var/cache", "/var/tmp", "/run",
                  "/var/run", "/tmp", "/home", "/opt", "/srv", "/mnt", "/media")
SYSTEM_NGINX_EXCEPTIONS = {"upstream_file": "/etc/nginx", "log": "/var/log/nginx"}

# gunicorn options whose value is a file or folder gunicorn writes ("-" is stdout or stderr)
GUNICORN_WRITES = ("--access-logfile", "--error-logfile", "--log-file", "--worker-tmp-dir")


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def lexical_problem(path: str, folder: bool, exception: str | None = None) -> str | None:
    """Why `path` (absolute, normalised) breaks the rule, as the end of a sentence whose subject
    is the path, or None; `exception` is the one system folder this key may write under."""
    if exception and _under(path, exception) and path != exception:
        return None
    for tree in SYSTEM_TREES:
        if _under(path, tree):
            return f"is under {tree}, a system location"
    if path in SHARED_PARENTS:
        return ("is a shared system folder: name a folder of the fleet's own below it"
                if folder else "is a system folder, not a file")
    if not folder and os.path.dirname(path) in SHARED_PARENTS:
        return (f"is a file directly in {os.path.dirname(path)}, a shared system folder (where "
                "the system's own logs live): put it in a folder of the fleet's own")
    return None


def resolved_problem(path: str, folder: bool, exception: str | None = None) -> str | None:
    """The rule applied where the path exists: symlinks on the way are followed and the end
    judged again, and an existing target must be of the kind meant."""
    real = os.path.realpath(path)
    if real != path:
        why = lexical_problem(real, folder, exception)
        if why:
            return f"leads to {real}, which {why}"
    try:
        st = os.stat(real)
    except OSError:
        return None    # not there yet: it is created where the lexical rule allows
    if folder and not stat.S_ISDIR(st.st_mode):
        return "exists and is not a folder"
    if not folder and not stat.S_ISREG(st.st_mode):
        return "exists and is not a regular file"
    return None


def gunicorn_write_targets(args: list) -> Iterator[tuple[str, str, bool]]:
    """(option, path, is_folder) for each path gunicorn.args has gunicorn write to."""
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            continue
        opt, eq, value = arg.partition("=")
        if opt not in GUNICORN_WRITES:
            continue
        if not eq:
            value = args[i + 1] if i + 1 < len(args) and isinstance(args[i + 1], str) else ""
        if value and value != "-":
            yield opt, value, opt == "--worker-tmp-dir"


RULE = ("the path rule: what the fleet writes to stays out of system locations and, where it "
        "exists, is a regular file or a folder as meant; docs/security.md")


def problems(targets: list[tuple[str, str, str, bool, str | None]], base: str) -> list[str]:
    """One error per (key, what, path, is_folder, exception) target that breaks the rule (`what`
    names an option inside the key, or is ''); a relative path is taken from `base`. A target
    inside a folder already refused is not reported again. Each error names the key and the rule."""
    out, refused = [], []
    for key, what, path, folder, exception in targets:
        full = os.path.normpath(os.path.join(base, path))
        if any(_under(full, r) for r in refused):
            continue
        why = lexical_problem(full, folder, exception) or resolved_problem(full, folder, exception)
        if why:
            refused.append(full)
            allowed = f"; this key may also write under {exception}/" if exception else ""
            out.append(f"{key}: {what + ' ' if what else ''}{full} {why} ({RULE}{allowed})")
    return out
