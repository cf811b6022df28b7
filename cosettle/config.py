"""Dataclass configs with YAML load/dump and argparse overrides (one mechanism for every CLI).

    @dataclass
    class TrainConfig:
        lr: float = 1e-4
        epochs: int = 5

    parser = argparse.ArgumentParser()
    add_config_args(parser, TrainConfig)          # --lr, --epochs, and --config FILE.yaml
    cfg = config_from_args(TrainConfig, parser.parse_args())

Precedence: dataclass defaults < ``--config`` YAML < explicit command-line flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError
from .io.atomic import write_text

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    return hints.get(f.name, str)


def _parse_value(tp, text: str):
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if text.lower() in ("none", "null", ""):
            return None
        return _parse_value(args[0], text) if len(args) == 1 else yaml.safe_load(text)
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")
    if tp in (int, float, str):
        return tp(text)
    return yaml.safe_load(text)  # lists, tuples, dicts


def add_config_args(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple = ()) -> None:
    """Add one ``--flag`` per dataclass field (help text from ``metadata['help']``)."""
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", type=Path, default=None, help="YAML file with config values")
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        group.add_argument(_flag(prefix + f.name), dest=prefix + f.name, default=argparse.SUPPRESS,
                           type=lambda s, tp=tp: _parse_value(tp, s), metavar=getattr(tp, "__name__", "VALUE").upper(),
                           # argparse formats help with %: a literal one ("0.5 % of the frame") must be doubled
                           help=f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%"))


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"unknown {source} keys: {sorted(unknown)}", f"valid keys: {sorted(names)}")
    return cls(**data)


def config_from_args(cls: type[T], args: argparse.Namespace, prefix: str = "", base: T | None = None) -> T:
    values: dict[str, Any] = dataclasses.asdict(base) if base is not None else {}
    cfg_file = getattr(args, "config", None)
    if cfg_file:
        values.update(load_yaml_dict(cfg_file))
    names = {f.name for f in dataclasses.fields(cls)}
    for key, val in vars(args).items():
        if key.startswith(prefix) and key[len(prefix):] in names:
            values[key[len(prefix):]] = val
    values = {k: v for k, v in values.items() if k in names}
    return config_from_dict(cls, values)


def load_yaml_dict(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}", "check --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"malformed YAML in {path}: {str(err).splitlines()[0]}", "fix the file") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a config file", "e.g. 'lr: 0.001'") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config keys", "e.g. 'lr: 0.001'")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    return config_from_dict(cls, load_yaml_dict(path), source=str(path))


def to_dict(cfg) -> dict[str, Any]:
    def clean(v):
        if isinstance(v, tuple):
            return [clean(x) for x in v]
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return {k: clean(v) for k, v in dataclasses.asdict(cfg).items()}


def dump_yaml(cfg, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=False)
    if path is not None:
        write_text(path, text)
    return text
