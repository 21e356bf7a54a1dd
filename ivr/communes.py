"""The communes one install serves. By default one: the knowledge in [paths] corpus. With [paths]
communes naming a folder, every subfolder holding a commune.yaml is a commune (the folder's name is
its id) and the number the caller dialled, passed by the dialplan (X-Mairie-Numero), picks it among
the numbers its commune.yaml lists under `commune.numeros`."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ivr.config import ConfigError

ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


@dataclass(frozen=True)
class Commune:
    id: str                     # "" for the single commune of a one-commune install
    corpus_dir: Path
    numbers: tuple[str, ...] = ()
    name: str = ""
    retention_days: int = 0     # commune.yaml conservation_jours (0: [call] retention_days)


def plain_number(number: str) -> str:
    """"01 99 47 20 00", "01.99.47.20.00" -> "0199472000" (a leading + kept)."""
    n = str(number).strip()
    return ("+" if n.startswith("+") else "") + re.sub(r"\D", "", n)


def load_communes(cfg) -> dict[str, Commune]:
    folder = str(cfg["paths"].get("communes") or "")
    if not folder:
        return {"": Commune("", cfg.corpus_dir)}
    root = Path(folder).resolve()
    if not root.is_dir():
        raise ConfigError(f"[paths] communes = {folder} : dossier introuvable")
    out: dict[str, Commune] = {}
    owner: dict[str, str] = {}
    for d in sorted(p for p in root.iterdir() if (p / "commune.yaml").is_file()):
        if not ID.match(d.name):
            raise ConfigError(f"{d} : nom de dossier de commune invalide (minuscules, chiffres, - et _)")
        try:
            data = (yaml.safe_load((d / "commune.yaml").read_text(encoding="utf-8")) or {}).get("commune") or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{d / 'commune.yaml'} : YAML illisible ({exc})") from None
        numbers = tuple(plain_number(n) for n in data.get("numeros") or [])
        for n in numbers:
            if n in owner:
                raise ConfigError(f"le numéro {n} est à la fois à {owner[n]} et à {d.name}")
            owner[n] = d.name
        try:
            days = int(data.get("conservation_jours") or 0)
        except (TypeError, ValueError):
            raise ConfigError(f"{d / 'commune.yaml'} : conservation_jours doit être un nombre de jours") from None
        out[d.name] = Commune(d.name, d, numbers, str(data.get("nom") or d.name), days)
    if not out:
        raise ConfigError(f"[paths] communes = {folder} : aucun dossier de commune (avec un commune.yaml)")
    return out


def retention(communes: dict[str, Commune]) -> dict[str, int]:
    """Days each commune keeps its calls, for those with their own limit."""
    return {c.id: c.retention_days for c in communes.values() if c.retention_days}


def commune_for(communes: dict[str, Commune], number: str | None) -> Commune:
    """The commune a dialled number reaches; the first one for a number no commune lists."""
    n = plain_number(number or "")
    for c in communes.values():
        if n and n in c.numbers:
            return c
    return next(iter(communes.values()))


def desk_extension(corpus) -> str | None:
    """The commune's reception extension (commune.yaml services.accueil.poste), where its callers'
    transfers go when no service is named."""
    try:
        poste = str((corpus.commune.data.get("services") or {}).get("accueil", {}).get("poste") or "").strip()
    except AttributeError:
        return None
    return poste or None
