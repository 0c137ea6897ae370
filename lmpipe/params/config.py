"""Typed parameters: every knob of an experiment, validated before any compute starts.

`params.yaml` has one section per stage. `load_params` reads it, applies command-line overrides
(`teacher.train.steps=100`), and validates the whole tree, so a typo or a wrong type in any section
fails the first stage that runs, with the key named, instead of surfacing mid-pipeline.

Each section lives beside the package that reads it (`lmpipe/data/params.py`,
`lmpipe/model/params.py`, `lmpipe/train/params.py`, `lmpipe/distill/params.py`,
`lmpipe/eval/params.py`) and checks its own keys; `Params` here composes them, and what ties
sections together (people counts, vocabulary sizes, sequence lengths, layer maps, paths) is
`lmpipe/params/checks.py`. A `ConfigError` has one
line per problem: `params.yaml: <dotted.key>: <what is wrong>; expected <what>`. Nothing here
imports torch or transformers: `python -m stages.validate` answers in well under two seconds.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from lmpipe.core.section import ConfigError, Section, short
from lmpipe.data.params import DataParams, TokenizeParams, WorldParams
from lmpipe.distill.params import DistillParams, QuantizeParams, TeacherCacheParams
from lmpipe.eval.params import EvalParams
from lmpipe.params.arch_support import training_problems
from lmpipe.params.checks import problems
from lmpipe.params.environment import environment_problems
from lmpipe.train.params import ModelRunParams


class ParamsProblems(ValueError):
    """Problems between sections (lmpipe/params/checks.py), carried whole through pydantic so
    that each becomes its own line."""

    def __init__(self, problems: list[Any]) -> None:
        super().__init__("; ".join(p.line("params") for p in problems))
        self.problems = problems


class Params(Section):
    """The whole params.yaml: every section, and the checks between them (params/checks.py)."""

    data: DataParams = DataParams()
    world: WorldParams = WorldParams()
    tokenize: TokenizeParams = TokenizeParams()
    teacher: ModelRunParams = ModelRunParams()
    student: ModelRunParams = ModelRunParams()
    teacher_cache: TeacherCacheParams = TeacherCacheParams()
    distill: DistillParams = DistillParams()
    quantize: QuantizeParams = QuantizeParams()
    eval: EvalParams = EvalParams()

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        found = problems(self) + list(training_problems(self))
        if found:
            raise ParamsProblems(found)
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{key}' is a value, not a section; expected "
                              f"{key}=VALUE")
        node = child
    node[leaf] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML scalars (`3`, `1e-3`, `true`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': no '='; expected key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


# --- messages -------------------------------------------------------------------------------------

# PyYAML follows YAML 1.1, where 1e-3 (no dot, unsigned exponent) is a string, not a float
_EXPONENT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_SUBKEY = re.compile(r"^([A-Za-z_]\w*)((?:\.[\w-]+)*): (.*)$", re.DOTALL)


def _section_of(annotation: Any) -> type[Section] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def _key_path(loc: tuple) -> tuple[list[str], type[Section]]:
    """The keys of the params tree an error location names, and the section holding the last one.

    pydantic appends union members (`str`, `list[int]`) and list indexes after the key; they are
    not keys of the file, so the path stops before them."""
    parts: list[str] = []
    section: type[Section] = Params
    node: type[Section] | None = Params
    for item in loc:
        if not isinstance(item, str) or node is None:
            break  # a list index or a union member: not a key of the file
        parts.append(item)
        if node is dict:  # a mapping's key (distill.objective.<term>) ends the path
            break
        section = node
        field = node.model_fields.get(item)
        if field is None:  # an unknown key
            break
        node = _section_of(field.annotation)
        if node is None and typing.get_origin(field.annotation) is dict:
            node = dict  # type: ignore[assignment]
    return parts, section


def _unknown_key(parts: list[str], section: type[Section], source: str) -> str:
    key, name, parent = ".".join(parts), parts[-1], ".".join(parts[:-1])
    allowed = list(section.model_fields)
    near = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if near:
        expected = f"'{parent + '.' if parent else ''}{near[0]}'"
        return f"{source}: unknown key '{key}'; expected {expected} or another key of " \
               f"{parent or 'the file'}"
    if len(allowed) <= 12:
        return f"{source}: unknown key '{key}'; expected one of {', '.join(allowed)}"
    return f"{source}: unknown key '{key}'; expected a key of {parent} (lmpipe/params/config.py)"


def _value_line(errors: list[dict[str, Any]], parts: list[str], source: str) -> str:
    first = errors[0]
    if first["type"] == "value_error":  # a section's own check: "<subkey>: <what>; expected ..."
        text = str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
        match = _SUBKEY.match(text)
        node: type[Section] | None = Params
        for part in parts:
            field = node.model_fields.get(part) if node else None
            node = _section_of(field.annotation) if field else None
        if match and node is not None and match.group(1) in node.model_fields:
            parts = [*parts, match.group(1) + match.group(2)]
            text = match.group(3)
        return f"{source}: {'.'.join(parts) or '(top level)'}: {text}"
    messages = list(dict.fromkeys(e["msg"] for e in errors))
    value = first.get("input")
    got = "" if isinstance(value, (dict, list)) else f" (got {short(value)})"
    hint = ""
    if isinstance(value, str) and _EXPONENT_TEXT.fullmatch(value.strip()):
        hint = (f"; YAML reads {value!r} as text: write it with a dot and a signed exponent "
                "(1.0e-3) or as a decimal (0.001)")
    return f"{source}: {'.'.join(parts) or '(top level)'}: {' or '.join(messages)}{got}{hint}"


def _describe(exc: ValidationError, source: str) -> list[str]:
    """One line per problem: pydantic's errors for one key (one per union member) become one."""
    lines: list[str] = []
    by_key: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for err in exc.errors():
        error = err.get("ctx", {}).get("error")
        if isinstance(error, ParamsProblems):
            lines += [problem.line(source) for problem in error.problems]
            continue
        parts, section = _key_path(err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(parts, section, source))
            continue
        by_key.setdefault(tuple(parts), []).append(err)
    lines += [_value_line(errors, list(parts), source) for parts, errors in by_key.items()]
    return lines


def validate_params(tree: dict[str, Any], source: str = "params", *, environment: bool = False,
                    root: str | Path = ".") -> Params:
    """The validated params of `tree`, or a ConfigError with one line per problem.

    `environment`: also check what the file asks of this machine (input files exist, lm-eval
    knows the harness tasks, optional packages are installed; lmpipe/params/checks.py), relative
    to the project folder `root`. Sweeps and recipes leave it off: a grid point may name a file
    that only the run's own workspace has."""
    try:
        params = Params.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(exc, source))) from None
    if environment:
        found = environment_problems(params, Path(root))
        if found:
            raise ConfigError("\n".join(problem.line(source) for problem in found))
    return params


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None, *,
                environment: bool = False) -> Params:
    """Read, override and validate a params file (see `validate_params`; paths in it are relative
    to the working directory, the project). Raises ConfigError naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)}); "
                          "expected a mapping of sections") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a {type(tree).__name__} at the top; expected a mapping of "
                          "sections")
    return validate_params(apply_overrides(tree, overrides or []), source=str(path),
                           environment=environment)
