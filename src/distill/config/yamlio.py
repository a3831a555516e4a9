"""Reading config text: YAML in (no code runs), ``key.path=value`` overrides, merged dictionaries.

A config file is plain data, read by :class:`ConfigLoader` (PyYAML's ``SafeLoader``: no code runs)
which also refuses a key given twice in one mapping and aliases that expand beyond
:data:`MAX_ALIAS_EXPANSION` values (the "billion laughs" shape).
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key path and what to do."""


MAX_ALIAS_EXPANSION = 10_000
"""The most values (scalars, lists and mappings, counted as if every alias were written out) that the
aliases of one YAML document may add. A config has a few hundred; nested aliases multiply (nine
levels of nine aliases make 9**9), and every consumer of the config would walk them all."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for config files, built-in configs and ``--set`` values: a mapping that gives
    a key twice is an error (naming both lines) rather than the last one silently winning, as is an alias
    that refers to a node containing it, or aliases expanding the document beyond
    :data:`MAX_ALIAS_EXPANSION` values. Errors are :class:`ConfigError` without the source's name; use
    :func:`load_yaml`, which adds it."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._done: set[int] = set()  # ids of the nodes composed completely
        self._sizes: dict[int, int] = {}  # id -> values in the node, aliases written out
        self._expanded = 0  # values the aliases have added so far

    def _size(self, node: yaml.Node) -> int:
        if id(node) not in self._sizes:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            self._sizes[id(node)] = 1 + sum(self._size(c) for c in children)
        return self._sizes[id(node)]

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            assert node is not None  # an alias names a node composed before
            where = f"line {event.start_mark.line + 1}"
            if id(node) not in self._done:
                raise ConfigError(f"{where}: alias *{event.anchor} refers to a node that contains it (a recursive "
                                  f"structure); write the values out")
            self._expanded += self._size(node)
            if self._expanded > MAX_ALIAS_EXPANSION:
                raise ConfigError(f"{where}: alias *{event.anchor} makes the aliases expand to more than "
                                  f"{MAX_ALIAS_EXPANSION:,} values (nested aliases multiply, as in the 'billion "
                                  f"laughs' attack); write the values out or use fewer nested aliases")
            return node
        node = super().compose_node(parent, index)
        self._done.add(id(node))
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then overriding keys: the usual merge, not a duplicate
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor says so
                if first is not None:
                    raise ConfigError(f"line {line}: key {key!r} is given twice in one mapping, on line {first} "
                                      f"and on line {line} (the last would silently win); keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """``text`` read with :class:`ConfigLoader`; a mistake is a :class:`ConfigError` naming ``source`` and
    the line."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    except ConfigError as e:
        raise ConfigError(f"{source}, {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from None
    finally:
        loader.dispose()

def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` -> (["train", "epochs"], 5). The value is read as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. train.epochs=5")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty key in its path {key!r}")
    value = load_yaml(raw, f"override {text!r}") if raw.strip() else None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is {child!r}, not a section with keys")
            node = child
        node[path[-1]] = value
    return out


def builtin_config(name: str) -> dict[str, Any]:
    """A config shipped with the package (``distill/configs/<name>.yaml``) as a raw dict."""
    text = resources.files("distill").joinpath("configs").joinpath(f"{name}.yaml").read_text()
    return load_yaml(text, f"built-in config {name}")
