"""Loading a spec: a file read with bounds, parsed and validated into a Spec, or SpecError with
every problem; the one way the daemon's start, `--check` and every reload read a spec."""
from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Mapping

import yaml

from ultrascaled.spec import envfile
from ultrascaled.spec.errors import SpecError
from ultrascaled.spec.queue import mask_url
from ultrascaled.spec.schema import MB, Spec, resolve_auto_workers
from ultrascaled.spec.validate import _build, _cross_checks, _sorted
from ultrascaled.spec.yaml_reader import MAX_SPEC_BYTES, _compose, _Reader, _Refused, _text_problem, decode_spec

def parse_spec(text: str | bytes, source: str = "<spec>", base_dir: Path | None = None,
               cpu_count: int | None = None, nofile_limit: int | None = None) -> Spec:
    """Parse and validate spec text (or UTF-8 bytes); raise SpecError listing every problem.
    A blank document is refused: `{}` means all defaults."""
    try:
        return _parse(text, source, base_dir or Path.cwd(), cpu_count, nofile_limit)
    except SpecError:
        raise
    except Exception as exc:  # a bug; still a refusal, never a crash of --check or a reload
        raise SpecError([f"{source}: internal error while reading the spec "
                         f"({type(exc).__name__}: {exc}); please report it"]) from exc


def _parse(text: str | bytes, source: str, base_dir: Path, cpu_count: int | None,
           nofile_limit: int | None) -> Spec:
    if isinstance(text, bytes):
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError([f"{source}: {_text_problem(' ' * len(text))}"])
        try:
            text = decode_spec(text)
        except ValueError as exc:
            raise SpecError([f"{source}: {exc}"]) from None
    problem = _text_problem(text)
    if problem:
        raise SpecError([f"{source}: {problem}"])
    try:
        root, aliases = _compose(text)
        reader = _Reader(aliases)
        data = reader.document(root)
    except _Refused as exc:
        at = f" (line {exc.line})" if exc.line else ""
        raise SpecError([f"{source}{at}: {exc.message}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise SpecError([f"{source}{at}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    lines, errors, bad = reader.lines, reader.errors, reader.bad
    spec = _build(Spec, data, "", lines, errors, base_dir, bad)
    if spec.gunicorn.workers == "auto":
        workers = resolve_auto_workers(cpu_count or os.cpu_count() or 1)
        spec = dataclasses.replace(spec, gunicorn=dataclasses.replace(spec.gunicorn, workers=workers))
    if spec.nginx.mode == "managed" and not spec.nginx.prefix:
        prefix = str(Path(spec.paths.state_dir) / "nginx")
        spec = dataclasses.replace(spec, nginx=dataclasses.replace(spec.nginx, prefix=prefix))
    if spec.nginx.static:   # where nginx finds the folders (spec/nginx.py, effects/nginx_render.py)
        current = str(Path(spec.deploy.releases_dir or Path(spec.paths.state_dir) / "releases") / "current")
        spec = dataclasses.replace(spec, nginx=dataclasses.replace(
            spec.nginx, static_app_dir=spec.app.directory, static_current=current))
    spec = dataclasses.replace(spec, source=source)
    if "app.env_file" not in bad:
        spec = _with_env_files(spec, base_dir, lines, errors)
    errors += _cross_checks(spec, lines, bad, nofile_limit)
    if errors:
        raise SpecError(_sorted(errors))
    return spec


def _with_env_files(spec: Spec, base_dir: Path, lines: dict[str, int], errors: list[str]) -> Spec:
    """app.env_file resolved (relative to the spec's folder, `-` kept) and its files read into
    app.file_env: a reload reads them again, so a changed value reaches the new instances."""
    given = spec.app.env_file
    entries = [given] if isinstance(given, str) else list(given)
    line = lines.get("app.env_file")
    key = f"app.env_file (line {line})" if line else "app.env_file"
    resolved = []
    for entry in entries:
        if not entry.strip("-"):
            errors.append(f"{key}: {entry!r} is not a path")
            continue
        path, optional = envfile.resolve(entry, base_dir)
        resolved.append(("-" if optional else "") + path)
    file_env, problems = envfile.load_env_files(resolved, key)
    errors += problems
    return dataclasses.replace(spec, app=dataclasses.replace(spec.app, env_file=resolved,
                                                             file_env=file_env))


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def read_spec_file(path: str | os.PathLike) -> bytes:
    """The bytes of a spec file: a regular file of at most MAX_SPEC_BYTES, read with a bounded
    read; never blocks (a FIFO or a device is refused before it is read)."""
    p = os.fspath(path)

    def refuse(why: str) -> SpecError:
        return SpecError([f"{p}: cannot read: {why}"])

    if "\x00" in p:
        raise SpecError([f"{p!r}: cannot read: the path contains a NUL character"])

    def check(st: os.stat_result) -> None:
        for test, kind in _FILE_KINDS:
            if test(st.st_mode):
                raise refuse(f"it is {kind}, not a spec file")
        if not stat.S_ISREG(st.st_mode):
            raise refuse("not a regular file")
        if st.st_size > MAX_SPEC_BYTES:
            raise refuse(f"{st.st_size} bytes, larger than {MAX_SPEC_BYTES // MB} MiB: not a spec")

    try:
        check(os.stat(p))  # before opening: opening a device or a FIFO may block or act
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    try:
        check(os.fstat(fd))  # the file opened is the one checked
        chunks, left = [], MAX_SPEC_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_SPEC_BYTES:
        raise refuse(f"larger than {MAX_SPEC_BYTES // MB} MiB: not a spec")
    return data


def load_spec(path: str | os.PathLike, cpu_count: int | None = None,
              nofile_limit: int | None = None) -> Spec:
    """Read and validate a spec file (the daemon's start, `--check` and every reload use this);
    `nofile_limit` (the daemon's RLIMIT_NOFILE) enables the file-descriptor budget checks."""
    data = read_spec_file(path)
    p = Path(path).resolve()
    return parse_spec(data, source=str(p), base_dir=p.parent, cpu_count=cpu_count,
                      nofile_limit=nofile_limit)


def shown_spec(spec: Spec) -> dict:
    """The resolved spec as plain values for `--check`: app.env_file's values as `***`."""
    data = dataclasses.asdict(spec)
    data["app"]["file_env"] = spec.app.file_env.shown()
    for entry in data.get("processes", {}).values():   # a queue's Redis URL: its password as ***
        q = entry["autoscale"]["queue"]
        q["redis"] = mask_url(q["redis"]) if q["redis"] else q["redis"]
    return data


DEFAULT_SPEC = "/etc/ultrascaled/fleet.yaml"
FALLBACK_SPEC = "etc/ultrascaled/fleet.yaml"


def default_spec_path(env: Mapping[str, str] | None = None) -> str:
    """The spec the CLI's offline commands (`plan`, `export`) read: $ULTRASCALE_SPEC, else the
    system one, else the repository's default."""
    env = os.environ if env is None else env
    if env.get("ULTRASCALE_SPEC"):
        return env["ULTRASCALE_SPEC"]
    return DEFAULT_SPEC if os.path.exists(DEFAULT_SPEC) else FALLBACK_SPEC
