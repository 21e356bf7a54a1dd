"""The per-call conversation: text or keys in, one Reply out. Transport-neutral and serialisable
(so `ivr ask --state` can carry it between commands)."""
from __future__ import annotations

import datetime as dt
import difflib
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from dialogue import orientation
from dialogue.corpus import THEMES, WEEKDAYS, Corpus, join_spelled
from dialogue.search import FaqIndex, clean_query, strip_accents

ACTIONS = ("answer", "clarify", "guide", "orientation", "signalement", "transfer", "message", "repeat", "goodbye")


@dataclass
class Reply:
    action: str                    # one of ACTIONS, or "greeting"
    text: str                      # French, to be spoken
    theme: str | None = None       # theme id; for a report, its category
    entry_id: str | None = None
    confidence: float = 0.0
    cacheable: bool = True         # False when the text holds what the caller said (personal data)
    transfer: bool = False         # hand the call to a person after speaking
    end_call: bool = False         # hang up after speaking
    summary: str = ""              # for the person who takes a transferred call
    satisfaction: int | None = None
    outcome: str | None = None
    ticket: str | None = None
    service: str | None = None     # the commune service the caller asked for (commune.yaml key)
    transfer_to: str | None = None  # its extension, when the transfer goes there rather than the desk
    aids: list[str] | None = None  # orientation: the aids said, in order

    def to_dict(self) -> dict:
        return asdict(self)


def _n(text: str) -> str:
    return strip_accents(text.lower().replace("’", "'")).strip()


def _rx(*alts: str) -> re.Pattern:
    return re.compile(r"(?:^|\b)(?:" + "|".join(alts) + r")(?:\b|$)")


PERSON = _rx(r"(?:parler|passer|joindre|avoir|mettre en relation|transferer)\b.{0,30}\b(?:quelqu ?'? ?un|personne|agent|humain|"
             r"conseill\w*|operat\w*|standard\w*|secretari\w*|vrai\w*|employe\w*|responsable|elu|maire)",
             r"passez[- ]moi", r"un agent", r"une personne", r"un humain", r"le standard", r"un conseiller",
             r"une conseillere", r"un operateur", r"une operatrice", r"quelqu ?'? ?un de la mairie")
# asking to be put through: "passez-moi le CCAS", "je voudrais parler au service urbanisme"
ROUTE = _rx(r"parler", r"passer", r"passez", r"joindre", r"mettre en relation", r"me mettre", r"mettez", r"transferer",
            r"transferez", r"contacter", r"appeler", r"avoir (?:le|la|les|l)")
YES = re.compile(r"^(?:oui|ouais|ouaip|yes|d'accord|dac|ok|okay|exactement|c'est (?:bien )?ca|c'est exact|tout a fait|"
                 r"absolument|bien sur|volontiers|affirmatif|correct|c'est correct|parfait|je veux bien|"
                 r"allez-y|allez y|vas-y|s'il vous plait)\b")
NO = re.compile(r"^(?:non|nan|no|pas du tout|pas vraiment|negatif|aucune?|rien|ni l'un ni l'autre|c'est pas ca|"
                r"ce n'est pas ca|pas besoin|ce sera tout|c'est tout|ca ira|non merci)\b")
REPEAT = _rx(r"repete[rz]?", r"repetez", r"redire", r"redites", r"redis", r"pas (?:bien )?(?:compris|entendu)",
             r"encore une fois", r"vous pouvez repeter",
             # alone, not at the end of a question ("il s'occupe de quoi")
             r"^(?:(?:euh|hein|pardon|quoi|comment|excusez[- ]moi)[\s,?!.]*){1,3}$")
GOODBYE = _rx(r"au revoir", r"revoire", r"bonne journee", r"bonne soiree", r"bonne fin de journee", r"a bientot", r"salut",
              r"c'est tout", r"ce sera tout", r"merci (?:beaucoup|bien|infiniment)", r"^merci$", r"^merci ?madame$",
              r"^merci ?monsieur$")
DAY = _rx(r"lundi", r"mardi", r"mercredi", r"jeudi", r"vendredi", r"samedi", r"dimanche", r"aujourd'? ?hui",
          r"apres[- ]demain", r"demain", r"ce soir", r"ce matin", r"cet apres[- ]midi", r"ce midi")
FAREWELL = _rx(r"au revoir", r"revoire", r"bonne journee", r"bonne soiree", r"a bientot")
# a caller's "Bonjour." before the question (often followed by a pause): a greeting, not a question
HELLO = re.compile(r"^(?:(?:oui|allo|ah|euh)[\s,.!]*)*(?:bonjour|bonsoir|allo|salut)"
                   r"(?:[\s,]+(?:madame|monsieur|mademoiselle|messieurs dames|a vous|tout le monde))?[\s.!?,]*$")
NEXT = _rx(r"suivant\w*", r"la suite", r"ensuite", r"continue[rz]?", r"apres", r"etape d'apres", r"on continue")
FIRST = _rx(r"(?:le |la )?premier\w*", r"un", r"1", r"le 1", r"l'un")
SECOND = _rx(r"(?:le |la )?(?:deuxieme|second\w*)", r"deux", r"2", r"le 2", r"l'autre", r"plutot le deuxieme")
STOP = _rx(r"arrete[rz]?", r"stop", r"laisse[rz]? tomber", r"annule[rz]?", r"on arrete", r"ca ne m'interesse pas")
ENGLISH_WORDS = set("the i you is are to my what how can could please hello hi want need speak english do does "
                    "where when a an and of for time open which who would like help me your this that".split())
FRENCH_WORDS = set("je tu il elle nous vous le la les un une des de du et est pour que qui quoi comment ou "
                   "mon ma mes votre mairie bonjour oui non ai suis".split())
INSULTS = _rx(r"con", r"conne", r"connard\w*", r"connasse", r"idiot\w*", r"abruti\w*", r"debile\w*", r"putain",
              r"merde\w*", r"salop\w*", r"encul\w*", r"ta gueule", r"cretin\w*", r"imbecile\w*", r"stupides?",
              r"nul(?:le)?s?", r"bordel", r"foutre", r"branleur\w*", r"fdp", r"batard\w*")


def extract_phone(text: str) -> str:
    """'zéro six douze trente-quatre...' or '06 12 34 56 78' -> '0612345678' ('' if not a phone number)."""
    try:
        from text_to_num import alpha2digit

        text = alpha2digit(text, "fr")
    except Exception:
        pass
    digits = re.sub(r"\D", "", text.replace("+33", "0"))
    m = re.search(r"0\d{9}", digits)
    return m.group(0) if m else ""


def spoken_phone(digits: str) -> str:
    return " ".join(digits[i:i + 2] for i in range(0, len(digits), 2))


STREET_TYPES = re.compile(r"(?:rue|avenue|av|boulevard|bd|chemin|place|impasse|allee|route|square|quai|cours|"
                          r"passage|lieu-dit|lotissement|residence|hameau|zone)\b")
PLACE_RE = re.compile(r"\b(?:\d+\s*(?:bis|ter)?\s*,?\s*)?(?:rue|avenue|av|boulevard|bd|chemin|place|impasse|allee|"
                      r"route|square|quai|cours|passage|lieu-dit|lotissement|parking|residence)\b[\w\s'-]{2,40}", re.I)


@dataclass
class State:
    stage: str = "main"                    # main | after_answer | clarify | guide_offer | guide | report |
                                           # message_offer | message | message_phone | message_confirm |
                                           # orient | orient_result | satisfaction | ended
    misunderstandings: int = 0
    silences: int = 0
    last_reply: dict | None = None
    candidates: list[str] = field(default_factory=list)
    entry_id: str | None = None            # entry being guided / reported
    step: int = 0
    report: dict = field(default_factory=dict)
    message: dict = field(default_factory=dict)
    answered: int = 0
    digits: str = ""                        # keys typed for a phone number
    history: list[str] = field(default_factory=list)
    asked: str = ""                         # the last question searched (a day named in it matters)
    orient: dict = field(default_factory=dict)  # orientation: answers so far, failed tries, aids said
    caller_phone: str = ""                  # the number this call comes from, when it is a French one
    unavailable: list[str] = field(default_factory=list)   # services that did not take the call (keys)


class Conversation:
    def __init__(self, corpus: Corpus, index: FaqIndex, dialogue_cfg: dict, store=None,
                 call_id: str | None = None, clock: Callable[[], dt.datetime] | None = None,
                 state: dict | None = None, caller: str = ""):
        """`caller`: the caller's SIP URI or number; a callback can go there on a simple "oui"."""
        self.corpus = corpus
        self.index = index
        self.cfg = dialogue_cfg
        self.store = store
        self.call_id = call_id
        self.clock = clock or dt.datetime.now
        self.s = State(**state) if state else State()
        if caller and not state:
            m = re.search(r"(?:sips?:)?(\+?\d[\d .-]{8,})", caller)
            self.s.caller_phone = extract_phone(m.group(1)) if m else ""
        self.commune = corpus.commune
        self._alternatives: list[str] = []
        self._searched: tuple[str | None, object] = (None, None)

    # --- public API -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return asdict(self.s)

    @property
    def expects(self) -> str | None:
        """What the caller is asked for now, so the ASR can listen for it: yes_no, choice, phone, place
        (an address: the commune's street names), or None for a free question."""
        stage, report = self.s.stage, self.s.report.get("stage")
        if stage == "orient":
            return f"orient_{self._orient_key()}"
        if stage in ("satisfaction", "guide_offer", "message_offer", "message_confirm") or \
                (stage == "report" and report == "confirm"):
            return "yes_no"
        if stage == "clarify":
            return "choice"
        if stage == "report" and report == "place":
            return "place"
        if self._wants_digits():
            return "phone"
        return None

    def greet(self) -> Reply:
        return self._say(Reply("greeting", self.commune.greeting))

    def returned(self, extension: str, status: str) -> Reply:
        """The caller is back: the desk or service they were put through to was busy, did not answer
        or could not be reached (the dialplan's DIALSTATUS). They are offered a message instead."""
        key = self.commune.service_by_extension(extension) or "accueil"
        if key not in self.s.unavailable:
            self.s.unavailable.append(key)
        return self._unavailable(key, status)

    def _unavailable(self, key: str, status: str = "") -> Reply:
        name = str(self.commune.data["services"].get(key, {}).get("nom") or "l'accueil de la mairie")
        plural = name.startswith("les ")
        what = {"BUSY": "sont déjà en ligne" if plural else "est déjà en ligne",
                "NOANSWER": "ne répondent pas" if plural else "ne répond pas"}.get(
            status, "ne sont pas joignables" if plural else "n'est pas joignable")
        self.s.stage = "message_offer"
        self.s.message = {"service": key}
        return self._say(Reply("message", f"{name[0].upper()}{name[1:]} {what} pour le moment. Voulez-vous "
                               "laisser un message pour être rappelé ? Dites oui ou non.", service=key))

    def on_text(self, text: str, asr_confidence: float = 1.0, alternatives: list[str] = ()) -> Reply:
        """`alternatives`: other ASR readings of the same words, tried when `text` matches no entry
        for sure (Whisper's second-best beam often holds the rare word the best one missed)."""
        self._alternatives = list(alternatives)
        # markup or template code is not speech: drop it rather than let it match an entry
        text = re.sub(r"<[^>]{0,200}>|\{\{.*?\}\}|\{%.*?%\}", " ", (text or "")).strip()
        if text:
            self.s.history.append(text[:300])
            self.s.silences = 0
        n = _n(clean_query(text) if text else "")
        raw = _n(text)
        stage = self.s.stage
        if stage == "ended":
            return self._say(Reply("goodbye", "Au revoir.", end_call=True))
        # stages that take free text as data come first: a street name or a message is not a question
        if stage == "report":
            return self._report_input(text, raw)
        if stage in ("message", "message_phone", "message_confirm"):
            return self._message_input(text, raw)
        if not raw.strip(" .?!,"):
            return self._not_understood("empty")
        service = self._named_service(raw)
        if service:
            return self._to_service(service)
        if PERSON.search(raw):
            return self._to_person("demande à parler à un agent")
        if FAREWELL.search(raw) and len(clean_query(raw).split()) <= 3 and stage != "satisfaction":
            return self._goodbye()
        if REPEAT.search(raw) and len(raw.split()) <= 6:
            return self._repeat()
        if HELLO.match(raw) and stage in ("main", "after_answer"):
            return self._say(Reply("greeting", "Bonjour, je vous écoute."))
        if stage in ("orient", "orient_result"):
            r = self._orient_input(text, raw)
            if r:
                return r
        if stage == "satisfaction":
            if YES.match(raw) or NO.match(raw):
                return self._satisfaction(1 if YES.match(raw) else 2)
        if stage == "clarify":
            r = self._clarify_input(n, raw)
            if r:
                return r
        if stage in ("guide_offer", "guide", "after_answer") and NO.match(raw) and GOODBYE.search(raw):
            return self._goodbye()
        if stage == "guide_offer":
            if YES.match(raw):
                self.s.stage, self.s.step = "guide", 0
                return self._guide_step()
            if NO.match(raw):
                return self._another_question("Très bien.")
        if stage == "guide":
            if NEXT.search(raw) or YES.match(raw):
                self.s.step += 1
                return self._guide_step()
            if NO.match(raw):
                return self._another_question("Très bien.")
        if stage == "message_offer":
            if YES.match(raw):
                self.s.stage = "message"
                return self._say(Reply("message", "Je vous écoute : dites votre message, en précisant votre nom "
                                       "et votre numéro de téléphone.", outcome="message"))
            if NO.match(raw):
                return self._goodbye()
        if stage in ("after_answer", "guide", "guide_offer", "message_offer"):
            if NO.match(raw) and len(raw.split()) <= 4:
                return self._goodbye()
            if YES.match(raw) and len(raw.split()) <= 3:
                self.s.stage = "main"
                return self._say(Reply("answer", "Je vous écoute."))
        if GOODBYE.search(raw) and len(clean_query(raw).split()) <= 2:
            return self._goodbye()
        if stage == "main" and self.s.answered and NO.match(raw) and "merci" in raw and len(raw.split()) <= 4:
            return self._goodbye()          # "non merci" once something was answered: the caller is done
        if stage == "after_answer" and self.s.entry_id and DAY.search(raw) and len(clean_query(raw).split()) <= 4:
            e = self.corpus.by_id(self.s.entry_id)
            if e and e.hours_of:                  # "et le samedi ?" after a timetable
                return self._answer_entry(e.id, 1.0, asked=raw, day_only=True)
        if self._looks_english(raw):
            return self._say(Reply("transfer" if self._open() else "message",
                                   "Ce service fonctionne uniquement en français. For English, please press 0. "
                                   "Pour parler à une personne, tapez 0 ou dites : un agent.",
                                   confidence=0.0))
        insult = bool(INSULTS.search(raw))
        if insult and len(clean_query(raw).split()) <= 4:
            return self._say(Reply("clarify", "Je comprends que ce soit agaçant. Je suis là pour vous aider : "
                                   "posez-moi votre question, ou dites : un agent, pour parler à une personne."))
        return self._question(text)

    def on_dtmf(self, key: str) -> Reply:
        stage = self.s.stage
        if stage in ("orient", "orient_result") and (key.isdigit() and key != "0" or key == "#"):
            return self._orient_input(key, key, from_key=True) or self._repeat()
        if stage in ("report", "message_phone") and (key.isdigit() or key == "#") and self._wants_digits():
            if key != "#":
                self.s.digits += key
                if len(self.s.digits) < 10:
                    return Reply("signalement" if stage == "report" else "message", "", cacheable=False)
            number, self.s.digits = self.s.digits, ""
            if stage == "message_phone":
                self.s.message["typed"] = True          # keys are exact: no read-back
            return self.on_text(number)
        if key == "0":
            return self._to_person("touche 0")
        if key == "*":
            return self._repeat()
        if key in ("1", "2"):
            if stage == "clarify" and len(self.s.candidates) >= int(key):
                return self._answer_entry(self.s.candidates[int(key) - 1], 1.0)
            if stage == "satisfaction":
                return self._satisfaction(int(key))
            return self.on_text("oui" if key == "1" else "non")
        return self._say(Reply("clarify", "Cette touche n'est pas utilisée. Tapez 0 pour parler à un agent, "
                               "ou posez votre question."))

    def unsure(self, text: str, alternatives: list[str] = ()) -> bool:
        """Would this turn, taken as it is, be a question the knowledge answers for no one entry?
        Said with a pause, "Je voudrais parler" or "Je cherche les horaires" is often the first half of
        the question: the caller is given a moment to finish before being asked to rephrase."""
        if self.s.stage not in ("main", "after_answer"):
            return False
        raw = _n(text)
        if not raw.strip(" .?!,") or self._named_service(raw) or any(
                rx.search(raw) for rx in (PERSON, FAREWELL, GOODBYE, REPEAT, DAY)) or any(
                rx.match(raw) for rx in (YES, NO, HELLO)):
            return False                # a command, or a reply to what was just said
        threshold = float(self.cfg["answer_threshold"])
        return all(self._search(self._without_places(t)).confidence < threshold for t in [text, *alternatives])

    def _search(self, query: str):
        """The index's answer, kept for the same query: `unsure` then `on_text` search it once."""
        if self._searched[0] != query:
            self._searched = (query, self.index.search(query))
        return self._searched[1]

    def on_silence(self) -> Reply:
        if self.s.stage == "satisfaction":     # the caller said goodbye: no answer is an answer
            return self._say(Reply("goodbye", "Merci de votre appel. Au revoir et bonne journée.", end_call=True))
        self.s.silences += 1
        if self.s.silences == 1:
            return self._say(Reply("clarify", "Je ne vous entends pas. Posez votre question, "
                                   "ou tapez 0 pour parler à un agent."))
        if self._open() and "accueil" not in self.s.unavailable:
            return self._say(Reply("transfer", "Je n'entends toujours rien. Je vous passe un agent, ne quittez pas.",
                                   transfer=True, summary="appelant silencieux"))
        return self._say(Reply("goodbye", "Je n'entends toujours rien. N'hésitez pas à rappeler. Au revoir.",
                               end_call=True, outcome="abandoned"))

    # --- helpers ------------------------------------------------------------------------------------
    def _say(self, r: Reply) -> Reply:
        if r.action != "repeat" and r.text:
            self.s.last_reply = r.to_dict()
        if r.end_call or r.transfer:
            self.s.stage = "ended"
        return r

    def _open(self) -> bool:
        return self.commune.is_open(self.clock())

    def _looks_english(self, raw: str) -> bool:
        words = re.findall(r"[a-z']+", raw)
        if len(words) < 3:
            return False
        en = sum(w in ENGLISH_WORDS for w in words)
        fr = sum(w in FRENCH_WORDS for w in words)
        return en >= 2 and en > 2 * fr

    def _repeat(self) -> Reply:
        last = self.s.last_reply
        if not last:
            return self.greet()
        r = Reply(**last)
        r.action = "repeat"
        r.transfer = r.end_call = False
        return r

    def _another_question(self, prefix: str) -> Reply:
        self.s.stage = "after_answer"
        return self._say(Reply("answer", f"{prefix} Avez-vous une autre question ?".strip()))

    def _goodbye(self) -> Reply:
        if self.s.answered and self.s.stage != "satisfaction":
            self.s.stage = "satisfaction"
            return self._say(Reply("goodbye", "Avant de nous quitter : êtes-vous satisfait de nos réponses ? "
                                   "Dites oui ou non, ou tapez 1 pour oui, 2 pour non."))
        return self._say(Reply("goodbye", "Merci de votre appel. Au revoir et bonne journée.", end_call=True))

    def _satisfaction(self, value: int) -> Reply:
        return self._say(Reply("goodbye", "Merci pour votre réponse. Au revoir et bonne journée.",
                               end_call=True, satisfaction=value))

    def _to_person(self, reason: str) -> Reply:
        summary = f"{reason} ; dit : " + " / ".join(self.s.history[-3:]) if self.s.history else reason
        if "accueil" in self.s.unavailable:         # it just failed to take this call
            return self._unavailable("accueil")
        if self._open():
            return self._say(Reply("transfer", "Je vous passe un agent, ne quittez pas.", transfer=True,
                                   summary=summary[:300]))
        self.s.stage = "message_offer"
        return self._say(Reply(
            "message", f"La mairie est fermée en ce moment ; elle ouvrira {self.commune.next_opening(self.clock())}. "
                       "Voulez-vous laisser un message pour être rappelé ?"))

    def _named_service(self, raw: str) -> str | None:
        """The service a caller asks to be put through to, if any: a routing verb and a service's name,
        or the name alone in a few words ("le CCAS s'il vous plaît")."""
        service = self.commune.service_named(raw)
        if not service:
            return None
        m = ROUTE.search(raw)
        # "avoir" routes only with the name right after it: "avoir la mairie", not "avoir la carte de la déchetterie"
        if m and (not m.group(0).startswith("avoir") or self.commune.service_named(raw[m.start():m.end() + 25])):
            return service
        words = len(join_spelled(raw).split())                     # "c c a s" is one word
        if words <= 8 and re.search(r"\bservice\b|s'il vous plait|\bsvp\b", raw):
            return service
        return None

    def _to_service(self, key: str) -> Reply:
        svc = self.commune.data["services"][key]
        name, ext = svc["nom"], str(svc.get("poste") or "")
        summary = f"demande {name} ; dit : " + " / ".join(self.s.history[-3:])
        if not ext:                     # not on the town hall's switchboard: say how to reach it
            self.s.stage = "after_answer"
            return self._say(Reply("answer", f"Vous pouvez joindre {name} au {svc.get('telephone', '')}. "
                                   "Avez-vous une autre question ?", service=key))
        if key in self.s.unavailable:
            return self._unavailable(key)
        now = self.clock()
        if self.commune.is_open(now, key):
            return self._say(Reply("transfer", f"Je vous passe {name}, ne quittez pas.", transfer=True,
                                   summary=summary[:300], service=key, transfer_to=ext))
        self.s.stage = "message_offer"
        self.s.message = {"service": key}
        return self._say(Reply("message", f"Ce service est fermé en ce moment ; il ouvrira "
                               f"{self.commune.next_opening(now, key)}. Voulez-vous laisser un message "
                               "pour être rappelé ?", service=key))

    def _not_understood(self, why: str) -> Reply:
        self.s.misunderstandings += 1
        if self.s.misunderstandings >= int(self.cfg.get("max_misunderstandings", 2)):
            self.s.misunderstandings = 0
            return self._to_person("incompréhension répétée")
        if self.s.stage not in ("main", "after_answer"):
            self.s.stage = "main"
        return self._say(Reply("clarify", "Excusez-moi, je n'ai pas bien compris. "
                               "Pouvez-vous reformuler votre question en quelques mots ?"))

    def _question(self, text: str) -> Reply:
        words = text.split()
        query = text
        if len(words) > 80:         # a long story ends with its question, often after "bref"
            tail = " ".join(words[-60:])
            m = list(re.finditer(r"\b(?:bref|en fait|ma question|je voulais savoir|je voudrais savoir|donc)\b",
                                 tail, re.I))
            query = tail[m[-1].end():] if m and len(tail[m[-1].end():].split()) >= 3 else tail
        self.s.asked = query
        res = self._search(self._without_places(query))
        if res.confidence < float(self.cfg["answer_threshold"]):
            for alt in self._alternatives:
                other = self._search(self._without_places(alt))
                if other.confidence >= float(self.cfg["answer_threshold"]):
                    res = other
                    break
        best = res.best
        if best is None:
            return self._not_understood("empty")
        conf = res.confidence
        if conf >= float(self.cfg["answer_threshold"]):
            return self._answer_entry(best.entry.id, conf)
        second = next((c for c in res.candidates[1:] if c.entry.spoken_label != best.entry.spoken_label), None)
        if conf >= float(self.cfg["clarify_threshold"]) and second is not None and self.s.stage != "clarify":
            self.s.stage = "clarify"
            self.s.candidates = [best.entry.id, second.entry.id]
            return self._say(Reply(
                "clarify", f"Votre question concerne-t-elle {best.entry.spoken_label}, ou plutôt "
                           f"{second.entry.spoken_label} ? Dites : le premier, ou : le second, ou tapez 1 ou 2.",
                theme=best.entry.theme if best.entry.theme in THEMES else None, entry_id=None, confidence=conf))
        return self._not_understood("low_confidence")

    def _clarify_input(self, n: str, raw: str) -> Reply | None:
        a, b = self.s.candidates[:2]
        if SECOND.search(raw) and len(raw.split()) <= 5:
            return self._answer_entry(b, 1.0)
        if (FIRST.search(raw) or YES.match(raw)) and len(raw.split()) <= 5:
            return self._answer_entry(a, 1.0)
        if NO.match(raw) and len(raw.split()) <= 5:
            self.s.stage = "main"
            return self._not_understood("clarify_refused")
        res = self.index.search(raw)
        for c in res.candidates[:3]:
            if c.entry.id in (a, b):
                return self._answer_entry(c.entry.id, max(res.confidence, 0.5))
        self.s.stage = "main"
        return None

    def _day_asked(self, text: str) -> dt.date | None:
        m = DAY.search(_n(text))
        if not m:
            return None
        word, today = m.group(0).strip(), self.clock().date()
        if word in WEEKDAYS:
            return today + dt.timedelta(days=(WEEKDAYS.index(word) - today.weekday()) % 7)
        return today + dt.timedelta(days=2 if word.startswith("apres") else 1 if word == "demain" else 0)

    def _hours_answer(self, e, asked: str, day_only: bool) -> str:
        """The entry's answer, or for a named day the hours of that very date (closures included)."""
        day = self._day_asked(asked) if e.hours_of else None
        if day is None:
            return e.answer
        said = self.commune.day_hours_sentence(day, e.hours_of, self.clock().date())
        return said if day_only or "horaires" in e.id else f"{e.answer} {said}"

    def _answer_entry(self, entry_id: str, conf: float, asked: str | None = None, day_only: bool = False) -> Reply:
        e = self.corpus.by_id(entry_id)
        self.s.misunderstandings = 0
        self.s.candidates = []
        self.s.entry_id = e.id
        theme = e.theme if e.theme in THEMES else None
        if e.action == "signalement":
            self.s.stage = "report"
            self.s.report = {"category": e.theme, "entry": e.id, "place": "", "description": "", "phone": None,
                             "stage": "place"}
            place = self._find_place(" ".join(self.s.history[-1:]))
            if place:
                self.s.report["place"] = place
                self.s.report["stage"] = "description"
                ask = f"J'ai noté le lieu : {place}. Décrivez le problème en une phrase."
                return self._say(Reply("signalement", f"{e.answer} {ask}", theme=e.theme, entry_id=e.id,
                                       confidence=conf, cacheable=False))
            return self._say(Reply("signalement", f"{e.answer} Où se situe le problème ? Donnez le nom de la rue "
                                   "et le numéro, ou un lieu proche.", theme=e.theme, entry_id=e.id, confidence=conf))
        if e.action == "orientation":
            return self._start_orientation(" ".join(self.s.history[-1:]), e.answer, e.id)
        if e.action == "transfer":
            self.s.answered += 1
            if self._open():
                return self._say(Reply("transfer", f"{e.answer} Je vous passe un agent, ne quittez pas.", theme=None,
                                       entry_id=e.id, confidence=conf, transfer=True,
                                       summary=f"hors compétence : {e.spoken_label}"))
            self.s.stage = "after_answer"
            return self._say(Reply("answer", f"{e.answer} Avez-vous une autre question ?", theme=None,
                                   entry_id=e.id, confidence=conf))
        self.s.answered += 1
        answer = self._hours_answer(e, self.s.asked if asked is None else asked, day_only)
        if e.steps and not day_only:
            self.s.stage = "guide_offer"
            return self._say(Reply("answer", f"{answer} Voulez-vous que je vous guide étape par étape ?",
                                   theme=theme, entry_id=e.id, confidence=conf))
        self.s.stage = "after_answer"
        return self._say(Reply("answer", f"{answer} Avez-vous une autre question ?", theme=theme,
                               entry_id=e.id, confidence=conf))

    def _guide_step(self) -> Reply:
        e = self.corpus.by_id(self.s.entry_id)
        steps = e.steps
        if self.s.step >= len(steps):
            return self._another_question("C'était la dernière étape.")
        n = self.s.step + 1
        text = f"Étape {n} sur {len(steps)} : {steps[self.s.step]}"
        if n < len(steps):
            text += " Dites : suivant, ou : répétez."
        else:
            self.s.stage = "after_answer"
            text += " C'était la dernière étape. Avez-vous une autre question ?"
        return self._say(Reply("guide", text, theme=e.theme if e.theme in THEMES else None, entry_id=e.id,
                               confidence=1.0))

    def _without_places(self, text: str) -> str:
        """Street names say where, not what: "rue des Écoles" must not pull towards school enrolment.
        They are taken out before the search (the report keeps them). Places that are also topics
        (the cemetery, the salle des fêtes, the station) stay: they are what the caller asks about.
        The caller's accents are kept (the search scores accented words better)."""
        low = strip_accents(text.lower())
        if len(low) != len(text):                       # a character that folds to two: leave it be
            return text
        keep = list(text)
        for street in self.corpus.streets_norm:
            if not STREET_TYPES.match(street):
                continue
            for m in re.finditer(re.escape(street), low):
                for i in range(m.start(), m.end()):
                    keep[i] = " "
        out = re.sub(r"\b(?:au|à|a|le|du)?\s*\d+\s*(?:bis|ter)?\s*$", " ", "".join(keep).strip(), flags=re.I)
        out = re.sub(r"\s+", " ", out).strip()
        return out if len(out.split()) >= 2 else text

    # --- orientation questionnaire ------------------------------------------------------------------
    def _start_orientation(self, text: str, intro: str, entry_id: str) -> Reply:
        """Started by the FAQ entry with action orientation ("à quoi j'ai droit ?"); its answer is the intro."""
        self.s.stage = "orient"
        self.s.orient = {"profile": orientation.prefill(text), "tries": 0, "aids": []}
        r = self._orient_ask(intro)
        r.entry_id = entry_id
        return r

    def _orient_key(self) -> str | None:
        return next((q.key for q in orientation.QUESTIONS if q.key not in self.s.orient.get("profile", {})), None)

    def _orient_ask(self, prefix: str = "") -> Reply:
        key = self._orient_key()
        if key is None:
            return self._orient_result()
        return self._say(Reply("orientation", f"{prefix} {orientation.QUESTION[key].prompt}".strip(),
                               theme="social", confidence=1.0))

    def _orient_result(self) -> Reply:
        o = self.s.orient
        result = orientation.orient(self.corpus.aids, o["profile"])
        o["aids"] = [a.id for a in result.aids]
        self.s.stage = "orient_result"
        self.s.answered += 1
        more = "Pour le détail d'une aide, dites ou tapez son numéro. " if result.aids else ""
        ccas = "Pour être aidé dans vos démarches, dites : le CCAS. " if "ccas" in self.commune.data["services"] else ""
        return self._say(Reply("orientation", f"{result.spoken()} {more}{ccas}Sinon, posez une autre question.",
                               theme="social", confidence=1.0, aids=o["aids"]))

    def _orient_input(self, text: str, raw: str, from_key: bool = False) -> Reply | None:
        """One answer to the questionnaire, or after the results a choice among them; None when the
        caller moved on to something else (then it is searched as a question)."""
        o = self.s.orient
        if self.s.stage == "orient_result":
            known = {a.id: a for a in self.corpus.aids}
            aids = [known[i] for i in o.get("aids", []) if i in known]
            pick = orientation.parse_choice(raw if not from_key else text, len(aids), from_key)
            if pick:
                a = aids[pick - 1]
                return self._say(Reply("orientation", f"{a.say} À demander {a.where}. Pour une autre aide, dites "
                                       "son numéro ; sinon, posez une autre question.", theme="social",
                                       confidence=1.0))
            if from_key:
                return None
            if re.search(r"\bc ?c ?a ?s\b|action sociale", raw) and "ccas" in self.commune.data["services"]:
                return self._to_service("ccas")
            if NO.match(raw) and len(raw.split()) <= 4:
                return self._goodbye()
            self.s.stage = "after_answer"
            return None
        if not from_key and STOP.search(raw):
            return self._another_question("Très bien, j'arrête les questions.")
        key = self._orient_key()
        if from_key and text == "#":                                  # "#": skip the question
            values = list(orientation.QUESTION[key].values)
        else:
            values = orientation.parse(key, text, from_key)
        if values is None:
            o["tries"] = o.get("tries", 0) + 1
            if o["tries"] < 2:
                return self._say(Reply("orientation", "Je n'ai pas compris. " + orientation.QUESTION[key].prompt,
                                       theme="social", confidence=0.0))
            values = list(orientation.QUESTION[key].values)        # no answer: it rules nothing out
        o["tries"] = 0
        o["profile"][key] = values
        return self._orient_ask()

    # --- reports (signalements) ---------------------------------------------------------------------
    def _find_place(self, text: str) -> str:
        try:                                        # "au douze, rue..." -> "au 12, rue..."
            from text_to_num import alpha2digit

            text = alpha2digit(text, "fr")
        except Exception:
            pass
        low = strip_accents(text.lower())
        originals = {strip_accents(v.lower()): v for v in self.corpus.vocabulary}
        for street in self.corpus.streets_norm:
            if street in low:
                m = re.search(r"(\d+)\s*(?:bis|ter)?\s*,?\s*" + re.escape(street.split()[0]), low)
                return f"{m.group(1)} {originals[street]}" if m else originals[street]
        m = PLACE_RE.search(text)
        if not m:
            return ""
        # a street misheard by a letter or two ("rue des teneurs") is the commune's street
        said = strip_accents(m.group(0).lower()).strip(" ,.")
        num = re.match(r"(\d+\s*(?:bis|ter)?)\s*,?\s*(.*)", said)
        name = num.group(2) if num else said
        close = difflib.get_close_matches(name, self.corpus.streets_norm, n=1, cutoff=0.85)
        if close:
            return f"{num.group(1).strip()} {originals[close[0]]}" if num else originals[close[0]]
        return m.group(0).strip(" ,.")

    def _phone(self, text: str) -> str:
        """A ten-digit number from the ASR's best reading, or else from one of its other readings."""
        return next((p for p in map(extract_phone, [text] + self._alternatives) if p), "")

    def _wants_digits(self) -> bool:
        return self.s.stage == "message_phone" or (self.s.stage == "report" and self.s.report.get("stage") == "phone")

    def _report_input(self, text: str, raw: str) -> Reply:
        r = self.s.report
        cat = r["category"]
        if raw and PERSON.search(raw):
            return self._to_person(f"signalement {cat} en cours")
        if raw and REPEAT.search(raw) and len(raw.split()) <= 5:
            return self._repeat()
        if not raw.strip():
            return self._say(Reply("signalement", "Je n'ai pas entendu. " + self._report_prompt(), theme=cat,
                                   entry_id=r["entry"]))
        if r["stage"] == "place":
            r["place"] = self._find_place(text) or text.strip(" .")[:120]
            r["stage"] = "description"
            return self._say(Reply("signalement", "Merci. " + self._report_prompt(), theme=cat, entry_id=r["entry"]))
        if r["stage"] == "description":
            r["description"] = text.strip()[:300]
            r["stage"] = "phone"
            return self._say(Reply("signalement", self._report_prompt(), theme=cat, entry_id=r["entry"]))
        if r["stage"] == "phone":
            if NO.match(raw):
                r["phone"] = ""
            elif self.s.caller_phone and YES.match(raw) and not self._phone(text):
                r["phone"] = self.s.caller_phone
            else:
                phone = self._phone(text)
                if not phone:
                    return self._say(Reply("signalement", "Je n'ai pas reconnu un numéro de téléphone à dix "
                                           "chiffres. Tapez-le sur le clavier, ou dites-le chiffre par chiffre, "
                                           "ou dites non.", theme=cat,
                                           entry_id=r["entry"]))
                r["phone"] = phone
            r["stage"] = "confirm"
            return self._say(Reply("signalement", self._recap(), theme=cat, entry_id=r["entry"], cacheable=False))
        if r["stage"] == "confirm":
            if YES.match(raw):
                ticket = self._store_report()
                self.s.stage = "after_answer"
                self.s.answered += 1
                return self._say(Reply(
                    "signalement", f"Votre signalement est enregistré sous le numéro {ticket}. Je répète : {ticket}. "
                                   "Avez-vous une autre question ?", theme=cat, entry_id=r["entry"],
                    cacheable=False, ticket=ticket, confidence=1.0))
            if NO.match(raw):
                r.update(place="", description="", phone=None, stage="place")
                return self._say(Reply("signalement", "Reprenons. " + self._report_prompt(), theme=cat,
                                       entry_id=r["entry"]))
            return self._say(Reply("signalement", "Dites oui pour enregistrer le signalement, ou non pour le "
                                   "corriger.", theme=cat, entry_id=r["entry"]))
        return self._not_understood("report")

    def _report_prompt(self) -> str:
        return {
            "place": "Où se situe le problème ? Donnez le nom de la rue et le numéro, ou un lieu proche.",
            "description": "Décrivez le problème en une phrase.",
            "phone": (f"Souhaitez-vous être rappelé au {spoken_phone(self.s.caller_phone)}, le numéro de cet appel ? "
                      "Dites oui ou non. Pour un autre numéro, tapez-le sur le clavier, ou dites-le chiffre par "
                      "chiffre." if self.s.caller_phone else
                      "Souhaitez-vous être rappelé ? Si oui, tapez votre numéro sur le clavier, ou dites-le chiffre "
                      "par chiffre. Sinon, dites non."),
            "confirm": self._recap() if self.s.report.get("stage") == "confirm" else "",
        }[self.s.report["stage"]]

    def _recap(self) -> str:
        r = self.s.report
        e = self.corpus.by_id(r["entry"])
        label = e.spoken_label if e else THEMES.get(r["category"], r["category"])
        phone = f"Rappel au {spoken_phone(r['phone'])}." if r["phone"] else "Sans rappel."
        return (f"Je récapitule : {label}, lieu : {r['place']}. Description : {r['description'].rstrip('.')}. "
                f"{phone} Est-ce correct ?")

    def _store_report(self) -> str:
        r = self.s.report
        if self.store is None:
            return f"SIG-{self.clock().year}-{int(time.time()) % 1000000:06d}"
        return self.store.add_report(self.call_id, r["category"], r["place"], r["description"], r["phone"] or "")

    # --- messages (outside opening hours) ----------------------------------------------------------
    def _message_input(self, text: str, raw: str) -> Reply:
        """The message, then the number to call back, read back before it is stored: a number misheard
        by one digit is a callback that never reaches the caller."""
        m = self.s.message
        if not raw.strip():
            return self._say(Reply("message", "Je n'ai rien entendu. Dites votre message, ou raccrochez.",
                                   cacheable=True))
        if self.s.stage == "message":
            m["text"] = text.strip()[:1000]
            m["phone"] = self._phone(text)
            if not m["phone"]:
                self.s.stage = "message_phone"
                own = self.s.caller_phone
                return self._say(Reply("message", (
                    f"Pouvons-nous vous rappeler au {spoken_phone(own)}, le numéro de cet appel ? Dites oui. "
                    "Pour un autre numéro, tapez-le sur le clavier, ou dites-le chiffre par chiffre." if own else
                    "À quel numéro pouvons-nous vous rappeler ? Tapez-le sur le clavier, ou dites-le chiffre par "
                    "chiffre."),
                    cacheable=not own))
            return self._message_confirm()
        if self.s.stage == "message_confirm":
            if YES.match(raw):
                return self._store_message()
            if NO.match(raw) and not self._phone(text):
                self.s.stage = "message_phone"
                m["tries"] = m.get("tries", 0) + 1
                if m["tries"] >= 2:                   # twice wrong by voice: keep the message, no number
                    m["phone"] = ""
                    return self._store_message()
                return self._say(Reply("message", "Tapez le numéro sur le clavier, ou dites les chiffres un par "
                                       "un, lentement."))
            phone = self._phone(text)                 # "non, c'est le 06..." corrects it at once
            if not phone:
                return self._say(Reply("message", "Dites oui si le numéro est correct, ou non pour le corriger."))
            m["phone"] = phone
            return self._message_confirm()
        if self.s.caller_phone and YES.match(raw) and not self._phone(text):
            m["phone"] = self.s.caller_phone
            return self._store_message()
        phone = self._phone(text)
        if not phone and not NO.match(raw):
            return self._say(Reply("message", "Je n'ai pas reconnu un numéro à dix chiffres. Tapez-le, ou "
                                   "dites-le chiffre par chiffre, ou dites non."))
        m["phone"] = phone
        return self._message_confirm() if phone and not m.get("typed") else self._store_message()

    def _message_confirm(self) -> Reply:
        self.s.stage = "message_confirm"
        return self._say(Reply("message", f"Je note : rappel au {spoken_phone(self.s.message['phone'])}. "
                               "Est-ce correct ?", cacheable=False))

    def _store_message(self) -> Reply:
        m = self.s.message
        if self.store is not None:
            self.store.add_callback(self.call_id, m["text"], m.get("phone", ""), m.get("service", ""))
        phone = f" au {spoken_phone(m['phone'])}" if m.get("phone") else ""
        return self._say(Reply("message", f"Votre message est enregistré ; un agent vous rappellera{phone} dès "
                               "l'ouverture. Merci, au revoir.", cacheable=False, end_call=True, outcome="message"))
