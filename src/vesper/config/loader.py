"""Reading configuration files and ``--name=value`` overrides into ``Settings``.

Configuration is read only at the edges (CLI, server start); everything else takes a
``Settings``.
"""

from __future__ import annotations

import ast
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from vesper.config.settings import Settings, resolve_names, takes_text
from vesper.errors import ConfigError


def load_settings(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, object] | Sequence[str] = (),
) -> Settings:
    """Read ``path`` (if given), apply ``overrides`` on top and validate.

    ``overrides`` is a mapping of names to values, or command-line strings
    ``--name=value``. Raises ConfigError with a one-line message on any problem.
    """
    values: dict[str, object] = {}
    if path is not None:
        found = parse_file(path)
        try:
            values = resolve_names(found)
        except ConfigError as error:
            raise ConfigError(f"{os.fspath(path)}: {error}") from None
    if isinstance(overrides, str):
        raise TypeError("overrides must be a mapping or a sequence of '--name=value' strings")
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    values.update(resolve_names(overrides))
    return Settings.from_mapping(values)


def parse_file(path: str | os.PathLike[str]) -> dict[str, object]:
    """The variables a configuration file sets, by the names it uses (aliases unresolved).

    ``.toml`` is TOML, ``.json`` is JSON; any other file is JSON when it starts with
    ``{``, else Vesper style (``name = <Python literal>`` lines).
    """
    text = _read(path)
    suffix = Path(path).suffix.lower()
    if suffix == ".toml":
        return _parse_toml(path, text)
    if suffix == ".json" or text.lstrip().startswith("{"):
        return _parse_json(path, text)
    return _parse_vesper_style(text, os.fspath(path))


def _read(path: str | os.PathLike[str]) -> str:
    try:
        # utf-8-sig: editors on Windows like to start files with a byte-order mark.
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot read configuration file {os.fspath(path)}: {reason}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{os.fspath(path)}: not UTF-8 text ({error.reason})") from None


def _parse_toml(path: str | os.PathLike[str], text: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{os.fspath(path)}: invalid TOML: {error}") from None


def _parse_json(path: str | os.PathLike[str], text: str) -> dict[str, object]:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{os.fspath(path)}:{error.lineno}: invalid JSON: {error.msg}") from None
    except ValueError as error:
        raise ConfigError(f"{os.fspath(path)}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{os.fspath(path)}: expected a JSON object of variables")
    return data


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"{key!r} appears twice in one JSON object")
        result[key] = value
    return result


def _parse_vesper_style(text: str, filename: str = "<config>") -> dict[str, object]:
    """Parse ``name = <Python literal>`` lines without executing anything.

    Only top-level assignments of a literal to a plain name are allowed; anything else
    is a ConfigError naming the file and line.
    """
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as error:
        raise ConfigError(f"{filename}:{error.lineno}: invalid syntax: {error.msg}") from None
    except (ValueError, RecursionError, MemoryError) as error:
        # NUL bytes or absurd nesting: not a configuration file either way.
        raise ConfigError(f"{filename}: cannot parse: {error!r}") from None
    values: dict[str, object] = {}
    lines: dict[str, int] = {}
    for node in tree.body:
        where = f"{filename}:{node.lineno}"
        if not (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            raise ConfigError(f"{where}: expected 'name = <literal>', got {_source(text, node)}")
        name = node.targets[0].id
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            raise ConfigError(
                f"{where}: {name}: expected a literal (string, number, True/False/None, "
                f"list, tuple or dict), got {_source(text, node.value)}{_hint(node.value)}"
            ) from None
        if name in values:
            raise ConfigError(f"{where}: {name} is already set on line {lines[name]}")
        values[name], lines[name] = value, node.lineno
    return values


def _hint(node: ast.expr) -> str:
    # The likeliest mistake: TOML or JSON spelling in a Vesper-style file.
    spelling = {"true": "True", "false": "False", "null": "None"}
    if isinstance(node, ast.Name) and node.id in spelling:
        return f" (write {spelling[node.id]}, or name the file .toml/.json)"
    return ""


def _source(text: str, node: ast.AST) -> str:
    source = (ast.get_source_segment(text, node) or ast.dump(node)).replace("\n", " ")
    return repr(source if len(source) <= 60 else source[:57] + "...")


def parse_overrides(args: Sequence[str]) -> dict[str, object]:
    """Turn ``--name=value`` strings into a mapping; later ones win.

    A value is a Python literal where it parses (``--port=8001``,
    ``--replication_hosts=[('h', 61613)]``), else JSON (``true``, ``null``), else the
    text itself (``--work_dir=/tmp/x``). For a string variable such as ``branch_id``
    a number is kept as text, so ``--branch_id=01`` and ``--replication_passcode=1234``
    mean the strings.
    """
    values: dict[str, object] = {}
    for arg in args:
        if not isinstance(arg, str) or not arg.startswith("--"):
            raise ConfigError(f"expected an override '--name=value', got {arg!r}")
        name, sep, text = arg[2:].partition("=")
        if not sep:
            raise ConfigError(f"override {arg!r} has no value: write --{name}=<value>")
        if not name:
            raise ConfigError(f"override {arg!r} has no name: write --<name>={text}")
        values[name] = _parse_value(name, text)
    return values


def _parse_value(name: str, text: str) -> object:
    try:
        value: object = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        try:
            value = json.loads(text)
        except ValueError:
            return text
    if takes_text(name) and not isinstance(value, str) and value is not None:
        return text
    return value
