"""The commune's facts (corpus/commune.yaml) edited from the console by admins: identity and greeting,
services, closures, roadworks, events and local facts.

Every edit is made on the file as written (ruamel.yaml round trip: comments, key order and quoting
kept), checked on a copy of the corpus with the same loader as `ivr corpus check` plus the format
checks below, and only then written atomically. A running `ivr serve` sees the new file within a
second (ivr.app.Knowledge watches the files' dates) and `ivr ask` reads it on its next run."""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from dialogue.corpus import WEEKDAYS, CorpusError, load_corpus

DEMO_NAME = "Montclair-sur-Lise"          # the commune shipped as an example: a new install still has it
IDENTITY = [("nom", "Nom de la commune"), ("adresse", "Adresse de la mairie"),
            ("telephone", "Téléphone du standard"), ("email", "Adresse électronique"),
            ("site_web", "Site internet")]
SERVICE_ID = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
INFO_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
SLOT = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
STALE = ("Le fichier commune.yaml a été modifié entre-temps (par un autre administrateur ou à la main) : "
         "rechargez la page et refaites la modification.")
GREETING_DEFAULT = ("Bonjour, l'assistant vocal de la mairie de {{ commune.nom }} vous écoute. "
                    "Appel enregistré. Tapez 0 pour un agent.")
MAX_CLOSURE_DAYS = 62

# The lists edited item by item: their keys in commune.yaml, in the file's order, and their form.
KINDS = {
    "fermetures": {
        "title": "Fermetures exceptionnelles", "new": "Ajouter une fermeture", "one": "la fermeture",
        "hint": "Jours fériés, ponts, fermetures pour inventaire ou formation : l'assistant les annonce "
                "(« À noter : le jeudi 24 décembre, la mairie sera ouverte de 8 h 30 à 12 h ») et en tient "
                "compte quand un appelant demande les horaires de ce jour-là. Une fermeture de plusieurs "
                "jours est enregistrée jour par jour.",
        "fields": [("du", "Date, ou premier jour (JJ/MM/AAAA)", "date", True),
                   ("au", "Dernier jour, si la fermeture dure plusieurs jours (JJ/MM/AAAA)", "date", False),
                   ("type", "Ce jour-là", "closure", True),
                   ("horaires", "Horaires réduits, si ouvert (HH:MM-HH:MM, séparés par des virgules)", "text", False),
                   ("motif", "Motif, dit aux appelants (par exemple : pont de l'Ascension)", "text", True),
                   ("services", "Services concernés", "services", True)],
    },
    "travaux": {
        "title": "Travaux et changements temporaires", "new": "Ajouter des travaux", "one": "les travaux",
        "hint": "Chantiers, rues barrées, déviations : l'assistant cite les trois premiers en cours "
                "(« Travaux en cours : rue Pasteur, jusqu'au 29 janvier : … »).",
        "fields": [("rue", "Où (rue, place, quartier)", "text", True),
                   ("du", "Début (JJ/MM/AAAA)", "date", True),
                   ("au", "Fin prévue (JJ/MM/AAAA)", "date", True),
                   ("description", "Ce que les appelants doivent savoir ou faire (circulation, déviation, "
                                   "stationnement)", "textarea", True)],
    },
    "evenements": {
        "title": "Événements", "new": "Ajouter un événement", "one": "l'événement",
        "hint": "L'assistant annonce les trois prochains (« Prochainement : marché de Noël, le samedi "
                "5 décembre à 10 h, place de la République »).",
        "fields": [("date", "Date (JJ/MM/AAAA)", "date", True),
                   ("heure", "Heure (HH:MM, facultative)", "text", False),
                   ("titre", "Titre (par exemple : marché de Noël)", "text", True),
                   ("lieu", "Lieu", "text", True),
                   ("description", "Description", "textarea", False)],
    },
}
SECTION_NAMES = {"identite": "Identité", "services": "Services", "fermetures": "Fermetures",
                 "travaux": "Travaux", "evenements": "Événements", "infos": "Informations locales"}
# the guided first set-up, in this order
GUIDE = [("identite", "l'identité de la commune et l'accueil"), ("services", "les services et leurs horaires"),
         ("fermetures", "les fermetures exceptionnelles"), ("travaux", "les travaux en cours"),
         ("evenements", "les événements"), ("infos", "les informations locales")]

_write_lock = threading.Lock()


class FormError(ValueError):
    pass


# --- reading what a form says ---------------------------------------------------------------------------

def parse_date(text: str, label: str) -> dt.date:
    """JJ/MM/AAAA (as typed by staff) or AAAA-MM-JJ (as in the file, or from a date picker)."""
    s = (text or "").strip()
    m = re.match(r"^(\d{1,2})/(\d{1,2})/(\d{4})$", s)
    try:
        if m:
            return dt.date(int(m.group(3)), int(m.group(2)), int(m.group(1)))
        if re.match(r"^\d{4}-\d{2}-\d{2}$", s):
            return dt.date.fromisoformat(s)
    except ValueError:
        pass
    raise FormError(f"{label} : « {s} » n'est pas une date valide (attendu JJ/MM/AAAA, par exemple 14/07/2027).")


def parse_time(text: str, label: str) -> str:
    s = (text or "").strip()
    m = re.match(r"^(\d{1,2}):(\d{2})$", s)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise FormError(f"{label} : « {s} » n'est pas une heure HH:MM (par exemple 09:30).")
    return f"{int(m.group(1)):02d}:{m.group(2)}"


def parse_slots(text: str, label: str) -> list[str]:
    """'8:30-12:00, 13:30 - 17:30' -> ['08:30-12:00', '13:30-17:30']; anything else is refused."""
    s = re.sub(r"\s*-\s*", "-", (text or "").strip())
    pieces = [p for p in re.split(r"[,;\s]+|\bet\b", s) if p]
    return check_slots(pieces, label)


def check_slots(pieces, label: str) -> list[str]:
    out, prev_end = [], None
    for piece in pieces:
        m = SLOT.match(str(piece).strip())
        if not m or int(m.group(1)) > 23 or int(m.group(3)) > 24 or int(m.group(2)) > 59 or int(m.group(4)) > 59:
            raise FormError(f"{label} : « {piece} » n'est pas un créneau HH:MM-HH:MM (par exemple 08:30-12:00).")
        a, b = (int(m.group(1)), int(m.group(2))), (int(m.group(3)), int(m.group(4)))
        slot = f"{a[0]:02d}:{a[1]:02d}-{b[0]:02d}:{b[1]:02d}"
        if b <= a:
            raise FormError(f"{label} : le créneau {slot} finit avant de commencer.")
        if prev_end and a < prev_end:
            raise FormError(f"{label} : les créneaux {out[-1]} et {slot} se chevauchent ou ne sont pas dans l'ordre.")
        out.append(slot)
        prev_end = b
    return out


def fr_date(v) -> str:
    d = _as_date(v)
    return d.strftime("%d/%m/%Y") if d else str(v or "")


def _as_date(v) -> dt.date | None:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    try:
        return dt.date.fromisoformat(str(v))
    except ValueError:
        return None


# --- checks of the whole file (what the loader does not check itself) -------------------------------------

def check_commune(data) -> list[str]:
    """The format of commune.yaml as the dialogue reads it; French reasons, one per problem."""
    if not isinstance(data, dict) or not isinstance(data.get("commune"), dict):
        return ["commune.yaml doit commencer par la rubrique « commune »."]
    p: list[str] = []
    c = data["commune"]
    for key, label in IDENTITY:
        if not str(c.get(key) or "").strip():
            p.append(f"{label} : ce champ est obligatoire.")
    if c.get("email") and not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", str(c["email"])):
        p.append(f"Adresse électronique : « {c['email']} » n'est pas une adresse valide.")
    if c.get("telephone") and not _phone_ok(c["telephone"]):
        p.append(f"Téléphone du standard : « {c['telephone']} » n'est pas un numéro de téléphone.")
    if c.get("site_web") and re.search(r"\s", str(c["site_web"]).strip()):
        p.append("Site internet : l'adresse ne doit pas contenir d'espace.")
    if "numeros" in c and (not isinstance(c["numeros"], list)
                           or not all(re.match(r"^\+?[\d .]{2,20}$", str(n)) for n in c["numeros"])):
        p.append("Numéros appelés : une liste de numéros (chiffres, espaces, points, un + au début).")
    if "conservation_jours" in c and not (isinstance(c["conservation_jours"], int)
                                          and 1 <= c["conservation_jours"] <= 3650):
        p.append("Durée de conservation : un nombre de jours entre 1 et 3650.")
    if "message_accueil" in c:
        msg = str(c.get("message_accueil") or "").strip()
        if not msg:
            p.append("Message d'accueil : il est vide.")
        elif "enregistr" not in msg.lower():
            p.append("Message d'accueil : il doit dire aux appelants que l'appel est enregistré.")
        elif len(msg) > 400:
            p.append("Message d'accueil : 400 caractères au plus (les appelants l'écoutent en entier).")
    services = data.get("services") or {}
    if not isinstance(services, dict) or not services:
        return p + ["Il faut au moins un service (l'accueil de la mairie)."]
    extensions: dict[str, str] = {}
    names: dict[str, str] = {}
    for sid, s in services.items():
        where = f"Service {sid}"
        if not SERVICE_ID.match(str(sid)):
            p.append(f"{where} : l'identifiant ne peut contenir que des minuscules sans accent, des chiffres et _.")
        if not isinstance(s, dict):
            p.append(f"{where} : la description du service est mal écrite.")
            continue
        if not str(s.get("nom") or "").strip():
            p.append(f"{where} : le nom est obligatoire.")
        poste = str(s.get("poste") or "").strip()
        if poste:
            if not re.match(r"^\d{2,6}$", poste):
                p.append(f"{where} : le poste « {poste} » doit être un numéro de 2 à 6 chiffres.")
            elif poste in extensions:
                p.append(f"{where} : le poste {poste} est déjà celui {of(extensions[poste])}.")
            else:
                extensions[poste] = str(s.get("nom") or sid)
        if s.get("telephone") and not _phone_ok(s["telephone"]):
            p.append(f"{where} : « {s['telephone']} » n'est pas un numéro de téléphone.")
        hours = s.get("horaires") or {}
        if not isinstance(hours, dict):
            p.append(f"{where} : les horaires doivent être donnés jour par jour.")
            hours = {}
        for day, slots in hours.items():
            if day not in WEEKDAYS:
                p.append(f"{where} : « {day} » n'est pas un jour de la semaine (lundi à dimanche).")
                continue
            try:
                check_slots(slots if isinstance(slots, list) else [slots], f"{where}, {day}")
            except FormError as exc:
                p.append(str(exc))
        for a in s.get("appels") or []:
            key = str(a).strip().lower()
            if not key:
                p.append(f"{where} : un des noms donnés par les appelants est vide.")
            elif key in names and names[key] != sid:
                p.append(f"{where} : « {a} » désigne déjà le service {names[key]} ; "
                         "l'assistant ne saurait pas lequel choisir.")
            names[key] = str(sid)
    for i, f in enumerate(data.get("fermetures") or []):
        d = _as_date(f.get("date")) if isinstance(f, dict) else None
        where = f"Fermeture du {fr_date(d)}" if d else f"Fermeture n° {i + 1}"
        if not d:
            p.append(f"{where} : la date est invalide.")
            continue
        if not str(f.get("motif") or "").strip():
            p.append(f"{where} : le motif est obligatoire.")
        unknown = [x for x in f.get("services") or [] if x not in services]
        if not f.get("services"):
            p.append(f"{where} : indiquez au moins un service concerné.")
        elif unknown:
            p.append(f"{where} : service inconnu {', '.join(map(str, unknown))}.")
        if not f.get("ferme"):
            try:
                if not check_slots(f.get("horaires") or [], f"{where}, horaires"):
                    p.append(f"{where} : indiquez si le service est fermé, ou ses horaires réduits.")
            except FormError as exc:
                p.append(str(exc))
    for i, w in enumerate(data.get("travaux") or []):
        where = f"Travaux « {w.get('rue') or i + 1} »"
        du, au = _as_date(w.get("du")), _as_date(w.get("au"))
        if not str(w.get("rue") or "").strip():
            p.append(f"{where} : indiquez où ont lieu les travaux.")
        if not du or not au:
            p.append(f"{where} : les dates de début et de fin sont obligatoires.")
        elif au < du:
            p.append(f"{where} : la fin ({fr_date(au)}) est avant le début ({fr_date(du)}).")
        if not str(w.get("description") or "").strip():
            p.append(f"{where} : dites ce que les appelants doivent savoir ou faire.")
    for i, e in enumerate(data.get("evenements") or []):
        where = f"Événement « {e.get('titre') or i + 1} »"
        if not _as_date(e.get("date")):
            p.append(f"{where} : la date est invalide.")
        if e.get("heure"):
            try:
                parse_time(str(e["heure"]), where)
            except FormError as exc:
                p.append(str(exc))
        for key, label in (("titre", "le titre"), ("lieu", "le lieu")):
            if not str(e.get(key) or "").strip():
                p.append(f"{where} : {label} est obligatoire.")
    infos = data.get("infos") or {}
    if not isinstance(infos, dict):
        p.append("Informations locales : la rubrique « infos » est mal écrite.")
        infos = {}
    for key, group in infos.items():
        if not INFO_KEY.match(str(key)) or not isinstance(group, dict):
            p.append(f"Informations locales : la rubrique « {key} » est mal écrite.")
            continue
        for name, value in group.items():
            if not INFO_KEY.match(str(name)):
                p.append(f"Informations locales, {key} : le nom « {name} » ne peut contenir que des minuscules "
                         "sans accent, des chiffres et _.")
            elif value is None or isinstance(value, (dict, list)) or not str(value).strip():
                p.append(f"Informations locales, {key}.{name} : la valeur est vide.")
    return p


def of(name: str) -> str:
    """'de' before a service's name, with its article: du service, des services, de la, de l'."""
    name = str(name)
    if name.startswith("le "):
        return "du " + name[3:]
    if name.startswith("les "):
        return "des " + name[4:]
    return "de " + name


def _phone_ok(v) -> bool:
    s = str(v).strip()
    return bool(re.match(r"^\+?[\d .()-]{4,20}$", s)) and sum(ch.isdigit() for ch in s) >= 3


# --- the file -----------------------------------------------------------------------------------------------

def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096          # never re-wrap the other lines
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def dump(doc) -> str:
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return buf.getvalue()


def flow(items, quoted: bool = False) -> CommentedSeq:
    """A one-line list, as the file writes them: ["08:30-12:00", "13:30-17:30"]."""
    seq = CommentedSeq([DoubleQuotedScalarString(x) if quoted else x for x in items])
    seq.fa.set_flow_style()
    return seq


def _tail(node):
    """(container, key) holding the comment after a block's last line (where ruamel keeps the blank
    line, or the next section's comment, that follows it)."""
    while isinstance(node, (CommentedMap, CommentedSeq)) and len(node):
        key = list(node.keys())[-1] if isinstance(node, CommentedMap) else len(node) - 1
        child = node[key]
        if isinstance(child, (CommentedMap, CommentedSeq)) and len(child) and not child.fa.flow_style():
            node = child
            continue
        return node, key
    return None


def _take_gap(node):
    where = _tail(node)
    if not where:
        return None
    cont, key = where
    entry = cont.ca.items.get(key)
    if isinstance(cont, CommentedMap) and entry and len(entry) > 2 and entry[2] is not None:
        tok, entry[2] = entry[2], None
        return tok
    return None


def _put_gap(node, tok) -> None:
    where = _tail(node)
    if tok is None or not where or not isinstance(where[0], CommentedMap):
        return
    cont, key = where
    entry = cont.ca.items.setdefault(key, [None, None, None, None])
    entry[2] = tok


def _blank(tok):
    """A copy of a gap token that is only a blank line (the separation between two items)."""
    if tok is None or not str(tok.value).startswith("\n\n"):
        return None
    out = copy.copy(tok)
    out.value = "\n\n"
    return out


def _peek_gap(node) -> str:
    where = _tail(node)
    if not where or not isinstance(where[0], CommentedMap):
        return ""
    entry = where[0].ca.items.get(where[1])
    return str(entry[2].value) if entry and len(entry) > 2 and entry[2] is not None else ""


def append_key(parent: CommentedMap, key, value) -> None:
    """parent[key] = value at the end, the text that followed the last item moving after the new one;
    items separated by a blank line (the services) stay so."""
    keys = list(parent.keys())
    spaced = len(keys) >= 2 and _peek_gap(parent[keys[-2]]).startswith("\n\n")
    tok = _take_gap(parent)
    parent[key] = value
    if spaced and len(keys):
        _put_gap(parent[keys[-1]], _blank(tok))
    _put_gap(parent, tok)


def insert_item(seq: CommentedSeq, pos: int, item) -> None:
    if pos >= len(seq):
        tok = _take_gap(seq)
        seq.append(item)
        _put_gap(seq, tok)
    else:
        seq.insert(pos, item)


def remove_item(container, key) -> None:
    """Deletes container[key]; when it was the last one, what followed it stays in place."""
    last = (list(container.keys())[-1] if isinstance(container, CommentedMap) else len(container) - 1)
    tok = _take_gap(container) if key == last else None
    del container[key]
    if tok is not None:
        if isinstance(container, CommentedMap) and len(container):
            prev = container[list(container.keys())[-1]]
            if isinstance(prev, (CommentedMap, CommentedSeq)):
                _take_gap(prev)            # its blank line before the removed one: replaced by the gap
        _put_gap(container, tok)


def set_key(m: CommentedMap, key, value, order: list[str]) -> None:
    """m[key] = value; a new key goes at its place in `order` (the file's usual order)."""
    if value is None or value == "" or value == []:
        if key in m:
            remove_item(m, key)
        return
    if key in m:
        m[key] = value
        return
    later = [k for k in order[order.index(key) + 1:] if k in m] if key in order else []
    if later:
        m.insert(list(m.keys()).index(later[0]), key, value)
    else:
        append_key(m, key, value)


class CommuneFile:
    """corpus/commune.yaml, read for a form and written back after the checks."""

    def __init__(self, corpus_dir: Path):
        self.corpus_dir = Path(corpus_dir)
        self.path = self.corpus_dir / "commune.yaml"

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def version(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def load(self):
        return _yaml().load(self.text())

    def data(self) -> dict:
        return yaml.safe_load(self.text()) or {}

    def save(self, doc, version: str, today: dt.date | None = None) -> list[str]:
        """Writes doc if it passes every check; returns the problems otherwise (nothing written)."""
        text = dump(doc)
        with _write_lock:
            if version != self.version():
                return [STALE]
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                return [f"Le fichier modifié ne serait plus lisible ({exc})."]
            problems = check_commune(data)
            if problems:
                return problems
            problems = self.trial(text, today)
            if problems:
                return problems
            atomic_write(self.path, text)
        return []

    def trial(self, text: str, today: dt.date | None) -> list[str]:
        """The corpus, with this commune.yaml, loaded as `ivr corpus check` does (every answer rendered)."""
        with tempfile.TemporaryDirectory() as tmp:
            trial = Path(tmp) / "corpus"
            trial.mkdir()
            for name in ("faq", "aides.yaml", "hors_sujet.yaml"):
                src = self.corpus_dir / name
                if src.is_dir():
                    shutil.copytree(src, trial / name, ignore=shutil.ignore_patterns("*.tmp"))
                elif src.exists():
                    shutil.copy2(src, trial / name)
            (trial / "commune.yaml").write_text(text, encoding="utf-8")
            try:
                load_corpus(trial, today)
            except CorpusError as exc:
                return [_plain(x) for x in exc.problems]
            except Exception as exc:        # a value the dialogue cannot read: refused, never written
                return [f"Le fichier modifié ne se charge pas ({type(exc).__name__} : {exc})."]
        return []


def _plain(problem: str) -> str:
    """The loader's reason, said for the console (the FAQ file and entry are where a fact is used)."""
    m = re.match(r"^(\S+\.yaml) (\S+): balise inconnue « ([^»]+) »", problem)
    if m:
        return (f"La réponse de la fiche {m.group(2)} utilise « {m.group(3)} », qui n'existerait plus après "
                "cette modification : gardez-le, ou modifiez d'abord cette fiche (page Connaissances).")
    return problem


def atomic_write(path: Path, text: str) -> None:
    """Temp file beside it, fsync, rename: a reader sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- edits: each returns a short summary for the journal, or raises FormError -----------------------------

def edit_identity(doc, form) -> str:
    c = doc["commune"]
    changed = []
    for key, label in IDENTITY:
        value = " ".join(str(form.get(key, "")).split())
        if not value:
            raise FormError(f"{label} : ce champ est obligatoire.")
        if str(c.get(key) or "") != value:
            changed.append(key)
            c[key] = DoubleQuotedScalarString(value) if key == "telephone" else value
    greeting = " ".join(str(form.get("message_accueil", "")).split())
    current = str(c.get("message_accueil") or GREETING_DEFAULT)
    if greeting != current:
        if not greeting:
            raise FormError("Message d'accueil : il est vide.")
        set_key(c, "message_accueil", greeting, [k for k, _ in IDENTITY] + ["message_accueil"])
        changed.append("message d'accueil")
    return "identité : " + (", ".join(changed) + " modifié(s)" if changed else "aucun changement")


SERVICE_ORDER = ["nom", "poste", "appels", "lieu", "telephone", "horaires", "description"]


def edit_service(doc, sid: str | None, form) -> tuple[str, str]:
    """Creates (sid None: the form gives the identifier) or updates a service; (id, summary)."""
    services = doc["services"]
    new = sid is None
    if new:
        sid = str(form.get("identifiant", "")).strip().lower()
        if not SERVICE_ID.match(sid):
            raise FormError("Identifiant : 2 à 40 caractères, des minuscules sans accent, des chiffres et _ "
                            "(par exemple : ludotheque). Il sert dans les réponses : {{ services.ludotheque.nom }}.")
        if sid in services:
            raise FormError(f"Identifiant : le service {sid} existe déjà.")
    s = CommentedMap() if new else services[sid]
    before = copy.deepcopy(dict(s)) if not new else {}
    nom = " ".join(str(form.get("nom", "")).split())
    if not nom:
        raise FormError("Nom : ce champ est obligatoire (avec son article, par exemple : la ludothèque).")
    poste = str(form.get("poste", "")).strip()
    if poste and not re.match(r"^\d{2,6}$", poste):
        raise FormError(f"Poste : « {poste} » doit être un numéro de 2 à 6 chiffres.")
    other = next((o for k, o in services.items() if k != sid and poste and str(o.get("poste") or "") == poste), None)
    if other is not None:
        raise FormError(f"Poste : le {poste} est déjà celui {of(other.get('nom', '?'))} ; chaque service a le sien.")
    appels = [" ".join(x.split()) for x in str(form.get("appels", "")).splitlines() if x.strip()]
    hours = {}
    for day in WEEKDAYS:
        slots = parse_slots(form.get(f"h_{day}", ""), f"Horaires du {day}")
        if slots:
            hours[day] = slots
    text = {k: " ".join(str(form.get(k, "")).split()) for k in ("lieu", "telephone", "description")}
    set_key(s, "nom", nom, SERVICE_ORDER)
    if str(s.get("poste") or "") != poste:
        set_key(s, "poste", DoubleQuotedScalarString(poste) if poste else None, SERVICE_ORDER)
    if [str(a) for a in s.get("appels") or []] != appels:
        set_key(s, "appels", flow(appels) if appels else None, SERVICE_ORDER)
    for key in ("lieu", "telephone"):
        if str(s.get(key) or "") != text[key]:
            value = text[key]
            set_key(s, key, DoubleQuotedScalarString(value) if key == "telephone" and value else value, SERVICE_ORDER)
    old_hours = s.get("horaires") or CommentedMap()
    if {d: [str(x) for x in v or []] for d, v in old_hours.items()} != hours:
        h = old_hours if isinstance(old_hours, CommentedMap) and "horaires" in s else CommentedMap()
        for day in WEEKDAYS:
            if day in hours and [str(x) for x in h.get(day) or []] != hours[day]:
                set_key(h, day, flow(hours[day], quoted=True), WEEKDAYS)
            elif day not in hours and day in h:
                remove_item(h, day)
        set_key(s, "horaires", h if len(h) else None, SERVICE_ORDER)
    if str(s.get("description") or "") != text["description"]:
        set_key(s, "description", text["description"], SERVICE_ORDER)
    if new:
        append_key(services, sid, s)
        return sid, f"service {sid} ajouté ({nom})"
    changed = [k for k in SERVICE_ORDER if _plain_value(before.get(k)) != _plain_value(s.get(k))]
    return sid, f"service {sid} : " + (", ".join(changed) + " modifié(s)" if changed else "aucun changement")


def _plain_value(v):
    if isinstance(v, dict):
        return {k: _plain_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain_value(x) for x in v]
    return None if v is None else str(v)


def delete_service(doc, sid: str) -> str:
    used = [fr_date(f.get("date")) for f in doc.get("fermetures") or [] if sid in (f.get("services") or [])]
    if used:
        raise FormError(f"Ce service est cité par {len(used)} fermeture(s) ({', '.join(used[:5])}"
                        f"{'…' if len(used) > 5 else ''}) : retirez-le d'abord de ces fermetures.")
    nom = doc["services"][sid].get("nom", sid)
    remove_item(doc["services"], sid)
    return f"service {sid} supprimé ({nom})"


def item_values(kind: str, item) -> dict:
    """An item of the list as its form shows it."""
    if kind == "fermetures":
        return {"du": fr_date(item.get("date")), "au": "", "type": "ferme" if item.get("ferme") else "horaires",
                "horaires": ", ".join(str(x) for x in item.get("horaires") or []),
                "motif": str(item.get("motif") or ""), "services": [str(x) for x in item.get("services") or []]}
    if kind == "travaux":
        return {"rue": str(item.get("rue") or ""), "du": fr_date(item.get("du")), "au": fr_date(item.get("au")),
                "description": str(item.get("description") or "")}
    return {"date": fr_date(item.get("date")), "heure": str(item.get("heure") or ""),
            "titre": str(item.get("titre") or ""), "lieu": str(item.get("lieu") or ""),
            "description": str(item.get("description") or "")}


def _one_line(form, key: str) -> str:
    return " ".join(str(form.get(key, "")).split())


def build_items(kind: str, form, services: dict) -> tuple[list[CommentedMap], str]:
    """The file's entries a form describes (a closure of several days is one entry a day), and how to
    name them in the journal."""
    fields = {f[0]: f for f in KINDS[kind]["fields"]}
    for key, (_, label, _type, required) in fields.items():
        if required and _type not in ("services", "closure") and not _one_line(form, key):
            raise FormError(f"{label.split(' (')[0]} : ce champ est obligatoire.")
    if kind == "fermetures":
        du = parse_date(form.get("du", ""), "Date")
        au = parse_date(form.get("au"), "Dernier jour") if _one_line(form, "au") else du
        if au < du:
            raise FormError(f"Dernier jour : le {fr_date(au)} est avant le premier jour ({fr_date(du)}).")
        if (au - du).days >= MAX_CLOSURE_DAYS:
            raise FormError(f"Une fermeture de plus de {MAX_CLOSURE_DAYS} jours se déclare en plusieurs fois.")
        closed = form.get("type", "ferme") != "horaires"
        slots = [] if closed else parse_slots(form.get("horaires", ""), "Horaires réduits")
        if not closed and not slots:
            raise FormError("Horaires réduits : indiquez les créneaux d'ouverture de ce jour-là, ou choisissez "
                            "« Fermé toute la journée ».")
        chosen = [s for s in form.getlist("services") if s in services]
        if not chosen:
            raise FormError("Services concernés : cochez au moins un service.")
        chosen = [s for s in services if s in chosen]            # the file's order
        motif = _one_line(form, "motif")
        out = []
        for k in range((au - du).days + 1):
            m = CommentedMap()
            m["date"] = du + dt.timedelta(days=k)
            if closed:
                m["ferme"] = True
            else:
                m["horaires"] = flow(slots, quoted=True)
            m["motif"] = motif
            m["services"] = flow(chosen)
            out.append(m)
        when = fr_date(du) if du == au else f"du {fr_date(du)} au {fr_date(au)}"
        return out, f"{when} ({motif})"
    if kind == "travaux":
        du, au = parse_date(form.get("du", ""), "Début"), parse_date(form.get("au", ""), "Fin prévue")
        if au < du:
            raise FormError(f"Fin prévue : le {fr_date(au)} est avant le début ({fr_date(du)}).")
        m = CommentedMap()
        m["rue"] = _one_line(form, "rue")
        m["du"], m["au"] = du, au
        m["description"] = _one_line(form, "description")
        return [m], f"{m['rue']}, du {fr_date(du)} au {fr_date(au)}"
    m = CommentedMap()
    m["date"] = parse_date(form.get("date", ""), "Date")
    if _one_line(form, "heure"):
        m["heure"] = DoubleQuotedScalarString(parse_time(form.get("heure", ""), "Heure"))
    m["titre"] = _one_line(form, "titre")
    m["lieu"] = _one_line(form, "lieu")
    if _one_line(form, "description"):
        m["description"] = _one_line(form, "description")
    return [m], f"{m['titre']}, {fr_date(m['date'])}"


def _item_date(kind: str, item) -> dt.date:
    return _as_date(item.get("du" if kind == "travaux" else "date")) or dt.date.max


def save_items(doc, kind: str, index: int | None, form) -> str:
    """Adds (index None) or replaces the entry at index; entries are kept in date order."""
    seq = doc.get(kind) or CommentedSeq()
    if index is not None and not 0 <= index < len(seq):
        raise FormError(STALE)
    items, what = build_items(kind, form, doc.get("services") or {})
    if kind not in doc or doc[kind] is None:
        doc.pop(kind, None)
        seq.extend(items)                       # a new list is added whole: an empty one takes no gap
        append_key(doc, kind, seq)
        items = []
    if index is not None:
        remove_item(seq, index)
    for item in items:
        pos = next((i for i, x in enumerate(seq) if _item_date(kind, x) > _item_date(kind, item)), len(seq))
        insert_item(seq, pos, item)
    verb = {"fermetures": ("fermeture modifiée", "fermeture ajoutée"), "travaux": ("travaux modifiés", "travaux ajoutés"),
            "evenements": ("événement modifié", "événement ajouté")}[kind][index is None]
    return f"{verb} : {what}"


def delete_item(doc, kind: str, index: int) -> str:
    seq = doc.get(kind) or []
    if not 0 <= index < len(seq):
        raise FormError(STALE)
    values = item_values(kind, seq[index])
    what = {"fermetures": lambda v: f"fermeture supprimée : {v['du']} ({v['motif']})",
            "travaux": lambda v: f"travaux supprimés : {v['rue']} ({v['du']} – {v['au']})",
            "evenements": lambda v: f"événement supprimé : {v['titre']} ({v['date']})"}[kind](values)
    remove_item(seq, index)
    return what


def edit_infos(doc, form) -> str:
    """Every value of the page at once; a field ticked for removal goes; a new one may be added."""
    infos = doc.get("infos") or CommentedMap()
    changed, removed = [], []
    for key in list(infos.keys()):
        group = infos[key]
        for name in list(group.keys()):
            field = f"{key}.{name}"
            if form.get(f"suppr:{field}"):
                remove_item(group, name)
                removed.append(field)
                continue
            if f"v:{field}" not in form:
                continue
            value = _one_line(form, f"v:{field}")
            if not value:
                raise FormError(f"{field} : la valeur est vide (cochez « supprimer » pour l'enlever).")
            old = group[name]
            if str(old) != value:
                group[name] = int(value) if isinstance(old, int) and re.match(r"^\d+$", value) else value
                changed.append(field)
        if not len(group):
            remove_item(infos, key)
    new_key, new_name = _one_line(form, "nouvelle_rubrique").lower(), _one_line(form, "nouveau_nom").lower()
    new_value = _one_line(form, "nouvelle_valeur")
    added = []
    if new_key or new_name or new_value:
        if not INFO_KEY.match(new_key) or not INFO_KEY.match(new_name):
            raise FormError("Nouvelle information : la rubrique et le nom s'écrivent en minuscules sans accent, "
                            "chiffres et _ (par exemple : marche et jour).")
        if not new_value:
            raise FormError("Nouvelle information : la valeur est vide.")
        if new_key in infos and new_name in infos[new_key]:
            raise FormError(f"Nouvelle information : {new_key}.{new_name} existe déjà ; modifiez-la plus haut.")
        if new_key in infos:
            append_key(infos[new_key], new_name, new_value)
        else:
            group = CommentedMap()
            group[new_name] = new_value
            append_key(infos, new_key, group)         # built before it is added, so that it takes the gap
        added.append(f"{new_key}.{new_name}")
    if ("infos" not in doc or doc["infos"] is None) and len(infos):
        doc.pop("infos", None)
        append_key(doc, "infos", infos)
    parts = ([", ".join(changed) + " modifié(s)"] if changed else []) + \
            ([", ".join(removed) + " supprimé(s)"] if removed else []) + ([", ".join(added) + " ajouté(s)"] if added else [])
    summary = "informations locales : " + ("; ".join(parts) if parts else "aucun changement")
    return summary if len(summary) <= 240 else summary[:239] + "…"


# --- the guided first set-up -------------------------------------------------------------------------------

def needs_setup(data: dict) -> bool:
    """Still the example commune, or its identity incomplete."""
    c = (data or {}).get("commune") or {}
    return c.get("nom") == DEMO_NAME or any(not str(c.get(k) or "").strip() for k, _ in IDENTITY)


GUIDE_DONE = ("configuration guidée terminée", "configuration guidée passée")


def guide_done(store) -> bool:
    return bool(list(store.db.query("select 1 from audit where action in (?, ?) limit 1", list(GUIDE_DONE))))


def setup_pending(corpus_dir: Path, store) -> bool:
    """A new install: the example commune (or an incomplete identity), and no admin has gone through
    or skipped the guided set-up yet."""
    try:
        data = CommuneFile(corpus_dir).data()
    except (OSError, yaml.YAMLError):
        return False
    return needs_setup(data) and not guide_done(store)


# --- pages ----------------------------------------------------------------------------------------------------

def register_routes(app, cfg, store, admin_only, clock, on_saved, corpus_dir=None) -> None:
    """The /commune pages, admins only. `corpus_dir()`: the knowledge folder of the commune shown
    (several on one install)."""
    from flask import abort, flash, g, redirect, render_template, request, session, url_for

    from dialogue.corpus import spoken_hours
    from ivr.console.accounts import audit

    corpus_dir = corpus_dir or (lambda: cfg.corpus_dir)

    class _File:                    # the commune.yaml of the commune the request is about
        def __getattr__(self, name):
            return getattr(CommuneFile(corpus_dir()), name)

    cf = _File()

    def step_url(step: int) -> str:
        key = GUIDE[step][0]
        if key in KINDS:
            return url_for("commune_list", kind=key)
        return url_for({"identite": "commune_identity", "services": "commune_services",
                        "infos": "commune_infos"}[key])

    @app.context_processor
    def guide_state():
        step = session.get("guide")
        if not (request.endpoint or "").startswith("commune") or step is None:
            return {}
        return {"guide": {"step": step, "total": len(GUIDE), "what": GUIDE[step][1], "url": step_url(step),
                          "last": step == len(GUIDE) - 1}}

    def page(template: str, section: str, problems=(), status: int = 200, **kw):
        return render_template(template, section=section, sections=SECTION_NAMES, problems=list(problems),
                               version=kw.pop("version", None) or cf.version(), kinds=KINDS, **kw), \
            (422 if problems and status == 200 else status)

    def attempt(section: str, edit, show, done_url: str):
        """Applies edit(doc) -> summary to the file as it is, saves it if every check passes, logs it;
        otherwise show(problems) again with what was typed, and nothing is written."""
        version = request.form.get("version", "")
        doc = cf.load()
        try:
            summary = edit(doc)
        except FormError as exc:
            return show([str(exc)], version)
        if dump(doc) == cf.text():
            flash("Aucune modification à enregistrer.")
            return redirect(done_url)
        problems = cf.save(doc, version, clock().date())
        if problems:
            return show(problems, version)
        audit(store, g.user["name"], "modification de la commune", f"{SECTION_NAMES[section]} — {summary}",
              section=section, resume=summary)
        on_saved()
        flash("Modification enregistrée. L'assistant répond avec ces informations dans quelques secondes.")
        return redirect(done_url)

    @app.get("/commune")
    @admin_only
    def commune_home():
        data = cf.data()
        counts = {"services": len(data.get("services") or {}), "infos": len(data.get("infos") or {})}
        today = clock().date()
        for kind in KINDS:
            counts[kind] = sum(1 for x in data.get(kind) or [] if not _past(kind, x, today))
        return page("commune.html", "", data=data, counts=counts, pending=needs_setup(data))

    @app.route("/commune/identite", methods=["GET", "POST"])
    @admin_only
    def commune_identity():
        def show(problems, version=None, values=None):
            c = (cf.data().get("commune") or {})
            values = values or dict({k: str(c.get(k) or "") for k, _ in IDENTITY},
                                    message_accueil=str(c.get("message_accueil") or GREETING_DEFAULT))
            return page("commune_identite.html", "identite", problems, values=values, fields=IDENTITY,
                        version=version)

        if request.method == "POST":
            typed = {k: request.form.get(k, "") for k, _ in IDENTITY + [("message_accueil", "")]}
            return attempt("identite", lambda doc: edit_identity(doc, request.form),
                           lambda p, v: show(p, v, typed), url_for("commune_identity"))
        return show([])

    @app.get("/commune/services")
    @admin_only
    def commune_services():
        services = cf.data().get("services") or {}
        rows = [{"id": sid, "nom": s.get("nom", sid), "poste": s.get("poste") or "", "telephone": s.get("telephone") or "",
                 "horaires": spoken_hours(s.get("horaires") or {})} for sid, s in services.items()]
        return page("commune_services.html", "services", rows=rows)

    def service_values(s: dict) -> dict:
        v = {k: str(s.get(k) or "") for k in ("nom", "poste", "lieu", "telephone", "description")}
        v["appels"] = "\n".join(str(a) for a in s.get("appels") or [])
        for day in WEEKDAYS:
            v[f"h_{day}"] = ", ".join(str(x) for x in (s.get("horaires") or {}).get(day) or [])
        return v

    @app.route("/commune/services/nouveau", methods=["GET", "POST"], defaults={"sid": None})
    @app.route("/commune/services/<sid>", methods=["GET", "POST"])
    @admin_only
    def commune_service(sid):
        services = cf.data().get("services") or {}
        if sid is not None and sid not in services:
            abort(404)

        def show(problems, version=None, values=None):
            values = values or (service_values(services[sid]) if sid else {})
            return page("commune_service.html", "services", problems, sid=sid, values=values, days=WEEKDAYS,
                        version=version)

        if request.method == "POST":
            typed = {k: request.form.get(k, "") for k in request.form if k not in ("csrf_token", "version")}
            return attempt("services", lambda doc: edit_service(doc, sid, request.form)[1],
                           lambda p, v: show(p, v, typed), url_for("commune_services"))
        return show([])

    @app.post("/commune/services/<sid>/supprimer")
    @admin_only
    def commune_service_delete(sid):
        services = cf.data().get("services") or {}
        if sid not in services:
            abort(404)

        def show(problems, version=None):
            return page("commune_service.html", "services", problems, sid=sid, values=service_values(services[sid]),
                        days=WEEKDAYS, version=version)

        if request.form.get("confirmer") != "oui":
            return show(["Cochez la confirmation pour supprimer ce service."], request.form.get("version"))
        return attempt("services", lambda doc: delete_service(doc, sid), show, url_for("commune_services"))

    def list_page(kind: str, problems=(), version=None):
        today = clock().date()
        data = cf.data()
        rows = [dict(item_values(kind, x), index=i, past=_past(kind, x, today))
                for i, x in enumerate(data.get(kind) or [])]
        names = {sid: s.get("nom", sid) for sid, s in (data.get("services") or {}).items()}
        return page("commune_liste.html", kind, problems, kind=kind, spec=KINDS[kind], rows=rows, names=names,
                    version=version)

    @app.get("/commune/<kind>")
    @admin_only
    def commune_list(kind):
        if kind not in KINDS:
            abort(404)
        return list_page(kind)

    @app.route("/commune/<kind>/nouveau", methods=["GET", "POST"], defaults={"index": None})
    @app.route("/commune/<kind>/<int:index>", methods=["GET", "POST"])
    @admin_only
    def commune_item(kind, index):
        if kind not in KINDS:
            abort(404)
        items = cf.data().get(kind) or []
        if index is not None and not 0 <= index < len(items):
            abort(404)
        services = cf.data().get("services") or {}

        def show(problems, version=None, values=None):
            values = values or (item_values(kind, items[index]) if index is not None else {"type": "ferme"})
            return page("commune_element.html", kind, problems, kind=kind, spec=KINDS[kind], index=index,
                        values=values, services=services, version=version)

        if request.method == "POST":
            typed = {k: request.form.get(k, "") for k in request.form if k not in ("csrf_token", "version")}
            typed["services"] = request.form.getlist("services")
            return attempt(kind, lambda doc: save_items(doc, kind, index, request.form),
                           lambda p, v: show(p, v, typed), url_for("commune_list", kind=kind))
        return show([])

    @app.post("/commune/<kind>/<int:index>/supprimer")
    @admin_only
    def commune_item_delete(kind, index):
        if kind not in KINDS:
            abort(404)

        return attempt(kind, lambda doc: delete_item(doc, kind, index), lambda p, v: list_page(kind, p, v),
                       url_for("commune_list", kind=kind))

    @app.route("/commune/infos", methods=["GET", "POST"])
    @admin_only
    def commune_infos():
        def show(problems, version=None, typed=None):
            groups = []
            for key, group in (cf.data().get("infos") or {}).items():
                fields = [(name, (typed or {}).get(f"v:{key}.{name}", str(value)),
                           bool((typed or {}).get(f"suppr:{key}.{name}"))) for name, value in (group or {}).items()]
                groups.append((key, fields))
            return page("commune_infos.html", "infos", problems, groups=groups, typed=typed or {}, version=version)

        if request.method == "POST":
            typed = {k: request.form.get(k, "") for k in request.form}
            return attempt("infos", lambda doc: edit_infos(doc, request.form),
                           lambda p, v: show(p, v, typed), url_for("commune_infos"))
        return show([])

    @app.post("/commune/guide")
    @admin_only
    def commune_guide():
        action = request.form.get("action", "")
        if action == "commencer":
            session["guide"] = 0
            return redirect(step_url(0))
        step = session.get("guide")
        if action == "suivant" and step is not None and step + 1 < len(GUIDE):
            session["guide"] = step + 1
            return redirect(step_url(step + 1))
        session.pop("guide", None)
        if action == "passer":
            audit(store, g.user["name"], GUIDE_DONE[1])
            flash("Configuration guidée interrompue. Vous pourrez la reprendre depuis la page Commune.")
            return redirect(url_for("home"))
        audit(store, g.user["name"], GUIDE_DONE[0])
        flash("Configuration terminée. Vous pouvez revenir sur ces pages à tout moment depuis le menu Commune.")
        return redirect(url_for("commune_home"))


def _past(kind: str, item, today: dt.date) -> bool:
    end = _as_date(item.get("au" if kind == "travaux" else "date"))
    return bool(end and end < today)
