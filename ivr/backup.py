"""`ivr backup` / `ivr restore`: everything a town hall would lose with its server, in one file.

The archive (tar, gzip) holds the database (SQLite's online backup: consistent while the assistant
and the console write), the recordings, the commune's knowledge (corpus/), the settings file and
the secrets (SIP and trunk passwords, console key, TLS certificate), and a manifest with each
file's SHA-256. It holds personal data and secrets: it is written readable by its owner only."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from pathlib import Path

FORMAT = 1
TABLES = ("calls", "turns", "events", "reports", "callbacks", "users", "audit")


class BackupError(Exception):
    """A backup or restore that cannot be done (the message is in French); nothing was changed."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def settings_file(cfg) -> Path | None:
    """The settings file in use, if any ($IVR_CONFIG, or ./ivr.toml)."""
    p = os.environ.get("IVR_CONFIG") or ("ivr.toml" if Path("ivr.toml").exists() else "")
    return Path(p).resolve() if p else None


def _counts(db_path: Path) -> dict:
    con = sqlite3.connect(db_path)
    try:
        names = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
        out = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES if t in names}
        out["schema"] = [r[0] for r in con.execute("select name from migrations order by name")] \
            if "migrations" in names else []
        return out
    finally:
        con.close()


def backup(cfg, out: Path) -> dict:
    """Write the archive to `out` (atomically, mode 0600); returns its manifest."""
    out = Path(out).resolve()
    if cfg["store"]["url"]:
        raise BackupError("les appels sont dans PostgreSQL ([store] url) : sauvegardez la base avec pg_dump, "
                          "et les enregistrements, la connaissance et les réglages avec vos sauvegardes de fichiers")
    db_path = cfg.db_path
    if not db_path.exists():
        raise BackupError(f"pas de base de données à sauvegarder ({db_path})")
    items: list[tuple[str, Path]] = []                 # (name in the archive, file)
    with tempfile.TemporaryDirectory(prefix="ivr-backup-") as tmp:
        snap = Path(tmp) / "ivr.db"
        src, dst = sqlite3.connect(db_path, timeout=30), sqlite3.connect(snap)
        try:
            src.backup(dst)                            # a consistent copy, writers go on meanwhile
        finally:
            dst.close()
            src.close()
        items.append(("ivr.db", snap))
        folders = [(cfg.recordings_dir, "recordings"), (cfg.data_dir / "secrets", "secrets"),
                   (cfg.corpus_dir, "corpus")]
        if cfg["paths"].get("communes"):               # several communes: each one's knowledge
            folders.append((Path(cfg["paths"]["communes"]).resolve(), "communes"))
        for folder, prefix in folders:
            if folder.is_dir():
                for p in sorted(folder.rglob("*")):
                    if p.is_file() and not p.is_symlink():
                        items.append((f"{prefix}/{p.relative_to(folder).as_posix()}", p))
        settings = settings_file(cfg)
        if settings and settings.is_file():
            items.append(("ivr.toml", settings))
        manifest = {"format": FORMAT, "created_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "counts": _counts(snap),
                    "files": {name: {"sha256": file_sha256(p), "size": p.stat().st_size} for name, p in items}}
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(f".{out.name}.part")
        part.unlink(missing_ok=True)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
                data = json.dumps(manifest, indent=1, ensure_ascii=False).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size, info.mtime, info.mode = len(data), int(dt.datetime.now().timestamp()), 0o600
                tar.addfile(info, io.BytesIO(data))
                for name, p in items:
                    tar.add(p, arcname=name, recursive=False)
                f.flush()
                os.fsync(f.fileno())
            part.replace(out)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return manifest


def _read(archive: Path) -> tuple[tarfile.TarFile, dict]:
    try:
        tar = tarfile.open(archive, "r:gz")
        manifest = json.loads(tar.extractfile("manifest.json").read())
    except FileNotFoundError:
        raise BackupError(f"sauvegarde introuvable : {archive}") from None
    except (tarfile.TarError, KeyError, OSError, EOFError, ValueError, AttributeError) as exc:
        raise BackupError(f"{archive} n'est pas une sauvegarde lisible ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} : format de sauvegarde {manifest.get('format')!r} inconnu")
    return tar, manifest


def _aside(path: Path) -> Path:
    """Where a restored file or folder goes when `path` is in use and not to be replaced."""
    return path.with_name(path.name + ".restauré")


def restore(cfg, archive: Path, force: bool = False, settings: Path | None = None) -> dict:
    """Put a backup back: into an empty data folder, or over the current one with force=True.
    Every file is checked against the manifest before anything is written. The corpus and the
    settings file, when they exist and force is not given, are restored next to them
    (".restauré") for the admin to compare. `settings`: where the settings file goes (default: the
    one in use, or ./ivr.toml). Returns {"manifest", "placed": {part: path}}."""
    archive = Path(archive).resolve()
    tar, manifest = _read(archive)
    data, corpus = cfg.data_dir, cfg.corpus_dir
    settings = Path(settings).resolve() if settings else settings_file(cfg) or Path("ivr.toml").resolve()
    busy = [p for p in (cfg.db_path, cfg.recordings_dir) if p.exists()]
    if busy and not force:
        raise BackupError(f"le dossier de données n'est pas vide ({', '.join(map(str, busy))}) : restaurez dans "
                          "un dossier vide (IVR_DATA=...) ou ajoutez --force pour remplacer son contenu")
    data.mkdir(parents=True, exist_ok=True)
    placed = {}
    with tar, tempfile.TemporaryDirectory(prefix=".ivr-restore-", dir=data) as tmp:
        stage = Path(tmp)
        for name, meta in manifest["files"].items():
            if name.startswith("/") or ".." in Path(name).parts:
                raise BackupError(f"chemin refusé dans la sauvegarde : {name}")
            target = stage / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with tar.extractfile(tar.getmember(name)) as src, open(target, "wb") as f:
                    shutil.copyfileobj(src, f)
            except (KeyError, tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise BackupError(f"sauvegarde abîmée : {name} illisible ({exc})") from None
            if file_sha256(target) != meta["sha256"]:
                raise BackupError(f"sauvegarde abîmée : {name} ne correspond pas à son empreinte")
        # every file checked: now replace
        for suffix in ("", "-wal", "-shm"):
            Path(f"{cfg.db_path}{suffix}").unlink(missing_ok=True)
        shutil.move(str(stage / "ivr.db"), cfg.db_path)
        placed["base de données"] = cfg.db_path
        communes = Path(cfg["paths"]["communes"]).resolve() if cfg["paths"].get("communes") else None
        for sub, dest in (("recordings", cfg.recordings_dir), ("secrets", data / "secrets"), ("corpus", corpus),
                          ("communes", communes)):
            if not (stage / sub).is_dir() or dest is None:
                continue
            in_use = dest.exists() and any(dest.iterdir())
            if in_use and sub in ("corpus", "communes") and not force:
                dest = _aside(dest)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(stage / sub, dest)
            placed[sub] = dest
        if (data / "secrets").is_dir():
            (data / "secrets").chmod(0o700)
            for p in (data / "secrets").rglob("*"):
                p.chmod(0o700 if p.is_dir() else 0o600)
        if (stage / "ivr.toml").exists():
            target = settings if force or not settings.exists() else _aside(settings)
            shutil.copy2(stage / "ivr.toml", target)
            placed["réglages"] = target
    from ivr.store import Store

    Store(cfg.db_path).db.conn.close()              # a backup made by an older version is migrated now
    return {"manifest": manifest, "placed": placed}
