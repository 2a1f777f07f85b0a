"""Configuration errors in one line: YAML files that cannot be read (naming the file and line), and jsonargparse's
multi-line messages turned into one line that names the bad key and the nearest valid one."""
from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from evf.errors import UserError, first_line, one_line, user_error_within

FLAT_UNKNOWN = re.compile(r"does not accept option '([^']+)'")
NESTED_UNKNOWN = re.compile(r"Option '([^']+)' is not accepted")
CLASS_PATH = re.compile(r"class_path '([\w.]+)'")
PARSER_KEY = re.compile(r'Parser key "([^"]+)"')


class ConfigError(UserError, ValueError):
    """A YAML/command-line configuration problem (the CLI prints it as one line, exit 2)."""


def read_yaml_file(path: str | os.PathLike, what: str = "config") -> dict:
    """A YAML file holding a mapping (``{}`` when empty); anything else is one ``ConfigError`` naming the file,
    with the line and column of a syntax error."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {what} {path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or first_line(exc, 200)
        raise ConfigError(f"cannot read {what} {path}: not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise ConfigError(f"cannot read {what} {path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), type(data).__name__)
        raise ConfigError(f"{what} {path}: expected a mapping of sections (model:, data:, trainer: ...), got a {kind}")
    return data


@contextlib.contextmanager
def building_from_config(where: str | None = None) -> Iterator[None]:
    """Objects built from a configuration (``where``, e.g. ``config a.yaml``, prefixes the message): a ``ValueError``
    there (a value a constructor refuses, e.g. an unknown strategy name) or Lightning's ``MisconfigurationException``
    (devices this machine lacks) is a configuration mistake, raised as one ``ConfigError`` line. A ``UserError``
    about another file (a dataset's, a checkpoint) passes unchanged. Errors while training keep their traceback."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except (ValueError, MisconfigurationException) as exc:
        inner = user_error_within(exc)  # jsonargparse wraps a constructor's error in its own ValueError
        if inner is not None and not isinstance(inner, ConfigError):
            raise inner from None
        reason = str(inner) if inner is not None else first_listed_error(str(exc)) or one_line(exc)
        raise ConfigError(f"{where}: {reason}" if where else reason) from None


def config_file_arguments(args: Sequence[str]) -> list[str]:
    """The existing files given as ``--config FILE`` / ``--config=FILE`` (a missing one is left to jsonargparse)."""
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    return [p for p in paths if Path(p).is_file()]


def name_config_files(explained: str, raw: str, args: Sequence[str]) -> str:
    """``explained`` prefixed with the ``--config`` file(s) it comes from (jsonargparse names only the key), unless
    the key was set on the command line or the message already names a file."""
    files = config_file_arguments(args)
    keys = PARSER_KEY.findall(raw) + FLAT_UNKNOWN.findall(raw)
    given = {a.lstrip("-").split("=", 1)[0] for a in args if a.startswith("--")}
    if not files or any(k in given for k in keys) or any(f in explained for f in files):
        return explained
    return f"config {' + '.join(files)}: {explained}"


def parser_keys(parser) -> list[str]:
    """Every option key a (jsonargparse) parser and its subcommand parsers accept, without the subcommand."""
    keys = []
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and all(hasattr(p, "_actions") for p in choices.values()):
            for sub in choices.values():
                keys += parser_keys(sub)
        elif action.dest and not action.dest.endswith(".help") and action.dest != "help":
            keys.append(action.dest)
    return sorted(set(keys))


def class_arguments(class_path: str) -> list[str]:
    from evf.registry import import_class

    try:
        cls = import_class(class_path)
        params = inspect.signature(cls.__init__).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def explain_config_error(message: str, known_keys: Iterable[str] = ()) -> str:
    """One line: ``unknown config key 'model.warmup_step' (did you mean 'model.warmup_steps'?)``.

    Messages that are not about an unknown key are flattened to their first 300 characters.
    """
    flat = FLAT_UNKNOWN.search(message)
    if flat:
        key = flat.group(1)
        guess = nearest(key, known_keys)
        return f"unknown config key '{key}'" + (f" (did you mean '{guess}'?)" if guess else "")
    nested = NESTED_UNKNOWN.search(message)
    if nested:
        option = nested.group(1)
        before = message[: nested.start()]
        classes = CLASS_PATH.findall(before)
        where = ".".join(PARSER_KEY.findall(before))
        owner = classes[-1] if classes else None
        guess = nearest(option, class_arguments(owner)) if owner else None
        text = f"unknown config key '{option}'" + (f" under '{where}'" if where else "")
        hints = ([f"{owner} has no such argument"] if owner else []) + ([f"did you mean '{guess}'?"] if guess else [])
        return text + (f" ({'; '.join(hints)})" if hints else "")
    reason = first_listed_error(message)
    if reason:  # "Does not validate against any of the Union subtypes ... Errors: - <reason> - <reason>"
        keys = PARSER_KEY.findall(message)
        return (f'Parser key "{keys[0]}": ' if keys else "") + reason[:300]
    return " ".join(message.split())[:300]


def first_listed_error(message: str) -> str | None:
    """The first item (with its continuation lines) of jsonargparse's ``Errors:`` list, as one line."""
    lines = message.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Errors:"), None)
    if start is None or start + 1 >= len(lines) or not lines[start + 1].strip().startswith("- "):
        return None
    item = [lines[start + 1].strip()[2:]]
    indent = len(lines[start + 1]) - len(lines[start + 1].lstrip())
    for line in lines[start + 2:]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        item.append(line.strip())
    return " ".join(item)
