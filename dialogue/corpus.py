"""The commune's knowledge: local facts (commune.yaml) and FAQ entries (faq/*.yaml) rendered with
Jinja2 placeholders, so a local fact is written once and every answer follows it."""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

THEMES = {
    "mairie_pratique": "les horaires et l'accueil de la mairie",
    "etat_civil": "l'état civil",
    "identite": "les papiers d'identité",
    "citoyennete": "les élections et la citoyenneté",
    "urbanisme": "l'urbanisme et les travaux chez vous",
    "enfance_scolarite": "l'école et l'enfance",
    "social": "l'action sociale",
    "dechets": "les déchets",
    "voirie_stationnement": "la voirie et le stationnement",
    "eclairage": "l'éclairage public",
    "proprete_espaces_verts": "la propreté et les espaces verts",
    "sport_culture_loisirs": "le sport, la culture et les loisirs",
    "vie_locale": "la vie locale",
    "cimetiere": "le cimetière",
    "securite_tranquillite": "la sécurité et la tranquillité",
}
EXTRA_THEMES = {"hors_competence": "une démarche qui ne dépend pas de la mairie"}
ACTIONS = {"answer", "signalement", "transfer", "orientation"}
WEEKDAYS = ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"]
MONTHS = ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
          "octobre", "novembre", "décembre"]


class CorpusError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Entry:
    id: str
    theme: str
    questions: list[str]
    answer: str
    steps: list[str] = field(default_factory=list)
    action: str = "answer"
    source: str = "commune"
    reviewed: str = ""
    label: str = ""
    hours_of: str = ""        # service whose timetable this entry gives: a caller may ask for one day

    @property
    def spoken_label(self) -> str:
        return self.label or THEMES.get(self.theme) or EXTRA_THEMES.get(self.theme, self.theme)


# --- spoken French for local facts ------------------------------------------------------------------

def spoken_time(hhmm: str) -> str:
    h, m = (int(x) for x in hhmm.split(":"))
    return f"{h} h {m:02d}" if m else f"{h} h"


def spoken_slots(slots: list[str]) -> str:
    parts = []
    for slot in slots:
        a, b = slot.split("-")
        parts.append(f"de {spoken_time(a.strip())} à {spoken_time(b.strip())}")
    return " et ".join(parts)


def _day_groups(hours: dict) -> list[tuple[list[str], tuple]]:
    """Consecutive days with the same slots: ([lundi, mardi, jeudi...], slots)."""
    groups: list[tuple[list[str], tuple]] = []
    for day in WEEKDAYS:
        slots = tuple(hours.get(day) or ())
        if not slots:
            continue
        prev_idx = WEEKDAYS.index(groups[-1][0][-1]) if groups else -9
        if groups and groups[-1][1] == slots and WEEKDAYS.index(day) == prev_idx + 1:
            groups[-1][0].append(day)
        else:
            groups.append(([day], slots))
    return groups


def spoken_hours(hours: dict) -> str:
    """{'lundi': ['08:30-12:00'], ...} -> 'du lundi au vendredi de 8 h 30 à 12 h, et le samedi ...'."""
    if not hours:
        return "sur rendez-vous uniquement"
    out = []
    for days, slots in _day_groups(hours):
        if len(days) == 1:
            d = f"le {days[0]}"
        elif len(days) == 2:
            d = f"le {days[0]} et le {days[1]}"
        else:
            d = f"du {days[0]} au {days[-1]}"
        out.append(f"{d} {spoken_slots(list(slots))}")
    return ", ".join(out[:-1]) + (", et " if len(out) > 1 else "") + out[-1]


def spoken_date(d: dt.date, with_weekday: bool = True) -> str:
    day = "1er" if d.day == 1 else str(d.day)
    s = f"{day} {MONTHS[d.month - 1]}"
    return f"le {WEEKDAYS[d.weekday()]} {s}" if with_weekday else f"le {s}"


def _as_date(v) -> dt.date:
    return v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v))


class Commune:
    """Local facts and what is derived from them on a given day."""

    def __init__(self, data: dict, today: dt.date | None = None):
        self.data = data
        self.today = today or dt.date.today()
        self.name = data["commune"]["nom"]
        self.greeting_text = ""             # commune.message_accueil, rendered by load_corpus

    @property
    def greeting(self) -> str:
        """What callers hear first: commune.message_accueil, or the default."""
        return self.greeting_text or (f"Bonjour, l'assistant vocal de la mairie de {self.name} vous écoute. "
                                      "Appel enregistré. Tapez 0 pour un agent.")

    def services_context(self) -> dict:
        out = {}
        for sid, s in self.data.get("services", {}).items():
            out[sid] = dict(s, horaires=self.hours_for_phone(sid))
        return out

    def service_named(self, text: str) -> str | None:
        """The service whose name (or one of its `appels` words in commune.yaml) the text contains;
        spelled-out acronyms ("c c a s") count. The longest name wins."""
        t = join_spelled(_fold(text))
        best, best_len = None, 0
        for key, svc in self.data.get("services", {}).items():
            for name in [key.replace("_", " ")] + list(svc.get("appels") or []):
                n = _fold(str(name))
                if len(n) > best_len and re.search(r"\b" + re.escape(n) + r"\b", t):
                    best, best_len = key, len(n)
        return best

    def service_by_extension(self, extension: str) -> str | None:
        """The service whose switchboard extension (`poste`) this is."""
        return next((key for key, svc in self.data.get("services", {}).items()
                     if str(svc.get("poste") or "") == str(extension)), None)

    def hours_for_phone(self, service: str) -> str:
        """The week when it is short to say; otherwise today and tomorrow, and how to ask for another
        day (a week of split opening hours takes half a minute to hear)."""
        hours = (self.data.get("services", {}).get(service) or {}).get("horaires") or {}
        if len(_day_groups(hours)) <= 3:
            return spoken_hours(hours)
        parts, said = [], set()
        for k, word in ((0, "aujourd'hui"), (1, "demain")):
            day = self.today + dt.timedelta(days=k)
            slots = self.slots_on(day, service)
            when = f"{word} {WEEKDAYS[day.weekday()]}"
            said.add(WEEKDAYS[day.weekday()])
            parts.append(f"{when} {_spoken_time_slots(slots)}" if slots else f"pas d'ouverture {when}")
        example = next(d for d in ("samedi", "mercredi", "lundi") if d not in said)
        return f"{parts[0]}, et {parts[1]} ; pour un autre jour, dites-le-moi, par exemple : le {example}"

    def exception_on(self, day: dt.date, service: str) -> dict | None:
        for f in self.data.get("fermetures", []):
            if _as_date(f["date"]) == day and service in f.get("services", [service]):
                return f
        return None

    def day_hours_sentence(self, day: dt.date, service: str, today: dt.date) -> str:
        """'Le samedi 5 décembre, la piscine municipale vous reçoit de 10 h à 12 h 30.' (exceptions said)."""
        svc = self.data.get("services", {}).get(service) or {}
        nom = svc.get("nom", service)
        if not svc.get("horaires"):
            return f"{nom[:1].upper()}{nom[1:]} reçoit uniquement sur rendez-vous."
        when = {0: "aujourd'hui", 1: "demain"}.get((day - today).days)
        when = f"{when} {WEEKDAYS[day.weekday()]}" if when else spoken_date(day)
        slots = self.slots_on(day, service)
        said = f"{when}, {nom} " + (f"vous reçoit {_spoken_time_slots(slots)}." if slots
                                      else "ne reçoit pas de public.")
        exc = self.exception_on(day, service)
        if exc:
            kind = "Fermeture exceptionnelle" if exc.get("ferme") else "Horaires exceptionnels"
            return f"{kind}, {exc['motif']} : {said}" if exc.get("motif") else f"{kind} : {said}"
        return said[:1].upper() + said[1:]

    def prochains_evenements(self, n: int = 3) -> str:
        evs = sorted((e for e in self.data.get("evenements", []) if _as_date(e["date"]) >= self.today),
                     key=lambda e: _as_date(e["date"]))[:n]
        if not evs:
            return "Aucun événement n'est annoncé pour le moment."
        parts = []
        for e in evs:
            when = spoken_date(_as_date(e["date"]))
            if e.get("heure"):
                when += f" à {spoken_time(str(e['heure']))}"
            parts.append(f"{e['titre']}, {when}, {e['lieu']}")
        return "Prochainement : " + " ; ".join(parts) + "."

    def travaux_en_cours(self) -> str:
        works = [w for w in self.data.get("travaux", []) if _as_date(w["au"]) >= self.today]
        if not works:
            return "Aucun chantier important n'est en cours."
        parts = [f"{w['rue']}, jusqu'au {spoken_date(_as_date(w['au']), False)[3:]} : "
                 f"{w['description'][:1].lower()}{w['description'][1:].rstrip('.')}"
                 for w in works[:3]]
        return "Travaux en cours : " + " ; ".join(parts) + "."

    def collecte_dechets(self) -> str:
        c = self.data.get("collecte", {})
        parts = [f"{s['nom']}, ordures ménagères le {s['ordures_menageres']}, emballages le {s['emballages']}"
                 for s in c.get("secteurs", [])]
        return "Collecte : " + " ; ".join(parts) + "."

    def fermetures_a_venir(self, n: int = 3) -> str:
        fs = sorted((f for f in self.data.get("fermetures", []) if _as_date(f["date"]) >= self.today),
                    key=lambda f: _as_date(f["date"]))[:n]
        if not fs:
            return "Aucune fermeture exceptionnelle n'est prévue."
        parts = []
        for f in fs:
            when = spoken_date(_as_date(f["date"]))
            what = "fermée" if f.get("ferme") else f"ouverte {spoken_slots(f['horaires'])}"
            parts.append(f"{when} ({f.get('motif', '')}), la mairie sera {what}")
        return "À noter : " + " ; ".join(parts) + "."

    def evenement(self, word: str) -> str:
        """When and where the next event whose title holds `word` takes place (answers quote the
        events list rather than a copy of it)."""
        evs = sorted((e for e in self.data.get("evenements", [])
                      if word.lower() in e["titre"].lower() and _as_date(e["date"]) >= self.today),
                     key=lambda e: _as_date(e["date"]))
        if not evs:
            return f"à une date qui sera annoncée sur {self.data['commune']['site_web']}"
        e = evs[0]
        when = f"{spoken_date(_as_date(e['date']))} {_as_date(e['date']).year}"
        return f"{when} à {spoken_time(str(e['heure']))}, {e['lieu']}" if e.get("heure") else f"{when}, {e['lieu']}"

    def fermetures_de(self, service: str, motif: str = "") -> str:
        """The coming days a service is closed (for `motif`), from the closures list."""
        days = sorted(_as_date(f["date"]) for f in self.data.get("fermetures", [])
                      if f.get("ferme") and service in f.get("services", []) and motif in f.get("motif", "")
                      and _as_date(f["date"]) >= self.today)
        if not days:
            return f"à des dates annoncées sur {self.data['commune']['site_web']}"
        said = [spoken_date(d) for d in days[:3]]
        return (", ".join(said[:-1]) + " et " if len(said) > 1 else "") + said[-1] + f" {days[len(said) - 1].year}"

    def sector_for(self, text: str) -> dict | None:
        t = text.lower()
        for s in self.data.get("collecte", {}).get("secteurs", []):
            for rue in s.get("rues", []):
                if rue.lower() in t:
                    return s
        return None

    # opening of the main desk, used to decide between a transfer and a message
    def slots_on(self, day: dt.date, service: str = "accueil") -> list[tuple[dt.time, dt.time]]:
        f = self.exception_on(day, service)
        if f:
            return [] if f.get("ferme") else [_parse_slot(s) for s in f.get("horaires", [])]
        hours = (self.data.get("services", {}).get(service) or {}).get("horaires") or {}
        return [_parse_slot(s) for s in hours.get(WEEKDAYS[day.weekday()], [])]

    def is_open(self, when: dt.datetime, service: str = "accueil") -> bool:
        return any(a <= when.time() < b for a, b in self.slots_on(when.date(), service))

    def next_opening(self, when: dt.datetime, service: str = "accueil") -> str:
        for k in range(0, 15):
            day = when.date() + dt.timedelta(days=k)
            for a, _b in self.slots_on(day, service):
                if k == 0 and a <= when.time():
                    continue
                t = spoken_time(a.strftime("%H:%M"))
                if k == 0:
                    return f"aujourd'hui à {t}"
                if k == 1:
                    return f"demain à {t}"
                return f"{spoken_date(day)} à {t}"
        return "prochainement"


def _spoken_time_slots(slots: list[tuple[dt.time, dt.time]]) -> str:
    return spoken_slots([f"{a:%H:%M}-{b:%H:%M}" for a, b in slots])


def _parse_slot(s: str) -> tuple[dt.time, dt.time]:
    a, b = s.split("-")
    return dt.time.fromisoformat(a.strip()), dt.time.fromisoformat(b.strip())


@dataclass
class Corpus:
    commune: Commune
    entries: list[Entry]
    fingerprint: str
    vocabulary: list[str]
    off_topic: list[str] = field(default_factory=list)   # phrases the assistant must not answer
    aids: list = field(default_factory=list)             # dialogue.orientation.Aid, for the questionnaire

    def by_id(self, entry_id: str) -> Entry | None:
        return self._index.get(entry_id)

    def __post_init__(self):
        self._index = {e.id: e for e in self.entries}
        # street names, lowercase without accents, longest first (matched inside callers' words)
        self.streets_norm = sorted({_fold(v) for v in self.vocabulary}, key=len, reverse=True)


def join_spelled(text: str) -> str:
    """Letters a speech recogniser wrote one by one, joined: "le c c a s" -> "le ccas"."""
    return re.sub(r"\b(\w) (?=\w(?:\s|$))", r"\1", text)


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


def _hours_of(raw: dict) -> str:
    """The service whose opening hours the answer reads."""
    m = re.search(r"services\.(\w+)\.horaires", str(raw.get("answer", "")))
    return m.group(1) if m else ""


def fingerprint(corpus_dir: Path) -> str:
    h = hashlib.sha256()
    files = [corpus_dir / "commune.yaml", corpus_dir / "hors_sujet.yaml", corpus_dir / "aides.yaml"] + \
        sorted((corpus_dir / "faq").glob("*.yaml"))
    for p in (f for f in files if f.exists()):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def load_corpus(corpus_dir: str | Path, today: dt.date | None = None, strict: bool = True) -> Corpus:
    corpus_dir = Path(corpus_dir)
    problems: list[str] = []
    commune_file = corpus_dir / "commune.yaml"
    if not commune_file.exists():
        raise CorpusError([f"{commune_file} introuvable"])
    try:
        commune = Commune(yaml.safe_load(commune_file.read_text(encoding="utf-8")), today)
    except yaml.YAMLError as exc:
        raise CorpusError([f"{commune_file}: YAML invalide ({exc})"]) from None
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    ctx = {
        "commune": commune.data["commune"],
        "infos": commune.data.get("infos", {}),
        "services": commune.services_context(),
        "prochains_evenements": commune.prochains_evenements,
        "travaux_en_cours": commune.travaux_en_cours,
        "collecte_dechets": commune.collecte_dechets,
        "fermetures_a_venir": commune.fermetures_a_venir,
        "evenement": commune.evenement,
        "fermetures_de": commune.fermetures_de,
    }

    def render(text: str, where: str) -> str:
        try:
            return re.sub(r"\s+", " ", env.from_string(text).render(ctx)).strip()
        except jinja2.UndefinedError as exc:
            m = re.search(r"no attribute '([^']+)'|'([^']+)' is undefined", str(exc))
            name = (m.group(1) or m.group(2)) if m else str(exc)
            problems.append(f"{where}: balise inconnue « {name} » (voir commune.yaml)")
            return text
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"{where}: balise mal écrite ({exc.message})")
            return text
        except jinja2.TemplateError as exc:
            problems.append(f"{where}: {exc}")
            return text

    greeting = str(commune.data["commune"].get("message_accueil") or "")
    if "message_accueil" in commune.data["commune"]:
        commune.greeting_text = render(greeting, "commune.yaml message_accueil")
        if not commune.greeting_text:
            problems.append("commune.yaml message_accueil: message vide")
        elif "enregistr" not in commune.greeting_text.lower():      # callers must be told (GDPR)
            problems.append("commune.yaml message_accueil: il doit dire que l'appel est enregistré")
    entries: list[Entry] = []
    seen: set[str] = set()
    files = sorted((corpus_dir / "faq").glob("*.yaml"))
    if not files:
        problems.append(f"aucun fichier FAQ dans {corpus_dir / 'faq'}")
    for f in files:
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            problems.append(f"{f.name}: YAML invalide ({exc})")
            continue
        theme = doc.get("theme")
        if theme not in THEMES and theme not in EXTRA_THEMES:
            problems.append(f"{f.name}: thème inconnu {theme!r}")
            continue
        for raw in doc.get("entries") or []:
            eid = raw.get("id", "?")
            where = f"{f.name} {eid}"
            if eid in seen:
                problems.append(f"{where}: identifiant en double")
            seen.add(eid)
            if not str(eid).startswith(theme + "."):
                problems.append(f"{where}: l'identifiant doit commencer par {theme}.")
            qs = [str(q).strip() for q in raw.get("questions") or [] if str(q).strip()]
            if len(qs) < 2:
                problems.append(f"{where}: au moins deux questions sont nécessaires")
            action = raw.get("action", "answer")
            if action not in ACTIONS:
                problems.append(f"{where}: action inconnue {action!r}")
            answer = render(str(raw.get("answer", "")), where)
            if not answer:
                problems.append(f"{where}: réponse vide")
            elif _sentences(answer) > 3 and strict:
                problems.append(f"{where}: réponse de plus de trois phrases")
            elif re.search(r"\.\.|[:;]\s*[.:;]", answer):      # a placeholder's own punctuation doubled
                problems.append(f"{where}: ponctuation doublée une fois les balises remplacées")
            entries.append(Entry(
                id=eid, theme=theme, questions=qs, answer=answer,
                steps=[render(str(s), where) for s in raw.get("steps") or []],
                action=action, source=str(raw.get("source", "commune")),
                reviewed=str(raw.get("reviewed", "")), label=str(raw.get("label", "")).strip(),
                hours_of=_hours_of(raw)))
    from dialogue.orientation import AidsError, load_aids       # here: it imports search, which imports us

    aids = []
    try:
        aids = load_aids(corpus_dir, commune.data, render)
    except (AidsError, yaml.YAMLError) as exc:
        problems.append(f"aides : {exc}")
    if problems:
        raise CorpusError(problems)
    off_topic: list[str] = []
    if (corpus_dir / "hors_sujet.yaml").exists():
        try:
            off_topic = [str(p) for p in (yaml.safe_load((corpus_dir / "hors_sujet.yaml").read_text("utf-8"))
                                          or {}).get("phrases", []) if str(p).strip()]
        except yaml.YAMLError as exc:
            raise CorpusError([f"hors_sujet.yaml: YAML invalide ({exc})"]) from None
    vocab = sorted(set(commune.data.get("rues", [])))
    return Corpus(commune, entries, fingerprint(corpus_dir), vocab, off_topic, aids)
