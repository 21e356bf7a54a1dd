"""Settings: packaged defaults, then a TOML file, then IVR_<SECTION>__<KEY> environment variables."""
from __future__ import annotations

import copy
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    pass


def _coerce(value: str, like: Any, name: str) -> Any:
    try:
        if isinstance(like, bool):
            if value.lower() in ("1", "true", "yes", "on", "oui"):
                return True
            if value.lower() in ("0", "false", "no", "off", "non"):
                return False
            raise ValueError(value)
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected a {type(like).__name__}") from None
    return value


_KINDS = ((bool, "true or false"), (int, "a whole number"), (float, "a number"), (str, "a text in quotes"),
          (list, "a list [...]"))


def _check_kind(like: Any, value: Any, where: str) -> None:
    """A value of the default's type (a number for a float): `port = "cinq"` is refused at once,
    not found out by the code that uses it, after minutes of loading."""
    for kind, name in _KINDS:
        if type(like) is kind:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else \
                type(value) is kind
            if not ok:
                raise ConfigError(f"{where} = {value!r}: expected {name}")
            return


def _merge(base: dict, extra: dict, where: str) -> None:
    for key, value in extra.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            _merge(base[key], value, f"{where} [{key}]")
        else:
            _check_kind(base[key], value, f"{where}: {key}")
            base[key] = value


class Config(dict):
    """A nested dict of settings; `cfg.data_dir` and friends resolve paths."""

    @property
    def data_dir(self) -> Path:
        return Path(self["paths"]["data"]).resolve()

    @property
    def corpus_dir(self) -> Path:
        return Path(self["paths"]["corpus"]).resolve()

    @property
    def cache_dir(self) -> Path:
        return Path(self["paths"]["cache"]).resolve() if self["paths"]["cache"] else self.data_dir / "cache"

    @property
    def recordings_dir(self) -> Path:
        return Path(self["paths"]["recordings"]).resolve() if self["paths"]["recordings"] else self.data_dir / "recordings"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ivr.db"

    @property
    def models_dir(self) -> Path:
        return Path(self["paths"]["models"]).resolve() if self["paths"]["models"] else self.data_dir / "models"


def load_config(path: str | os.PathLike | None = None, env: dict | None = None) -> Config:
    env = os.environ if env is None else env
    defaults = tomllib.loads(resources.files("ivr").joinpath("default_config.toml").read_text())
    cfg = Config(copy.deepcopy(defaults))
    path = path or env.get("IVR_CONFIG") or ("ivr.toml" if Path("ivr.toml").exists() else None)
    if path:
        try:
            with open(path, "rb") as fh:
                _merge(cfg, tomllib.load(fh), str(path))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    if env.get("IVR_DATA"):
        cfg["paths"]["data"] = env["IVR_DATA"]
    for name, value in env.items():
        if not name.startswith("IVR_") or "__" not in name:
            continue
        section, _, key = name[4:].lower().partition("__")
        if section not in cfg or key not in cfg[section]:
            raise ConfigError(f"environment variable {name}: no setting [{section}] {key}")
        cfg[section][key] = _coerce(value, cfg[section][key], name)
    return cfg
