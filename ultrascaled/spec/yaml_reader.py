"""Reading a spec defensively: bytes -> text -> YAML parser events -> plain values, every key
path with its line; caps on size, aliases, values and nesting, plain tags only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import yaml

from ultrascaled.spec.schema import MB

MAX_SPEC_BYTES = 1 * MB      # a spec is a few KiB; a file this large is not one
MAX_YAML_ALIASES = 50        # aliases (`*name`) in one spec: a spec needs few, an alias bomb many
MAX_YAML_VALUES = 20_000     # values after alias expansion
MAX_YAML_DEPTH = 32          # nesting of mappings and lists
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_MISSING = object()  # a value that could not be read (its error is already recorded)


class _Refused(Exception):
    """The document as a whole cannot be read: one message, at one line."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line, self.message = line, message


@dataclass
class _Node:
    kind: str                 # "scalar", "seq" or "map"
    line: int
    tag: Optional[str]
    value: Any                # scalar text, list of nodes, or [key, value, key, value, ...]
    implicit: tuple = (False, True)


def _compose(text: str) -> tuple[Optional[_Node], int]:
    """The document as a tree of _Node, from parser events and without recursion, and how many
    aliases it uses. An alias is its anchor's node, shared: _Reader counts what the sharing
    expands to."""
    anchors: dict[str, _Node] = {}
    open_anchors: set[str] = set()
    stack: list[tuple[_Node, Optional[str]]] = []
    root = None
    documents = aliases = nodes = 0
    for ev in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if isinstance(ev, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
            continue
        line = ev.start_mark.line + 1
        nodes += 1
        if nodes > 2 * MAX_YAML_VALUES:  # keys and values
            raise _Refused(line, f"more than {MAX_YAML_VALUES} values: not a spec")
        if isinstance(ev, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _Refused(line, "more than one YAML document (a second `---`)")
            continue
        if isinstance(ev, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise _Refused(line, f"more than {MAX_YAML_ALIASES} aliases (`*name`): refused "
                                     "as an alias bomb")
            if ev.anchor in open_anchors:
                raise _Refused(line, f"alias *{ev.anchor} is inside the value it names "
                                     "(a recursive alias)")
            if ev.anchor not in anchors:
                raise _Refused(line, f"alias *{ev.anchor} has no anchor &{ev.anchor} before it")
            node = anchors[ev.anchor]
        elif isinstance(ev, yaml.ScalarEvent):
            node = _Node("scalar", line, ev.tag, ev.value, ev.implicit)
            if ev.anchor:
                anchors[ev.anchor] = node
        elif isinstance(ev, yaml.CollectionStartEvent):
            if len(stack) >= MAX_YAML_DEPTH:
                raise _Refused(line, f"nested more than {MAX_YAML_DEPTH} levels deep")
            kind = "map" if isinstance(ev, yaml.MappingStartEvent) else "seq"
            stack.append((_Node(kind, line, ev.tag, []), ev.anchor))
            if ev.anchor:
                open_anchors.add(ev.anchor)
            continue
        else:  # the end of a mapping or list
            node, anchor = stack.pop()
            if anchor:
                open_anchors.discard(anchor)
                anchors[anchor] = node
        if stack:
            stack[-1][0].value.append(node)
        else:
            root = node
    return root, aliases


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


class _Reader:
    """_Node tree -> dicts, lists and scalars. Records each key path's line, every problem, and
    the paths whose value could not be read (the checks that use them are skipped)."""

    def __init__(self, aliases: int = 0) -> None:
        self.aliases = aliases
        self.lines: dict[str, int] = {}
        self.errors: list[str] = []
        self.bad: set[str] = set()
        self.values = 0

    def error(self, path: str, line: int, message: str) -> None:
        self.errors.append(f"{path or 'spec'} (line {line}): {message}")
        self.bad.add(path)

    def document(self, root: Optional[_Node]) -> dict:
        empty = ("the spec is empty{}: a blank or truncated file is never taken as all "
                 "defaults; write `{{}}` to mean all defaults")
        if root is None:
            raise _Refused(None, empty.format(""))
        if root.kind == "scalar" and self.value(root, "") is None:
            raise _Refused(root.line, empty.format(f" (only `{root.value or '---'}`)"))
        if root.kind != "map":
            what = "a list" if root.kind == "seq" else f"the scalar {show_value(root.value)}"
            raise _Refused(root.line, f"the spec must be a mapping of sections (name:, app:, "
                                      f"instances:, ...), got {what}")
        data = self.value(root, "")
        return data if isinstance(data, dict) else {}

    def value(self, node: _Node, path: str, depth: int = 0) -> Any:
        self.values += 1
        if self.values > MAX_YAML_VALUES:
            raise _Refused(node.line, f"more than {MAX_YAML_VALUES} values" + (
                " once its aliases are expanded: refused as an alias bomb" if self.aliases
                else ": not a spec"))
        if depth > MAX_YAML_DEPTH:
            raise _Refused(node.line, f"nested more than {MAX_YAML_DEPTH} levels deep")
        self.lines.setdefault(path, node.line)
        if node.kind == "scalar":
            return self.scalar(node, path)
        if node.tag not in (None, "!", _TAG + node.kind):
            self.error(path, node.line, f"{_short_tag(node.tag)} values are not supported")
            return _MISSING
        if node.kind == "seq":
            items = [self.value(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(node.value)]
            if any(v is _MISSING for v in items):
                self.bad.add(path)
                return _MISSING
            return items
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for knode, vnode in zip(node.value[0::2], node.value[1::2]):
            if knode.kind != "scalar" or knode.tag not in (None, "!", _TAG + "str"):
                self.errors.append(f"{path or 'spec'} (line {knode.line}): keys must be plain "
                                   "names, not lists, mappings or tagged values")
                continue
            key = knode.value
            sub = f"{path}.{key}" if path else key
            if knode.tag is None and knode.implicit[0] and key == "<<":
                self.error(sub, knode.line, "merge keys (`<<: *name`) are not supported; write "
                                            "the keys out")
                continue
            if key in first:
                self.error(sub, knode.line, f"duplicate key (first given on line {first[key]})")
                out.pop(key, None)
                continue
            first[key] = knode.line
            self.lines.setdefault(sub, knode.line)
            v = self.value(vnode, sub, depth + 1)
            if v is not _MISSING:
                out[key] = v
        return out

    def scalar(self, node: _Node, path: str) -> Any:
        text, tag = node.value, node.tag
        if tag is None:
            tag = _RESOLVER.resolve(yaml.ScalarNode, text, node.implicit)
            if tag not in _SCALAR_TAGS:  # a bare date, `=` (!!value), `<<` (!!merge): text
                tag = _TAG + "str"
        elif tag == "!":
            tag = _TAG + "str"
        if tag not in _SCALAR_TAGS:
            self.error(path, node.line, f"{_short_tag(tag)} values are not supported")
            return _MISSING
        if tag == _TAG + "str":
            return text
        if tag == _TAG + "int" and len(text) > 40:
            self.error(path, node.line, f"a {len(text)}-character number is out of range for "
                                        "every setting")
            return _MISSING
        try:
            return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, yaml.ScalarNode(tag, text))
        except Exception:  # e.g. `!!int abc`, `!!bool maybe`
            self.error(path, node.line, f"{show_value(text)} is not a valid {_short_tag(tag)}")
            return _MISSING


def show_value(value: Any) -> str:
    """A value for a message: long numbers and strings shortened."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 15:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[:6]}... ({len(digits)} digits)"
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def show_number(value: float) -> str:
    return f"{value:g}" if abs(value) < 10 ** 15 else show_value(value)


def decode_spec(data: bytes) -> str:
    """Spec file bytes as text; SpecError-ready message (ValueError) when they are not UTF-8."""
    if b"\x00" in data:
        raise ValueError("not UTF-8 text: it contains NUL bytes (a UTF-16 or binary file?); "
                         "save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} is not "
                         "UTF-8 (Latin-1? binary?); save it as UTF-8") from None


def _text_problem(text: str) -> str | None:
    if len(text) > MAX_SPEC_BYTES:
        return f"larger than {MAX_SPEC_BYTES // MB} MiB: not a spec"
    if "\x00" in text:
        return "not UTF-8 text: it contains NUL characters (a UTF-16 or binary file?)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 text: it contains characters UTF-8 cannot hold (lone surrogates)"
    return None
