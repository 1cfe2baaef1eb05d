"""Reading a recipe: YAML with line numbers, `--set` / `--unset` in command-line order, and pydantic's errors turned
into one located line each (`file:line`, or the override that caused the problem).

Generic over the root model (passed in by recipe/schema.py), so it knows no recipe key. Only PyYAML and pydantic
are imported: `hft validate` reads recipes, and the schema module imports this.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from hftoolkit.errors import RecipeError
from hftoolkit.safety import HF_TOKEN_PATTERN


@dataclass(frozen=True)
class Unset:
    """`--unset KEY`: KEY is removed, so the default applies (measured per task, else the schema's; or one entry of a mapping is gone)."""

    key: str


# A plain string is a `--set key.path=value` item.
Override = Union[str, Unset]
# pydantic puts the branch of a union it tried into the error location ('int', 'dict[...]'); not a YAML key.
_UNION_BRANCHES = {"int", "str", "float", "bool"}
# A value shown back in a message is cut to this many characters: the message stays one readable line.
_SHOWN_CHARS = 80
# A cross-section check reports the key it is about at the start of its message: `dataset.files needs ...`.
_LEADING_PATH = re.compile(r"([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)(?:\[\d+\])* ")


class _Refused(Exception):
    """One override that cannot be applied; collected with every other problem."""


# --------------------------------------------------------------------------------------------------------------------
# YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: the second value would otherwise silently win."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a {type(key).__name__} cannot be a key (keys are names)", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first defined on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.1 reads yes/no/on/off as booleans, so `eval_strategy: no` would arrive as False. Recipes follow YAML 1.2:
# only true/false are booleans; `no` stays the string the user wrote.
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _key_lines(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each YAML path to the 1-based line where its key is written, for error messages."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            out[path] = key_node.start_mark.line + 1
            _key_lines(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            _key_lines(item, prefix + (i,), out)
    return out


def _yaml_problem(e: yaml.YAMLError) -> tuple[int | None, str]:
    """The 1-based line and one-line text of a YAML error (PyYAML's own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if "python/" in problem or "could not determine a constructor" in problem:
        problem = f"{problem}: YAML tags that build Python objects are refused (recipes are plain data)"
    return (mark.line + 1 if mark is not None else None), problem


def read_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    """The recipe file as a dict, plus the line of every key. Raises RecipeError."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(source, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(source, [f"cannot read the file ({e})"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
        lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader)) if data is not None else {}
    except yaml.YAMLError as e:
        line, problem = _yaml_problem(e)
        what = "" if isinstance(e, yaml.constructor.ConstructorError) else "not valid YAML: "
        raise RecipeError(source, [f"{source}{f':{line}' if line else ''}: {what}{problem}"]) from None
    except RecursionError:
        raise RecipeError(source, [f"{source}: nested too deeply to be a recipe"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, [f"{source}: the recipe must be a mapping of sections, got {type(data).__name__}"])
    return data, lines


# --------------------------------------------------------------------------------------------------------------------
# --set / --unset


def _redacted(text: str) -> str:
    return HF_TOKEN_PATTERN.sub("hf_***", text)


def override_label(item: Override) -> str:
    """How an override is named in messages: `--set training.epochs=abc`, `--unset model.revision`."""
    return _redacted(f"--unset {item.key}" if isinstance(item, Unset) else f"--set {item}")


def _key_path(key: str) -> list[str]:
    if not key or any(not p for p in key.split(".")):
        raise _Refused("expected a dotted key such as training.epochs")
    return key.split(".")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`training.learning_rate=1e-4` -> (["training", "learning_rate"], 0.0001). Values are YAML scalars."""
    if "=" not in item:
        raise _Refused("expected key.path=value")
    key, raw = item.split("=", 1)
    path = _key_path(key)
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw != "" else ""
    except yaml.YAMLError as e:
        raise _Refused(f"the value is not valid YAML ({_yaml_problem(e)[1]})") from None
    except RecursionError:
        raise _Refused("the value is nested too deeply") from None
    # YAML reads 1e-4 as a string (YAML 1.1 needs a dot); users mean a number.
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        value = float(value)
    return path, value


def _walk_to_parent(data: dict, path: list[str], create: bool) -> dict | None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            if not create:
                return None  # nothing there to remove
            child = node[part] = {}
        if not isinstance(child, dict):
            raise _Refused(f"{'.'.join(path[: i + 1])} is {shown_value(child)}, not a section")
        node = child
    return node


def _flat(annotation: Any) -> tuple:
    origin = get_origin(annotation)
    if origin is Annotated:  # a tagged union's branches (image classification's dataset.augment)
        return _flat(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return tuple(a for arg in get_args(annotation) for a in _flat(arg))
    return (annotation,)


def key_hint(key: str, valid: list[str]) -> str:
    """` (did you mean epochs?)` for a misspelt key, else the valid keys."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:
        # `rank` -> `r`, `lr_sched` -> `lr_scheduler`: prefixes that plain edit distance misses.
        prefixes = [v for v in valid if key.startswith(v) or v.startswith(key)]
        close = sorted(prefixes, key=lambda v: abs(len(v) - len(key)))[:1]
    return f" (did you mean {close[0]}?)" if close else (f" (valid keys: {', '.join(valid)})" if valid else "")


def check_key_path(root: type[BaseModel], path: Sequence[str]) -> None:
    """Refuse a dotted key the schema does not have, the way an unknown key in the YAML is refused."""
    model: type[BaseModel] | None = root
    mapping_keys: list[str] | None = None  # inside a mapping field: its allowed keys ([] = any)
    for i, part in enumerate(path):
        here = ".".join(path[: i + 1])
        if model is not None:
            valid = list(model.model_fields)
        elif mapping_keys is not None:
            valid = mapping_keys
        else:
            raise _Refused(f"{'.'.join(path[:i])} is a single value, it has no keys")
        if valid and part not in valid:
            # The override's label names the full key already; an inner part is named.
            named = "" if i == len(path) - 1 else f"{here}: "
            raise _Refused(f"{named}unknown key{key_hint(part, valid)}")
        if model is None:
            mapping_keys = None
            continue
        options = _flat(model.model_fields[part].annotation)
        model = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
        mapping = next((o for o in options if get_origin(o) is dict), None)
        mapping_keys = None
        if mapping is not None:
            key_type = get_args(mapping)[0] if get_args(mapping) else str
            mapping_keys = list(get_args(key_type)) if get_origin(key_type) is Literal else []


def apply_overrides(data: dict, overrides: Sequence[Override], root: type[BaseModel]) -> tuple[dict[tuple, str], list[str]]:
    """Apply --set / --unset to the YAML data in order. Returns which override last wrote each path, and the problems."""
    blame: dict[tuple, str] = {}
    problems: list[str] = []
    for item in overrides:
        label = override_label(item)
        try:
            if isinstance(item, Unset):
                path = _key_path(item.key)
                check_key_path(root, path)
                parent = _walk_to_parent(data, path, create=False)
                if parent is not None:
                    parent.pop(path[-1], None)
            else:
                path, value = parse_override(item)
                _walk_to_parent(data, path, create=True)[path[-1]] = value
        except _Refused as e:
            problems.append(f"{label}: {e}")
            continue
        key = tuple(path)
        for earlier in [p for p in blame if p[: len(key)] == key]:
            del blame[earlier]  # this override replaced what they wrote
        blame[key] = label
    return blame, problems


# --------------------------------------------------------------------------------------------------------------------
# Errors


def shown_value(value: Any) -> str:
    """A value as the user wrote it in YAML (null, true), never a token."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    shown = _redacted(repr(value))
    return shown if len(shown) <= _SHOWN_CHARS else f"{shown[:_SHOWN_CHARS]}... ({len(shown)} characters)"


def _clean(loc: tuple, data: Any) -> tuple[tuple, tuple | None, str | None]:
    """(YAML path, the path of the union whose branch this error is from, that branch) for one error location.

    pydantic adds validator and union-branch names ('function-after[...]', 'int', 'dict[...]') to locations; a part
    is one of those only when the data has no such key, so a user's key that looks like one (`'[]':`) is kept.
    """
    out: list = []
    union_at, branch = None, None
    node = data
    for p in loc:
        present = isinstance(node, dict) and p in node
        tag = isinstance(p, str) and (p.startswith("function-") or p in _UNION_BRANCHES or "[" in p)
        if tag and not present:
            if p != "[key]" and not p.startswith("function-") and union_at is None:
                union_at, branch = tuple(out), p
            continue
        out.append(p)
        indexable = isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node)
        node = node[p] if present or indexable else None
    return tuple(out), union_at, branch


def _relevant(errors: list[dict], data: dict) -> list[tuple[tuple, dict]]:
    """Each error with its YAML path; of a union's branches only the one that got furthest into the value."""
    cleaned = [(e, *_clean(tuple(e["loc"]), data)) for e in errors]
    best: dict[tuple, tuple[int, str]] = {}
    for e, _, union_at, branch in cleaned:
        if union_at is not None and len(e["loc"]) > best.get(union_at, (-1, ""))[0]:
            best[union_at] = (len(e["loc"]), branch)
    return [(loc, e) for e, loc, union_at, branch in cleaned if union_at is None or best[union_at][1] == branch]


def _is_schema_path(root: type[BaseModel], path: tuple) -> bool:
    try:
        check_key_path(root, path)
    except _Refused:
        return False
    return True


def _located(loc: tuple, msg: str, root: type[BaseModel]) -> tuple[tuple, bool]:
    """A check on a section that names a key inside it (`dataset.files needs ...`) is about that key."""
    m = _LEADING_PATH.match(msg)
    if m:
        path = tuple(m.group(1).split("."))
        if path[: len(loc)] == loc and _is_schema_path(root, path):
            return path, True
    return loc, False


def _where(loc: tuple, scope: tuple, source: str, lines: dict[tuple, int], blame: dict[tuple, str], new: bool) -> str:
    """Blame an override for what it wrote at `loc`, or for a check on the section `scope` that it broke (a problem the
    YAML alone does not have); otherwise the file and line of `loc`."""
    above = [p for p in blame if loc[: len(p)] == p]
    if above:
        return blame[max(above, key=len)]
    below = [p for p in blame if p[: len(scope)] == scope]
    if below and new:
        culprits = ", ".join(blame[p] for p in below)
        # A key the check names that the file wrote (not just the section header): both are needed to fix it.
        return f"{source}:{lines[loc]} with {culprits}" if loc != scope and loc in lines else culprits
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return f"{source}:{lines[loc[:end]]}"
    return source


def _problem(e: dict, loc: tuple, where: str, msg: str, root: type[BaseModel], blamed: str | None) -> str:
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    head = where if blamed == dotted else f"{where}: {dotted}"
    if e["type"] == "extra_forbidden" and loc:
        owner = _owner_model(root, loc[:-1])
        return f"{head}: unknown key{key_hint(str(loc[-1]), list(owner.model_fields) if owner else [])}"
    if e["type"] == "missing":
        return f"{head}: required key is missing"
    got = e.get("input")
    shown = "" if isinstance(got, (dict, list)) or e["type"].startswith("value_error") else f" (got {shown_value(got)})"
    if got is None and blamed == dotted and where.startswith("--set"):
        shown += f"; --unset {dotted} goes back to the default"
    return f"{head}: {msg}{shown}"


def _owner_model(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc`, to list valid sibling keys."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        options = _flat(model.model_fields[part].annotation)
        model = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
    return model


def _error_keys(root: type[BaseModel], data: dict) -> set[tuple]:
    """The problems the YAML has without the overrides: an override is blamed only for problems it added."""
    try:
        root.model_validate(data)
    except ValidationError as err:
        return {(_clean(tuple(e["loc"]), data)[0], e["msg"]) for e in err.errors()}
    except RecursionError:
        pass
    return set()


def format_errors(
    err: ValidationError, root: type[BaseModel], source: str, lines: dict[tuple, int], blame: dict[tuple, str],
    data: dict, yaml_only: dict,
) -> list[str]:
    """One line per problem: where (file:line or the override), the YAML path, what is wrong."""
    before = _error_keys(root, yaml_only) if blame else set()
    problems = []
    for loc, e in _relevant(err.errors(), data):
        msg = e["msg"].removeprefix("Value error, ")
        new = (loc, e["msg"]) not in before
        scope = loc
        loc, from_msg = _located(loc, msg, root)
        where = _where(loc, scope, source, lines, blame, new)
        # The override wrote exactly this key: its label already names it.
        blamed = ".".join(map(str, loc)) if blame.get(loc) == where else None
        if from_msg:
            # The message already starts with the path it is about.
            problems.append(f"{where}: {msg}")
            continue
        problems.append(_problem(e, loc, where, msg, root, blamed))
    return problems


def load_validated(path: str | Path, overrides: Sequence[Override], root: type[BaseModel]) -> Any:
    """Read, merge and validate. Raises RecipeError listing every problem: the file's, the overrides' and the schema's."""
    source = str(path)
    data, lines = read_yaml(Path(path))
    yaml_only = copy.deepcopy(data)
    blame, problems = apply_overrides(data, overrides, root)
    try:
        result = root.model_validate(data)
    except ValidationError as err:
        problems += format_errors(err, root, source, lines, blame, data, yaml_only)
    except RecursionError:
        problems.append(f"{source}: nested too deeply to be a recipe")
    if problems:
        raise RecipeError(source, problems)
    return result
