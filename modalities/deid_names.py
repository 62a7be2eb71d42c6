"""Person names in note text: cues, name dictionaries and a safe-word filter.

A token becomes part of a name when

- it follows a cue (``Patient Name:``, ``Mr.``, ``signed by``, ``daughter``, ... in any case)
  and is not a common English or clinical word;
- it precedes a credential (``, MD``, ``RN``, ``PA-C``);
- it is in the first/last-name lists and is not also a common English word (``Nguyen``), or
  it is such an ambiguous name (``Rose``, ``Will``) capitalised next to another name;
- it sits next to a name found so far (``Jane Q. Whitfield``: an unknown capitalised word
  next to a known name), like philter's approach of keeping only words known to be safe;
- or it is a word already found as a name elsewhere in the same note (propagation).

Eponyms followed by a disease noun (``Graves disease``, ``Down syndrome``,
``Wilson's disease``) are protected before any of this runs.

Word lists (``deid_data/``, provenance in ``docs/deid.md``): first and last names from the
Faker package's person providers (23 locales), English words from SCOWL (Debian
``wamerican``): lowercase entries are common words, capitalised ones proper nouns.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from modalities.deid_rules import matches_at_words


def _split(words: str) -> list[str]:
    """A word list written as one string (easier to read and edit than a list literal)."""
    return words.split()


Span = tuple[int, int, str]

_DATA = Path(__file__).resolve().parent / "deid_data"


@cache
def _words(name: str) -> frozenset[str]:
    with gzip.open(_DATA / f"{name}.txt.gz", "rt", encoding="utf-8") as f:
        return frozenset(line.strip() for line in f if line.strip())


# Clinical and note words that must never be taken for names even when a name list has them
# (eponyms are handled as phrases below; these are words that also stand alone).
SAFE = frozenset(
    _split(
        """
    patient pt pts name names doctor dr md do rn np pa nurse physician attending resident
    fellow intern surgeon provider pcp mr mrs ms miss mx prof sir madam daughter son wife
    husband mother father sister brother spouse partner friend neighbor caregiver family
    january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday
    friday saturday sunday mon tue tues wed thu thur thurs fri sat sun today tomorrow
    yesterday am pm hpi ros pmh psh fh sh cc exam labs plan assessment impression history
    diagnosis dx tx rx sx hx meds allergies vitals neuro cardio pulm gi gu heent abd ext
    skin psych cv resp msk ed er icu ccu picu nicu or pacu ot pt slp ct mri xr us ekg ecg
    echo eeg emg pet cxr kub bp hr rr spo2 temp wt ht bmi inr ptt pt hgb hct wbc plt bun cr
    na k cl co2 ast alt alp tsh a1c ldl hdl esr crp bnp hiv hcv hbv copd chf cad ckd
    esrd dm htn hld mi cva tia dvt pe uti cap aki gerd osa ards sirs afib vt vf nstemi
    stemi cabg pci tavr ivig tpn npo prn bid tid qid qhs qd qod po iv im sq sc sl pr top
    mg mcg ml kg lb cm mm iu units unit normal stable denies reports states left right
    bilateral medicare medicaid tricare emergency department clinic hospital unit floor
    ward room bed service team cardiology oncology neurology surgery medicine psychiatry
    radiology pathology pediatrics orthopedics urology nephrology hematology gastroenterology
    dermatology rheumatology endocrinology pulmonology ophthalmology otolaryngology
    obstetrics gynecology anesthesia anesthesiology social work case management chaplain
    pharmacy nutrition interpreter spanish english vietnamese mandarin cantonese arabic
    russian portuguese haitian creole french korean somali tagalog polish hindi punjabi
    tylenol advil motrin lasix coumadin eliquis xarelto keppra zofran norco percocet
    dilaudid ativan haldol seroquel zoloft prozac lexapro wellbutrin lipitor crestor
    plavix brilinta toradol benadryl pepcid protonix nexium prilosec flomax proscar
    synthroid glucophage januvia jardiance farxiga ozempic trulicity lantus humalog novolog
    levemir tresiba entresto aldactone coreg lopressor toprol norvasc cozaar diovan
    zestril neurontin lyrica ultram flexeril robaxin medrol decadron solumedrol bactrim
    keflex augmentin zithromax levaquin cipro flagyl vancomycin zosyn cefepime rocephin
    narcan suboxone methadone chantix nicorette miralax colace senna dulcolax
    medtronic boston scientific abbott biotronik st jude dexcom omnipod tandem evera azure
    covid sars influenza flu rsv mrsa vre cdiff pa-c phd pharmd lcsw licsw dds dmd lpn cna
    crna fnp aprn msw dpm rph cnm mbbs facc facp facs mph bsn msn dnp psyd lmft lpc rd otr
    dpt crnp arnp emt rrt
    """
    )
)
_EPONYMS = (
    r"Parkinson|Graves|Down|Wilson|Crohn|Hodgkin|Alzheimer|Cushing|Addison|Bell|Hashimoto|"
    r"Raynaud|Barrett|Guillain|Barr[eé]|Babinski|Glasgow|Foley|Whipple|Nissen|Kawasaki|"
    r"Sj[oö]gren|Lyme|Marfan|Huntington|Paget|M[eé]ni[eè]re|Tourette|Kaposi|Wernicke|Korsakoff|"
    r"Horner|Dupuytren|Baker|Brown|S[eé]quard|Stevens|Johnson|Hirschsprung|Ewing|Apgar|"
    r"Mallampati|Burkitt|Bowen|Buerger|Budd|Chiari|Conn|Cowden|Dandy|Walker|DiGeorge|Ehlers|"
    r"Danlos|Fabry|Gaucher|Gilbert|Goodpasture|Hurler|Kallmann|Klinefelter|Turner|Noonan|"
    r"Peyronie|Pott|Reiter|Reye|Still|Takayasu|Tay|Sachs|Wegener|Whipple|Zollinger|Ellison|"
    r"Osgood|Schlatter|Legg|Calve|Perthes|Charcot|Marie|Tooth|Colles|Smith|Barton|Bennett|"
    r"Monteggia|Galeazzi|Jones|Lisfranc|Maisonneuve|Salter|Harris|Homan|Murphy|McBurney|"
    r"Rovsing|Kernig|Brudzinski|Romberg|Phalen|Tinel|Spurling|Lachman|McMurray|Finkelstein|"
    r"Trendelenburg|Allen|Swan|Ganz|Hickman|Port|Roux|Billroth|Hartmann|Nuss|Ross|Fontan|"
    r"Glenn|Blalock|Taussig|Norwood|Kasai|Ilizarov|Bankart|Hill|Sachs|Tanner|Snellen|Weber|"
    r"Rinne|Levine|Killip|Child|Pugh|Ranson|Wells|Gleason|Breslow|Clark|Ann|Arbor|Durie|"
    r"Salmon|Binet|Rai|Duke|Bethesda|Papanicolaou|Pap|Gram|Ziehl|Neelsen|Wright|Giemsa|"
    r"Coombs|Schilling|Holter|Doppler|Valsalva|Heimlich|Kussmaul|Cheyne|Stokes|Austin|Flint|"
    r"Graham|Steell|Osler|Janeway|Roth|Argyll|Robertson|Virchow|Sister|Mary|Joseph|Krukenberg|"
    r"Epstein|Barr|Coxsackie|Norwalk|Lassa|Ebola|Zika|Hansen|Bright|Lou|Gehrig|Tommy|John|"
    r"Kerley|Apley|Cockcroft|Gault|Friedewald|Mallory|Weiss|Boerhaave|Zenker|Meckel|Hartnup|"
    r"Ludwig|Fournier|Bouchard|Heberden|Auspitz|Nikolsky|Koebner|Chvostek|Trousseau|Cullen|"
    r"Turner|Grey|Kehr|Levine|Quincke|Beck|Virchow|Glisson|Treitz|Oddi|Vater|Calot|Hesselbach|"
    r"Wagner|Mohs|Gleason|Hunt|Hess|Fisher|Spetzler|Martin|Lown|Forrest|Rockall|Blatchford|"
    r"Ranson|Alvarado|Centor|Wells|Geneva|Caprini|Braden|Morse|Norton|Karnofsky|Lansky|Tanner|"
    r"Bishop|Apgar|Silverman|Ballard|Dubowitz|Denver|Bayley|Conners|Beck|Hamilton|Ishihara"
)
_DISEASE_NOUN = (
    r"disease|syndrome|sign|signs|palsy|lymphoma|sarcoma|esophagus|phenomenon|thyroiditis|"
    r"dementia|contracture|cyst|encephalopathy|procedure|catheter|fundoplication|criteria|"
    r"score|scale|test|maneuver|manoeuvre|reflex|triad|ulcer|fracture|node|nodes|"
    r"malformation|anomaly|tumor|tumour|carcinoma|leukemia|disorder|deformity|dystrophy|"
    r"neuralgia|neuroma|operation|repair|shunt|line|tube|classification|stage|grade|"
    r"staging|coma|virus|body|bodies|cell|cells|angina|aneurysm|arthritis|fever|ataxia|"
    r"chorea|anemia|anaemia|cholangitis|esophagitis|hernia|diverticulum|dyskinesia|"
    r"tremor|type|stain|fistula|gallop|murmur|respiration|breathing|reaction|position|"
    r"pouch|anastomosis|ligament|duct|area|nerve|space|capsule|loop|canal|point|angle|"
    r"spots|nodules|lesions|incision|blade|forceps|retractor|splint|cast|sheath|valve|"
    r"lines|class|sequence|approach|view|technique|method|equation|formula|rule|rules|tear|tears"
)
_EPONYM_KEYS = frozenset(
    w.lower() for w in re.findall(r"[A-Za-z]+", re.sub(r"\[[^]]*\]", "", _EPONYMS))
) | {"barre", "sjogren", "meniere", "sequard"}
_PROTECT = re.compile(
    rf"(?<![\w'])(?:{_EPONYMS})(?:['’]s|s['’])?"
    rf"(?:[ \t]*(?:[-/&]|and)[ \t]*(?:{_EPONYMS})(?:['’]s)?){{0,3}}"
    rf"(?=(?:[ \t]+[A-Z])?[ \t-]+(?:{_DISEASE_NOUN})\b)",
    re.IGNORECASE,
)
# Ambiguous eponym words that are names unless a disease noun follows; a few stand alone.
_ALWAYS_SAFE_EPONYM = frozenset(
    _split(
        "parkinson's alzheimer's crohn's hashimoto's apgar mallampati glasgow doppler "
        "valsalva holter foley coombs gram babinski romberg kussmaul"
    )
)

_LABEL_CUE = (
    r"patient(?:[ \t]+name)?|pt(?:[ \t]+name)?|name|re|caller|contact|emergency[ \t]+contact|"
    r"child|client|member|subscriber|guarantor|insured|resident|proband|surgeon|"
    r"assistant|co-?surgeon|anesthesiologist|attending|resident|fellow|intern|endoscopist|"
    r"consultant|nurse|triage[ \t]+rn|rn|np|pa|pcp|primary[ \t]+care|provider|physician|"
    r"referring(?:[ \t]+(?:provider|physician|md))?|referred[ \t]+by|accepting|prescriber|"
    r"pharmacist|therapist|dietitian|case[ \t]+manager|social[ \t]+worker|chaplain|"
    r"interpreter|scribe|author|signed|signature|cc|to|from|attn|dictated[ \t]+by|"
    r"transcribed[ \t]+by|read[ \t]+by|reviewed[ \t]+by|cosigned[ \t]+by|co-signed[ \t]+by|"
    r"electronically[ \t]+signed[ \t]+by|signed[ \t]+by|authenticated[ \t]+by|verified[ \t]+by|"
    r"performed[ \t]+by|ordered[ \t]+by|seen[ \t]+by|examined[ \t]+by|accompanied[ \t]+by|"
    r"requested[ \t]+by|entered[ \t]+by|witnessed[ \t]+by|discussed[ \t]+with|spoke[ \t]+with|"
    r"spoke[ \t]+to|talked[ \t]+(?:to|with)|met[ \t]+with|called|care[ \t]+of|c/o|"
    r"hcp|poa|health[ \t]+care[ \t]+proxy|guardian|sponsor|employer|sincerely|regards|"
    r"mother|father|mom|dad|daughter|son|wife|husband|spouse|partner|sister|brother|"
    r"daughters|sons|sisters|brothers|parents|children|kids|grandchildren|siblings|"
    r"niece|nephew|aunt|uncle|cousin|grand(?:mother|father|daughter|son|ma|pa)|"
    r"daughter-in-law|son-in-law|mother-in-law|father-in-law|sister-in-law|brother-in-law|"
    r"stepson|stepdaughter|stepmother|stepfather|fianc[eé]e?|boyfriend|girlfriend|friend|"
    r"neighbou?r|caregiver|roommate|godmother|godfather|twin|baby|infant|newborn|"
    r"mr|mrs|ms|miss|mx|dr|doctor|prof|professor|sr|sister|fr|father|rev|nurse|"
    r"pt['’]s|patient['’]s|her|his|their|and|or|&"
)
# First words of the cues above (matched only where one of them starts a word).
_CUE_HEADS = frozenset(
    _split(
        """patient pt name re caller contact emergency child client member subscriber guarantor
        insured resident proband surgeon assistant co-surgeon cosurgeon anesthesiologist
        attending fellow intern endoscopist consultant nurse triage rn np pa pcp primary
        provider physician referring referred accepting prescriber pharmacist therapist
        dietitian case social chaplain interpreter scribe author signed signature cc to from
        attn dictated transcribed read reviewed cosigned co-signed electronically
        authenticated verified performed ordered seen examined accompanied requested entered
        witnessed discussed spoke talked met called care c/o hcp poa health guardian sponsor
        employer sincerely regards mother father mom dad daughter son wife husband spouse
        partner sister brother daughters sons sisters brothers parents children kids
        grandchildren siblings niece nephew aunt uncle cousin grandmother grandfather
        granddaughter grandson grandma grandpa daughter-in-law son-in-law mother-in-law
        father-in-law sister-in-law brother-in-law stepson stepdaughter stepmother stepfather
        fiance fiancee boyfriend girlfriend friend neighbor neighbour caregiver roommate
        godmother godfather twin baby infant newborn mr mrs ms miss mx dr doctor prof
        professor sr fr rev pt's patient's pt’s patient’s her his their and or"""
    )
) | {"fiancé", "fiancée"}
_CUE = re.compile(rf"(?<![\w'’-])(?:{_LABEL_CUE})(?![\w'’-])\.?", re.IGNORECASE)
_TITLES = frozenset(_split("mr mrs ms miss mx dr doctor prof professor"))
# Pronouns, conjunctions and family words need a name-looking word after them to count.
_WEAK_CUE = frozenset(_split("her his their and or & to from called"))
_CREDENTIAL = re.compile(
    r"(?:,|[ \t])[ \t]*(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PA|PharmD|PhD|DDS|DMD|LCSW|LICSW|"
    r"LPN|CNA|CRNA|FNP|FNP-C|APRN|ANP|MSW|OD|DPM|RPh|CNM|MBBS|FACC|FACP|FACS|MPH|BSN|"
    r"MSN|DNP|PsyD|LMFT|LPC|RD|CCC-SLP|PT|OTR|DPT|CRNP|ARNP|MA|EMT|NREMT|RT|RRT)(?![\w-]|[ \t]*:)"
)
_CONNECTORS = frozenset(
    _split("van von der den de del della di da la le du dos das bin ibn al el st. y")
)
_PERSON_VERBS = frozenset(
    _split("""is was has had reports reported states stated denies denied tolerated tolerates
    presents presented complains complained endorses endorsed returns returned agrees agreed
    declines declined refuses refused understands understood lives lived works worked came
    comes arrived says said feels felt continues remains underwent received notes
    called calls asked asks wants wishes prefers expressed expresses verbalized verbalizes
    admits admitted describes described ambulates ambulated walks walked takes took uses
    used reported seen evaluated examined brought transferred discharged followed""")
)
# Word endings of diagnoses, procedures and drug stems (USAN): capitalised drug names are
# the commonest unknown capitalised words in notes.
_CLINICAL_ENDINGS = tuple(
    _split("""itis osis emia ectomy otomy ostomy plasty scopy gram olol pril sartan statin sone
    olone
    azole mycin micin cillin floxacin dipine tidine prazole mab nib parin gliptin glitazone
    formin oxetine triptan azepam zolam barbital caine profen fenac cycline navir tinib
    dronate lukast terol tropium semide thiazide codone morphone azepam xaban
    gatran flozin glutide""")
)
_CRED_AT = re.compile(
    r"(?:M\.D\.|D\.O\.|R\.N\.|MD|DO|RN|NP|PA-C|PhD|PharmD|DDS|LCSW|MBBS)(?![\w-])"
)
# Dictation trailers: "XGT:holmes", "GPP/church/olinger" (author initials, typist user names).
_TRAILER = re.compile(r"(?m)^[ \t]*[A-Z]{2,4}((?:[:/][a-z][a-z0-9]{1,20}){1,3})[ \t]*$")
_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z_>]*\]")


@dataclass(slots=True)
class _Tok:
    start: int
    end: int
    text: str
    key: str  # lowercase, possessive stripped
    cap: bool  # starts with an uppercase letter
    upper: bool  # all capitals (headers, shouting, acronyms)
    initial: bool  # one letter, maybe with a dot after it


_PARTS = re.compile(r"[-'’]")
# Letters in any script ("José", "Müller"); a word glued to digits (SpO2, HbA1c, C2M4) is a
# code, never a name.
_TOKEN = re.compile(r"(?<![\w'’-])[^\W\d_](?:[^\W\d_]|['’-])*(?![\w'’-])")


def _ascii_key(word: str) -> str:
    """Lowercase without diacritics: the word lists are ASCII."""
    key = word.lower()
    if key.isascii():
        return key
    return "".join(c for c in unicodedata.normalize("NFKD", key) if not unicodedata.combining(c))


def _tokens(text: str) -> list[_Tok]:
    toks = []
    for m in _TOKEN.finditer(text):
        s, e = m.start(), m.end()
        word = m.group()
        while word and word[-1] in "'’-":
            word, e = word[:-1], e - 1
        key = _ascii_key(word)
        for suffix in ("'s", "’s"):
            if key.endswith(suffix):
                key = key[:-2]
        initial = len(word) == 1
        toks.append(
            _Tok(s, e, word, key, word[0].isupper(), word.isupper() and len(word) > 1, initial)
        )
    return toks


class _Lexicon:
    """The word lists, loaded once."""

    def __init__(self) -> None:
        self.first = _words("first_names")
        self.last = _words("last_names")
        self.names = self.first | self.last
        self.common = _words("english_words")
        self.proper = _words("english_proper")

        self._name: dict[str, bool] = {}
        self._unknown: dict[str, bool] = {}

    def is_name(self, key: str) -> bool:
        """Listed first or last name, or a hyphenated one with a listed, non-everyday part."""
        hit = self._name.get(key)
        if hit is None:
            parts = [p for p in _PARTS.split(key) if p]
            hit = key in self.names or (
                len(parts) > 1 and any(p in self.names and p not in self.common for p in parts)
            )
            if len(self._name) < 200_000:  # memo: notes repeat their words
                self._name[key] = hit
        return hit

    def is_common(self, key: str) -> bool:
        return key in self.common or key in SAFE

    def strong(self, key: str) -> bool:
        """A listed name that is not also an everyday or clinical word."""
        return self.is_name(key) and not self.is_common(key)

    def unknown(self, key: str) -> bool:
        """In no word list at all: names the lists lack look like this (so do drug brands)."""
        hit = self._unknown.get(key)
        if hit is None:
            if key in SAFE or key in self.common or key in self.proper or self.is_name(key):
                hit = False
            else:
                parts = [p for p in _PARTS.split(key) if p]
                hit = not all(p in self.common or p in SAFE for p in parts)
            if len(self._unknown) < 200_000:
                self._unknown[key] = hit
        return hit


@cache
def lexicon() -> _Lexicon:
    return _Lexicon()


def _gap(text: str, a: _Tok, b: _Tok) -> str:
    return text[a.end : b.start]


def find_names(text: str, protected: list[tuple[int, int]] | None = None) -> list[Span]:
    """Name spans in ``text``; ``protected`` ranges (placeholders, eponyms) are skipped."""
    lex = lexicon()
    toks = _tokens(text)
    if not toks:
        return []
    guard = list(protected or [])
    for t in toks:  # only where an eponym word starts: one regex pass would cost far more
        if t.key in _EPONYM_KEYS or _PARTS.split(t.key, maxsplit=1)[0] in _EPONYM_KEYS:
            m = _PROTECT.match(text, t.start)
            if m:
                guard.append((m.start(), m.end()))
    guard += [(m.start(), m.end()) for m in _PLACEHOLDER.finditer(text)]
    guarded = [False] * len(toks)
    if guard:
        guard.sort()
        j = 0
        for i, t in enumerate(toks):
            while j < len(guard) and guard[j][1] <= t.start:
                j += 1
            guarded[i] = j < len(guard) and guard[j][0] < t.end
    for i, t in enumerate(toks):
        if t.text.lower().replace("’", "'") in _ALWAYS_SAFE_EPONYM or (
            len(t.key) > 5 and t.key.endswith(_CLINICAL_ENDINGS)
        ):
            guarded[i] = True

    is_name = [False] * len(toks)

    def namelike(i: int, strong: bool, title: bool = False) -> bool:
        """Could token i be part of a name where one is expected?

        ``strong``: after a title, a label with a colon or "signed by": a lowercase word no
        list knows ("rsingh") is taken too. ``title``: after a title or a name label, any
        capitalised word but a safe one is taken ("Dr. Will Hope"). Otherwise a capitalised
        word must be a listed name or not an everyday word, so "Mother: Diabetes" stays.
        """
        t = toks[i]
        if guarded[i]:
            return False
        if t.initial:
            return t.cap or strong
        if t.key in SAFE:
            return False
        if t.upper and len(t.text) <= 3 and not lex.strong(t.key):
            return False  # CT, MRI, HTN: acronyms, not names
        if t.cap:
            return title or lex.is_name(t.key) or not lex.is_common(t.key)
        return lex.strong(t.key) or lex.unknown(t.key)

    def _surname_like(i: int) -> bool:
        t = toks[i]
        return t.cap and not t.upper and (lex.is_name(t.key) or not lex.is_common(t.key))

    def _lower_tail(i: int) -> bool:
        t = toks[i]
        return not t.cap and not guarded[i] and not lex.is_common(t.key) and t.key not in SAFE

    def credited(i: int) -> bool:
        """Before a credential: capitalised words and initials, lowercase listed names."""
        t = toks[i]
        if guarded[i] or (t.key in SAFE and not t.initial):
            return False
        return t.cap or lex.strong(t.key)

    def same_line(a: int, b: int, allow_comma: bool = True) -> bool:
        g = _gap(text, toks[a], toks[b])
        if "\n" in g or len(g) > 4:
            return False
        g = g.replace(" ", "").replace("\t", "")
        if "." in g and not (toks[a].initial or toks[a].key in _TITLES):
            return False  # a full stop ends the name unless it closes an initial
        return g in ("", ".", '"', "(", ")", '("', '")', "'") or (allow_comma and g in (",", ".,"))

    # 1. Cues: take the name-like words that follow on the same line.
    for m in matches_at_words(_CUE, text, _CUE_HEADS):
        cue = m.group().rstrip(".").lower()
        k = _first_tok_at(toks, m.end())
        if k is None:
            continue
        g = text[m.end() : toks[k].start]
        if "\n" in g or len(g.strip(' \t:#-(",')) > 0 or len(g) > 16:
            continue
        # After a title or a name label any capitalised word is taken ("Dr. Will Hope");
        # after other labels ("To: Infectious Disease") only name-looking ones.
        title = cue in _TITLES or cue.endswith("name")
        strong = (":" in g or cue in _TITLES or cue.endswith(("by", "with", "name"))
                  or cue == "re")  # fmt: skip
        if cue in ("pt", "patient") and not strong and not toks[k].cap:
            continue  # "pt afebrile", "patient tolerated": running text, not a label
        if cue in _WEAK_CUE and not strong and not (toks[k].cap and lex.is_name(toks[k].key)):
            continue  # "his Prednisone": only a listed name counts after a pronoun
        count = 0
        while k < len(toks) and count < 5:
            t = toks[k]
            if count and _CRED_AT.match(text, t.start):
                break  # "FILBERT BRIGHT, M.D.": the credential is no part of the name
            nxt = k + 1 < len(toks) and same_line(k, k + 1)
            if (
                t.key in _CONNECTORS and count and nxt and namelike(k + 1, strong, title)
            ) or namelike(k, strong, title):
                is_name[k] = True
            elif (not t.cap and not guarded[k] and t.key not in SAFE
                  and (count or (nxt and _lower_tail(k + 1)))
                  and (lex.is_name(t.key) or not lex.is_common(t.key))):  # fmt: skip
                is_name[k] = True  # "partner hope boateng": lowercase, with a surname after
            elif (t.cap and not t.upper and t.key not in SAFE and not guarded[k] and nxt
                  and _surname_like(k + 1)):  # fmt: skip
                is_name[k] = True  # "son Will Green": an everyday word before a surname
            else:
                break
            count += 1
            if k + 1 >= len(toks) or not same_line(k, k + 1):
                break
            k += 1

    # 2. Credentials: "Jane Q. Whitfield, MD" -- walk back from the credential.
    for m in _CREDENTIAL.finditer(text):
        k = _last_tok_before(toks, m.start() + (0 if text[m.start()] == "," else 1))
        count = 0
        while k is not None and k >= 0 and count < 4 and credited(k):
            is_name[k] = True
            count += 1
            if k == 0 or not same_line(k - 1, k):
                break
            k -= 1

    # 3. Dictionary: listed names that are not everyday words; ambiguous ones in pairs.
    n = len(toks)
    for i, t in enumerate(toks):
        if guarded[i] or t.initial:
            continue
        if t.cap and not (t.upper and len(t.text) <= 3) and lex.strong(t.key):
            is_name[i] = True
    for i in range(n - 1):
        a, b = toks[i], toks[i + 1]
        if (a.cap and b.cap and not guarded[i] and not guarded[i + 1]
                and lex.is_name(a.key) and (lex.is_name(b.key) or not lex.is_common(b.key))
                and b.key not in SAFE and same_line(i, i + 1, False)
                and not a.upper and not b.upper):  # fmt: skip
            is_name[i] = is_name[i + 1] = True
    # "Last, First" opening a line.
    for i in range(n - 1):
        a, b = toks[i], toks[i + 1]
        line_start = a.start == 0 or text[a.start - 1] == "\n"
        if line_start and a.cap and b.cap and _gap(text, a, b).strip() == ",":
            ok_a = lex.is_name(a.key) or not lex.is_common(a.key)
            ok_b = lex.is_name(b.key) or not lex.is_common(b.key)
            listed = any(lex.is_name(x.key) or lex.unknown(x.key) for x in (a, b))
            if ok_a and ok_b and listed and not guarded[i] and not guarded[i + 1]:
                is_name[i] = is_name[i + 1] = True

    # An unknown capitalised word that does what people do: "Thorsen is a 46-year-old",
    # "Okafor tolerated the procedure".
    for i in range(n - 1):
        t = toks[i]
        if (t.cap and not t.upper and not guarded[i] and t.key not in SAFE
                and not lex.is_common(t.key) and toks[i + 1].key in _PERSON_VERBS
                and same_line(i, i + 1, False)):  # fmt: skip
            is_name[i] = True

    # 4. Extend: neighbours of a name that look like name parts join it, at most three
    # words out from where the name was found (a worklist: linear, unlike re-scanning).
    def joins(i: int, j: int) -> bool:
        if j < 0 or j >= n or is_name[j] or guarded[j]:
            return False
        lo, hi = min(i, j), max(i, j)
        t = toks[j]
        if t.key in SAFE:
            return False
        # "NGUYEN, ROSALIND": across a comma only a capitalised word that is not an everyday
        # one joins.
        if not same_line(lo, hi, allow_comma=False) and not (
            same_line(lo, hi) and t.cap and not t.initial and not lex.is_common(t.key)
        ):
            return False
        return (
            (t.initial and t.cap)
            or (t.cap and not t.upper and (lex.is_name(t.key) or not lex.is_common(t.key)))
            or (t.key in _CONNECTORS and 0 < j < n - 1
                and (is_name[j + 1] or is_name[j - 1]) and toks[j + 1].cap)
            or (t.upper and (len(t.text) > 3 or lex.strong(t.key))
                and (lex.is_name(t.key) or not lex.is_common(t.key)))
        )  # fmt: skip

    work = [(i, 0) for i in range(n) if is_name[i]]
    while work:
        i, depth = work.pop()
        if depth >= 3:
            continue
        for j in (i - 1, i + 1):
            if joins(i, j):
                is_name[j] = True
                work.append((j, depth + 1))

    # 5. Propagate: a word found as a name is a name wherever else it appears.
    found = {toks[i].key for i in range(n) if is_name[i] and not toks[i].initial}
    found = {w for w in found if len(w) > 1 and w not in _CONNECTORS}
    for i, t in enumerate(toks):
        if is_name[i] or guarded[i] or t.key not in found:
            continue
        if t.cap or not lex.is_common(t.key):
            is_name[i] = True

    # Initials only count next to a name.
    spans: list[Span] = [(m.start(), m.end(1), "NAME") for m in _TRAILER.finditer(text)]
    for i, t in enumerate(toks):
        if not is_name[i]:
            continue
        if t.initial and not (
            (i > 0 and is_name[i - 1] and not toks[i - 1].initial)
            or (i + 1 < n and is_name[i + 1] and not toks[i + 1].initial)
        ):
            continue
        if (t.key in _CONNECTORS and not t.cap
                and not (0 < i < n - 1 and is_name[i - 1] and is_name[i + 1])):  # fmt: skip
            continue
        end = t.end
        if end < len(text) and text[end] == "." and t.initial:
            end += 1
        spans.append((t.start, end, "NAME"))
    return spans


def _first_tok_at(toks: list[_Tok], pos: int) -> int | None:
    lo, hi = 0, len(toks)
    while lo < hi:
        mid = (lo + hi) // 2
        if toks[mid].start < pos:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < len(toks) else None


def _last_tok_before(toks: list[_Tok], pos: int) -> int | None:
    k = _first_tok_at(toks, pos)
    k = len(toks) if k is None else k
    return k - 1 if k > 0 else None
