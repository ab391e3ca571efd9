"""`app.env_file`: systemd EnvironmentFile= files read into the app's environment, whose values
are never shown (FileEnv prints its keys only).

Our own parser because no well-kept Python package reads systemd's format exactly
(python-dotenv takes `export`, `# comments` after a value and `${VAR}` expansion; systemd does
not): this is systemd's parse_env_file_internal (src/basic/env-file.c) as a state machine, made
stricter where systemd silently drops a line. Every line systemd would skip or mangle (no `=`, a
key that is not a variable name, `export KEY=...`) is refused with its line number, so a file this
accepts means the same to systemd's EnvironmentFile=.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Iterator, Mapping

MAX_ENV_FILE_BYTES = 1024 * 1024   # systemd's own line limit is 1 MiB too; an env file is small

# Names that hold a secret: the kube export's warning and the world-readable check share it.
SECRETISH = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY|ACCESS_?KEY|"
                       r"(?:^|_)KEY(?:_|$)", re.I)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SHOWABLE = re.compile(r"[A-Za-z0-9_ .-]{1,40}\Z")
_WHITESPACE, _NEWLINE, _COMMENTS = " \t\n\r", "\n\r", "#;"
_SHELL_NEED_ESCAPE = "\"\\`$"


def looks_secret(name: str) -> bool:
    return bool(SECRETISH.search(name))


class EnvFileError(ValueError):
    """One problem with an env file; the message names the file (and line, key when known)."""


class FileEnv(Mapping[str, str]):
    """The variables read from app.env_file, in an immutable mapping whose repr, str and JSON
    form (:meth:`shown`) hold the keys only: a spec dump, an event or a log line that prints
    the spec never prints a value. `digest` stands for the values where a comparison needs
    them (a reload restarts the instances whose environment changed)."""
    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None):
        object.__setattr__(self, "_items", dict(items or {}))

    def __setattr__(self, name, value):
        raise AttributeError("FileEnv is immutable")

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FileEnv({self.shown()!r})"

    __str__ = __repr__

    def __deepcopy__(self, memo) -> "FileEnv":   # dataclasses.asdict copies it: it is immutable
        return self

    def __reduce__(self):   # never pickled with its values by accident
        raise TypeError("FileEnv holds secret values and is not pickled")

    def shown(self) -> dict[str, str]:
        """What may be shown: every key, each value as `***`."""
        return {k: "***" for k in sorted(self._items)}

    def digest(self) -> str:
        """sha256 of the keys and values: equal for equal environments, and no value in it."""
        data = json.dumps(sorted(self._items.items())).encode()
        return hashlib.sha256(data).hexdigest()


def parse_env_text(text: str, source: str) -> list[tuple[int, str, str]]:
    """(line, key, value) for each assignment in systemd EnvironmentFile= text, in order;
    EnvFileError naming `source` and the line for a line systemd would not take as written."""
    out: list[tuple[int, str, str]] = []
    key: list[str] = []
    value: list[str] = []
    key_ws = value_ws = None     # where trailing whitespace of the key / the value starts
    state, line, start = "PRE_KEY", 1, 1

    def push() -> None:
        k = "".join(key[:key_ws] if key_ws is not None else key)
        v = "".join(value)
        if k.startswith("export") and k[6:7] in (" ", "\t"):
            raise EnvFileError(f"{source} (line {start}): `export {k[7:].strip()}=...`: systemd's "
                               "EnvironmentFile= has no `export` (it would drop the line); write "
                               f"`{k[7:].strip()}=...`")
        if not _NAME.match(k):   # named only when it cannot be a pasted value (a URL...)
            what = repr(k) if _SHOWABLE.match(k) else "the text before `=`"
            raise EnvFileError(f"{source} (line {start}): {what} is not an environment variable "
                               "name (letters, digits and _, not starting with a digit); systemd "
                               "would drop the line")
        out.append((start, k, v))

    def no_equals() -> EnvFileError:   # the line itself is not shown: it may be a value
        return EnvFileError(f"{source} (line {start}): the line has no `=`: each line is "
                            "`KEY=VALUE`, a comment (`#`, `;`) or blank (systemd would drop it)")

    def end_value(strip: bool) -> None:
        nonlocal value, key, key_ws, value_ws
        if strip and value_ws is not None:
            del value[value_ws:]
        push()
        key, value, key_ws, value_ws = [], [], None, None

    for c in text:
        if state == "PRE_KEY":
            if c in _COMMENTS:
                state = "COMMENT"
            elif c not in _WHITESPACE:
                state, key_ws, start = "KEY", None, line
                key.append(c)
        elif state == "KEY":
            if c in _NEWLINE:
                raise no_equals()
            elif c == "=":
                state, value_ws = "PRE_VALUE", None
            else:
                if c not in _WHITESPACE:
                    key_ws = None
                elif key_ws is None:
                    key_ws = len(key)
                key.append(c)
        elif state == "PRE_VALUE":
            if c in _NEWLINE:
                state = "PRE_KEY"
                end_value(strip=False)
            elif c == "'":
                state = "SINGLE_QUOTE_VALUE"
            elif c == '"':
                state = "DOUBLE_QUOTE_VALUE"
            elif c == "\\":
                state = "VALUE_ESCAPE"
            elif c not in _WHITESPACE:
                state = "VALUE"
                value.append(c)
        elif state == "VALUE":
            if c in _NEWLINE:
                state = "PRE_KEY"
                end_value(strip=True)
            elif c == "\\":
                state, value_ws = "VALUE_ESCAPE", None
            else:
                if c not in _WHITESPACE:
                    value_ws = None
                elif value_ws is None:
                    value_ws = len(value)
                value.append(c)
        elif state == "VALUE_ESCAPE":
            state = "VALUE"
            if c not in _NEWLINE:   # an escaped newline is eaten up entirely
                value.append(c)
        elif state == "SINGLE_QUOTE_VALUE":
            if c == "'":
                state = "PRE_VALUE"
            else:
                value.append(c)
        elif state == "DOUBLE_QUOTE_VALUE":
            if c == '"':
                state = "PRE_VALUE"
            elif c == "\\":
                state = "DOUBLE_QUOTE_VALUE_ESCAPE"
            else:
                value.append(c)
        elif state == "DOUBLE_QUOTE_VALUE_ESCAPE":
            state = "DOUBLE_QUOTE_VALUE"
            if c in _SHELL_NEED_ESCAPE:
                value.append(c)
            elif c != "\n":   # like the shell, keep the backslash before any other character
                value += ["\\", c]
        elif state == "COMMENT":
            if c == "\\":
                state = "COMMENT_ESCAPE"
            elif c in _NEWLINE:
                state = "PRE_KEY"
        elif state == "COMMENT_ESCAPE":   # since systemd v254 a comment never continues
            state = "PRE_KEY" if c in _NEWLINE else "COMMENT"
        if c == "\n":
            line += 1
    if state in ("SINGLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE_ESCAPE"):
        quote = "'" if state == "SINGLE_QUOTE_VALUE" else '"'
        raise EnvFileError(f"{source} (line {start}): the value of {''.join(key).strip()} opens "
                           f"a {quote} quote that is never closed")
    if state == "KEY":
        raise no_equals()
    if state in ("PRE_VALUE", "VALUE", "VALUE_ESCAPE"):
        end_value(strip=state == "VALUE")
    return out


def decode_env_file(data: bytes, source: str) -> str:
    """The file's text: UTF-8 without NUL or a byte order mark (systemd refuses both)."""
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise EnvFileError(f"{source} (line {line}): not UTF-8 text: it holds a NUL byte "
                           "(a UTF-16 or binary file?); save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise EnvFileError(f"{source} (line {line}): not UTF-8 text: byte 0x{data[exc.start]:02x} "
                           "is not UTF-8 (Latin-1? binary?); save it as UTF-8") from None
    if "\ufeff" in text:
        line = text.count("\n", 0, text.index("\ufeff")) + 1
        raise EnvFileError(f"{source} (line {line}): holds a byte order mark (U+FEFF), which "
                           "systemd refuses; save it as UTF-8 without BOM")
    return text


def read_env_file(path: str) -> tuple[bytes, os.stat_result] | None:
    """The bytes and the stat of a regular file of at most MAX_ENV_FILE_BYTES (never blocks on a
    FIFO or a device); None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EnvFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    _check_kind(path, st)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise EnvFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _check_kind(path, st)
        chunks, left = [], MAX_ENV_FILE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise EnvFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_ENV_FILE_BYTES:
        raise EnvFileError(f"{path}: larger than {MAX_ENV_FILE_BYTES // 1024} KiB: not an env file")
    return data, st


def _check_kind(path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise EnvFileError(f"{path}: is a directory, not an env file")
    if not stat.S_ISREG(st.st_mode):
        raise EnvFileError(f"{path}: not a regular file (a FIFO or a device?)")
    if st.st_size > MAX_ENV_FILE_BYTES:
        raise EnvFileError(f"{path}: {st.st_size} bytes, larger than "
                           f"{MAX_ENV_FILE_BYTES // 1024} KiB: not an env file")


def resolve(entry: str, base_dir: Path) -> tuple[str, bool]:
    """(absolute path, optional): a leading `-` (systemd's "ignore if missing") makes it
    optional; a relative path is relative to the spec's folder."""
    optional = entry.startswith("-")
    path = entry[1:] if optional else entry
    return (path if os.path.isabs(path) else str((base_dir / path).resolve())), optional


def load_env_files(entries: list[str], key: str = "app.env_file") -> tuple[FileEnv, list[str]]:
    """The variables of `entries` (resolved paths, `-` kept for optional ones), a later file's
    value over an earlier one's (systemd's order), and every problem as a message naming `key`."""
    values: dict[str, str] = {}
    errors: list[str] = []
    for entry in entries:
        optional = entry.startswith("-")
        path = entry[1:] if optional else entry
        try:
            got = read_env_file(path)
            if got is None:
                if not optional:
                    errors.append(f"{key}: {path} does not exist (prefix it with `-` to ignore a "
                                  "missing file, as systemd does)")
                continue
            data, st = got
            assignments = parse_env_text(decode_env_file(data, path), path)
        except EnvFileError as exc:
            errors.append(f"{key}: {exc}")
            continue
        if st.st_mode & 0o004:
            secret = [(n, k) for n, k, _ in assignments if looks_secret(k)]
            if secret:
                n, k = secret[0]
                errors.append(f"{key}: {path} is readable by every local user (mode "
                              f"{stat.S_IMODE(st.st_mode):o}) and holds {k} (line {n}), which "
                              f"looks like a secret; chmod o-r {path} (600 or 640)")
                continue
        for _, k, v in assignments:
            values[k] = v
    return FileEnv(values), errors
