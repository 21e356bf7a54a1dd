"""Personalised orientation: at most five short questions (situation, age, household, income, need),
then the aids that fit and where to ask for them. The rules are data: `corpus/aides.yaml` (national
aids, each with its service-public.fr page and the date it was checked) and `aides_locales` in
`commune.yaml`. Answers are kept as sets of possible values: "je ne sais pas" keeps them all, so an
unknown answer never rules an aid out."""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dialogue.search import strip_accents

NEEDS = ("logement", "revenu", "autonomie", "enfants", "sante")


@dataclass(frozen=True)
class Question:
    key: str
    prompt: str
    values: tuple[str, ...]                   # in key order: key 1 is values[0]
    patterns: tuple[tuple[str, str], ...]     # (value or "a|b", regex on the folded text), first match wins


QUESTIONS = (
    Question("situation", "Quelle est votre situation ? Dites : en emploi, sans emploi, retraité, ou étudiant. "
             "Ou tapez 1, 2, 3 ou 4.",
             ("emploi", "sans_emploi", "retraite", "etudiant"),
             (("sans_emploi", r"sans (?:emploi|travail|boulot|activite)|chomage|chomeu\w*|(?:ne |n'?)?travaille pas|"
                              r"pas de (?:travail|boulot)|demandeu\w* d'?emploi|france travail|pole emploi|au rsa|"
                              r"inacti\w*|au foyer|licencie\w*"),
              ("retraite", r"retraite\w*|pensionne\w*"),
              ("etudiant", r"etudi\w*|en formation|apprenti\w*|alternance|lyceen\w*|stagiaire"),
              ("emploi", r"emploi|travaille|salarie\w*|cdi|cdd|interim\w*|independant\w*|artisan|commercant\w*|"
                         r"auto[- ]?entrepreneu\w*|fonctionnaire|boulot|job|actif|active|a mon compte"))),
    Question("age", "Quel âge avez-vous ? Dites votre âge, ou tapez 1 pour moins de 25 ans, 2 de 25 à 59 ans, "
             "3 pour 60 ans ou plus.",
             ("moins_25", "de_25_a_59", "plus_60"),
             (("moins_25", r"moins de 25|jeune"),
              ("plus_60", r"plus de 60|60 (?:ans )?(?:et|ou) plus|senior|personne agee|vieu\w*"),
              ("de_25_a_59", r"entre 25 et 59|25 a 59"))),
    Question("foyer", "Vivez-vous seul, en couple, seul avec des enfants, ou en couple avec des enfants ? "
             "Tapez 1, 2, 3 ou 4.",
             ("seul", "couple", "seul_enfants", "couple_enfants"),
             (("seul_enfants", r"seule? avec (?:mes|mon|ma|des|un|une|\d+) (?:\w+ )?(?:enfant|fils|fille|gamin|gosse)\w*|"
                               r"parent isole|(?:mere|pere|maman|papa) (?:isole\w*|celibataire|solo)|monoparental\w*"),
              ("couple_enfants", r"(?:couple|marie\w*|pacse\w*|mari|femme|conjoint\w*|compagn\w*).*"
                                 r"(?:enfant|fils|fille|gamin|gosse|petit)\w*|(?:enfant|fils|fille|gamin|gosse)\w*.*"
                                 r"(?:couple|mari|femme|conjoint\w*|compagn\w*)"),
              ("seul_enfants|couple_enfants", r"enfants?|fils|filles?|gamins?|gosses?|famille"),
              ("couple", r"couple|marie\w*|pacse\w*|mon mari|ma femme|conjoint\w*|compagn\w*|a deux"),
              ("seul", r"seule?|celibataire|veu(?:f|ve)|divorce\w*|separe\w*"))),
    Question("revenus", "Combien gagne votre foyer par mois, environ ? Tapez 1 pour moins de 1 000 euros, "
             "2 de 1 000 à 2 000 euros, 3 pour plus de 2 000 euros. Vous pouvez aussi dire : je ne sais pas.",
             ("faibles", "moyens", "eleves"),
             (("faibles", r"rien|aucun\w*|pas de (?:revenu|salaire|ressource)\w*|(?:tres )?peu|faibles?|"
                          r"petit\w* (?:revenu|salaire|retraite)\w*|minimum|moins de 1000|pas grand[- ]chose|rsa|aspa"),
              ("moyens", r"moyen\w*|entre 1000 et 2000|smic"),
              ("eleves", r"eleve\w*|plus de 2000|confortable"))),
    Question("besoin", "Dernière question : de quoi avez-vous le plus besoin ? Tapez 1 pour le logement ou "
             "l'énergie, 2 pour de l'argent pour vivre, 3 pour l'aide à domicile, l'autonomie ou le handicap, "
             "4 pour les enfants et l'école, 5 pour la santé.",
             NEEDS,
             (("logement", r"logement|loyer|apl|loue\w*|locataire|energie|electricite|chauffage|gaz|factures?|"
                           r"expuls\w*|heberge\w*|appartement"),
              ("autonomie", r"autonomie|a domicile|a la maison|handicap\w*|dependan\w*|menage|maison de retraite|ehpad|"
                            r"invalid\w*|fauteuil|mobilite|personne agee|vieill\w*|aidant"),
              ("enfants", r"enfants?|ecole|scolari\w*|cantine|creche|garde|college|lycee|rentree|bourses?|bebe|"
                          r"naissance|etudes"),
              ("sante", r"sante|medecin|soins?|mutuelle|complementaire|dentiste|lunettes|medicaments?|hopital|"
                        r"malad\w*"),
              ("revenu", r"argent|revenus?|fins? de mois|manger|nourri\w*|alimenta\w*|courses|dettes?|budget|"
                         r"vivre|rsa|salaire"))),
)
QUESTION = {q.key: q for q in QUESTIONS}
DONT_KNOW = re.compile(r"je (?:ne )?sais pas|j'?sais pas|sais pas|aucune idee|prefere (?:ne )?pas|je passe|"
                       r"pas de reponse|peu importe|n'importe")
EVERYTHING = re.compile(r"^(?:un peu de |de )?tout\b|\bde tout\b|plusieurs|tous")
NUMBER = re.compile(r"\d+(?:[ .]\d{3})*")


@dataclass
class Aid:
    id: str
    name: str                     # spoken with its article: "le RSA"
    needs: tuple[str, ...]
    conditions: list[dict]        # alternatives; inside one, every field must allow the caller's answer
    say: str
    where: str                    # "auprès de la CAF"
    source: str
    checked: str
    local: bool = False

    def fits(self, profile: dict[str, list[str]]) -> bool:
        if not set(self.needs) & set(profile.get("besoin") or NEEDS):
            return False
        if not self.conditions:
            return True
        return any(all(set(allowed) & set(profile.get(k) or QUESTION[k].values) for k, allowed in c.items())
                   for c in self.conditions)


class AidsError(Exception):
    pass


def _aid(raw: dict, where: str, local: bool, render=lambda text, where: text) -> Aid:
    problems = []
    for k in ("id", "nom", "besoins", "dire", "ou", "source", "verifie"):
        if not raw.get(k):
            problems.append(f"{where}: champ « {k} » manquant")
    bad_needs = [n for n in raw.get("besoins") or [] if n not in NEEDS]
    if bad_needs:
        problems.append(f"{where}: besoin inconnu {bad_needs}")
    conditions = raw.get("conditions") or []
    for c in conditions:
        for k, allowed in (c or {}).items():
            if k not in QUESTION or k == "besoin":
                problems.append(f"{where}: condition inconnue « {k} »")
            elif not set(allowed) <= set(QUESTION[k].values):
                problems.append(f"{where}: valeur inconnue pour {k} : {sorted(set(allowed) - set(QUESTION[k].values))}")
    if problems:
        raise AidsError("; ".join(problems))
    return Aid(str(raw["id"]), render(str(raw["nom"]), where), tuple(raw["besoins"]), [dict(c) for c in conditions],
               render(str(raw["dire"]), where), render(str(raw["ou"]), where), str(raw["source"]),
               str(raw["verifie"]), local)


def load_aids(corpus_dir: str | Path, commune_data: dict, render=lambda text, where: text) -> list[Aid]:
    """The commune's own aids, then the national ones from aides.yaml: local ones are said first.
    `render` fills the {{ }} tags, as in the FAQ answers."""
    path = Path(corpus_dir) / "aides.yaml"
    national = (yaml.safe_load(path.read_text("utf-8")) or {}).get("aides", []) if path.exists() else []
    aids = [_aid(r, f"commune.yaml aides_locales {r.get('id', '?')}", True, render)
            for r in commune_data.get("aides_locales") or []]
    aids += [_aid(r, f"aides.yaml {r.get('id', '?')}", False, render) for r in national]
    ids = [a.id for a in aids]
    if len(ids) != len(set(ids)):
        raise AidsError(f"identifiants en double : {sorted({i for i in ids if ids.count(i) > 1})}")
    return aids


def _fold(text: str) -> str:
    return strip_accents(text.lower().replace("’", "'"))


def _numbers(text: str) -> list[int]:
    try:
        from text_to_num import alpha2digit

        text = alpha2digit(text, "fr", threshold=0)      # "deux" alone is the second option
    except Exception:
        pass
    return [int(re.sub(r"\D", "", m)) for m in NUMBER.findall(text)]


def parse(key: str, text: str, from_key: bool = False) -> list[str] | None:
    """The values the caller's answer allows for question `key`; all of them for "je ne sais pas";
    None when the answer says nothing about it."""
    q = QUESTION[key]
    if from_key:
        return [q.values[int(text) - 1]] if text.isdigit() and 1 <= int(text) <= len(q.values) else None
    low = _fold(text)
    if DONT_KNOW.search(low):
        return list(q.values)
    nums = _numbers(low)
    if key == "age" and nums:
        age = next((n for n in nums if 15 <= n <= 110), None)
        if age is not None:
            return ["moins_25" if age < 25 else "de_25_a_59" if age < 60 else "plus_60"]
    if key == "revenus" and nums:
        amount = max(nums)
        if amount >= 100:
            return ["faibles" if amount < 1000 else "moyens" if amount <= 2000 else "eleves"]
    if key == "besoin":                 # several needs may be said at once
        if EVERYTHING.search(low):
            return list(q.values)
        found = [v for v, rx in q.patterns if re.search(rf"\b(?:{rx})\b", low)]
        if found:
            return list(dict.fromkeys(found))
    for value, rx in q.patterns:
        if re.search(rf"\b(?:{rx})\b", low):
            return value.split("|")
    # "le deux", "trois": the option said instead of typed
    if len(low.split()) <= 3 and nums and 1 <= nums[0] <= len(q.values):
        return [q.values[nums[0] - 1]]
    return None


ORDINALS = {"premier": 1, "premiere": 1, "deuxieme": 2, "second": 2, "seconde": 2, "troisieme": 3, "quatrieme": 4}


def parse_choice(text: str, n: int, from_key: bool = False) -> int | None:
    """Which of the `n` aids said the caller picks: a key, "la deuxième", "numéro trois", "le un"."""
    if from_key:
        return int(text) if text.isdigit() and 1 <= int(text) <= n else None
    low = _fold(text)
    if len(low.split()) > 5:
        return None
    for word, i in ORDINALS.items():
        if re.search(rf"\b{word}\b", low) and i <= n:
            return i
    if re.search(r"^(?:(?:le|la|numero|l'aide) )?une?\b", low) and n >= 1:
        return 1
    nums = _numbers(low)
    return nums[0] if nums and 1 <= nums[0] <= n else None


def prefill(text: str) -> dict[str, list[str]]:
    """What the request itself already says ("je suis retraitée, je vis seule, à quoi j'ai droit"):
    those questions are not asked. Only clear statements count: no numbers, no "je ne sais pas"."""
    out = {}
    low = _fold(text)
    for q in QUESTIONS:
        if q.key in ("age", "revenus"):
            continue
        for value, rx in q.patterns:
            if re.search(rf"\b(?:{rx})\b", low) and "|" not in value:
                out[q.key] = [value]
                break
    out.pop("besoin", None)          # "j'ai besoin d'aide" says little: ask
    return out


@dataclass
class Result:
    aids: list[Aid] = field(default_factory=list)

    def spoken(self) -> str:
        if not self.aids:
            return ("D'après vos réponses, je ne vois pas d'aide qui vous corresponde à coup sûr. Le centre "
                    "communal d'action sociale peut étudier votre situation avec vous.")
        # the list says where in short ("auprès de la CAF"); the details of one aid say it in full
        parts = [f"{i}, {a.name}, à demander {a.where.split(',')[0]}." for i, a in enumerate(self.aids, 1)]
        return ("D'après vos réponses, vous pourriez avoir droit à : " + " ".join(parts) +
                " Le droit est toujours décidé par l'organisme qui verse l'aide.")


def orient(aids: list[Aid], profile: dict[str, list[str]], limit: int = 5) -> Result:
    """The aids that fit: those whose conditions the answers meet before those open to everyone, then
    local ones before national ones, each in its file's order."""
    fit = [a for a in aids if a.fits(profile)]
    return Result(sorted(fit, key=lambda a: not a.conditions)[:limit])


def review_due(aids: list[Aid], today: dt.date, months: int = 12) -> list[str]:
    """Aids whose rule was checked more than `months` ago: `ivr corpus check` lists them."""
    late = []
    for a in aids:
        try:
            checked = dt.date.fromisoformat(a.checked)
        except ValueError:
            late.append(a.id)
            continue
        if (today - checked).days > months * 31:
            late.append(a.id)
    return late
