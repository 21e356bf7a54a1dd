"""Console accounts (argon2 password hashes in the call database), secrets kept outside git, and
the audit log of who did what with personal data."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ivr.store import Store, now_iso

ROLES = ("admin", "agent")
ROLE_NAMES = {"admin": "administrateur", "agent": "standard"}
_hasher = PasswordHasher()
# verified against when the name is unknown, so that a wrong name costs as long as a wrong password
_DUMMY = _hasher.hash("not a password")


class AccountError(ValueError):
    pass


def secret(data_dir: Path, name: str, nbytes: int = 32) -> str:
    """A random secret stored in data/secrets/NAME (mode 0600), created on first use."""
    folder = Path(data_dir) / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


class Accounts:
    def __init__(self, store: Store):
        self.store = store

    def add(self, name: str, role: str, password: str, commune: str = "") -> None:
        """`commune`: on an install that serves several, the only commune the account sees ("": all)."""
        name = name.strip()
        if not name or len(name) > 64 or not name.replace("-", "").replace(".", "").replace("_", "").isalnum():
            raise AccountError("nom invalide (lettres, chiffres, . - _ ; 64 caractères au plus)")
        if role not in ROLES:
            raise AccountError(f"rôle inconnu : {role} (admin ou agent)")
        if len(password) < 10:
            raise AccountError("mot de passe trop court (10 caractères au moins)")
        with self.store._lock:
            if self.get(name):
                raise AccountError(f"le compte {name} existe déjà")
            self.store.db["users"].insert({"name": name, "role": role, "pw_hash": _hasher.hash(password),
                                           "created_at": now_iso(), "commune": commune})

    def set_password(self, name: str, password: str) -> None:
        if not self.get(name):
            raise AccountError(f"compte inconnu : {name}")
        if len(password) < 10:
            raise AccountError("mot de passe trop court (10 caractères au moins)")
        with self.store._lock:
            self.store.db["users"].update(name, {"pw_hash": _hasher.hash(password)})

    def remove(self, name: str) -> None:
        if not self.get(name):
            raise AccountError(f"compte inconnu : {name}")
        with self.store._lock:
            self.store.db["users"].delete(name)

    def get(self, name: str) -> dict | None:
        rows = list(self.store.db.query("select name, role, commune, created_at, last_login from users "
                                        "where name = ?", [name]))
        return rows[0] if rows else None

    def list(self) -> list[dict]:
        return list(self.store.db.query("select name, role, commune, created_at, last_login from users order by name"))

    def verify(self, name: str, password: str) -> dict | None:
        rows = list(self.store.db.query("select * from users where name = ?", [name]))
        try:
            _hasher.verify(rows[0]["pw_hash"] if rows else _DUMMY, password)
        except (VerificationError, InvalidHashError):
            return None
        if not rows:
            return None
        with self.store._lock:
            self.store.db["users"].update(name, {"last_login": now_iso()})
            if _hasher.check_needs_rehash(rows[0]["pw_hash"]):
                self.store.db["users"].update(name, {"pw_hash": _hasher.hash(password)})
        return {"name": rows[0]["name"], "role": rows[0]["role"]}

    def ensure_admin(self) -> str | None:
        """The first set-up: an 'admin' account with a generated password, returned once (None when
        any account exists already)."""
        if self.list():
            return None
        password = secrets.token_urlsafe(12)
        self.add("admin", "admin", password)
        return password


def audit(store: Store, user: str, action: str, target: str = "", **detail) -> None:
    with store._lock:
        store.db["audit"].insert({"at": now_iso(), "user": user, "action": action, "target": target,
                                  "detail": json.dumps(detail, ensure_ascii=False) if detail else None})
