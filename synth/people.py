"""Fake people and their clinical notes: names, MRNs, dates and phones (fake PHI).

Every PHI string is recorded (``Person.wrote``) exactly as it is written into a file, so
phi.json can list what leak ("canary") tests must never find downstream. A note carries
cardiac wording when its latent finding is set, benign wording otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------- fake PHI

_FIRST_F = ["Alice", "Beatrice", "Clara", "Dorothy", "Elena", "Fiona", "Greta", "Hannah",
            "Ingrid", "Julia", "Katrin", "Louisa", "Marta", "Nadia", "Olivia", "Priya",
            "Rosalind", "Sofia", "Tamsin", "Ursula", "Vera", "Wilma", "Yvonne", "Zelda"]
_FIRST_M = ["Arthur", "Bruno", "Casimir", "Desmond", "Emil", "Felix", "Gideon", "Hector",
            "Ivan", "Jasper", "Konrad", "Leopold", "Magnus", "Nikolai", "Oswald", "Piotr",
            "Quentin", "Rupert", "Silas", "Tobias", "Ulrich", "Viktor", "Walter", "Xavier"]
_LAST = ["Abernathy", "Blackwood", "Castellano", "Delacroix", "Eriksen", "Fairbanks",
         "Gallagher", "Holloway", "Ivanova", "Jorgensen", "Kowalczyk", "Lindqvist",
         "Montgomery", "Nakamura", "Okonkwo", "Pemberton", "Quintero", "Rasmussen",
         "Szymanski", "Thornbury", "Underwood", "Vasquez", "Whitcombe", "Yamamoto",
         "Zimmermann", "Achterberg", "Brannigan", "Cavendish", "Drummond", "Esterhazy"]
_INSTITUTIONS = ["Riverbend General Hospital", "St. Aldric Medical Center",
                 "Northgate University Clinic", "Harborview Fictional Infirmary"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]


@dataclass
class Person:
    mrn: str
    first: str
    last: str
    sex: str  # "F" / "M"
    dob: tuple[int, int, int]
    visit: tuple[int, int, int]
    phone: str
    institution: str
    written: dict[str, set[str]] = field(default_factory=dict)

    def wrote(self, kind: str, value: str) -> str:
        """Record a PHI string exactly as it is written into a file; returns it."""
        self.written.setdefault(kind, set()).add(value)
        return value


def _date_forms(d: tuple[int, int, int]) -> list[str]:
    y, m, day = d
    return [
        f"{m:02d}/{day:02d}/{y}",
        f"{y}-{m:02d}-{day:02d}",
        f"{day} {_MONTHS[m - 1][:3]} {y}",
        f"{_MONTHS[m - 1]} {day}, {y}",
    ]


def dicom_date(d: tuple[int, int, int]) -> str:
    return f"{d[0]:04d}{d[1]:02d}{d[2]:02d}"


def fake_person(rng: np.random.Generator, used_mrns: set[str]) -> Person:
    sex = "F" if rng.random() < 0.5 else "M"
    first = str(rng.choice(_FIRST_F if sex == "F" else _FIRST_M))
    while True:  # MRNs are unique; a letter prefix keeps spreadsheets from eating zeros
        mrn = f"{'KLMNPRSTW'[int(rng.integers(9))]}{int(rng.integers(10**6, 10**7))}"
        if mrn not in used_mrns:
            used_mrns.add(mrn)
            break
    dob = (int(rng.integers(1935, 2001)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    visit = (int(rng.integers(2019, 2026)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    phone = f"({int(rng.integers(201, 990))}) 555-{int(rng.integers(0, 10000)):04d}"
    return Person(mrn, first, str(rng.choice(_LAST)), sex, dob, visit, phone,
                   str(rng.choice(_INSTITUTIONS)))


# --------------------------------------------------------------------------- notes

_CARDIAC = [
    "elevated troponin with substernal chest pain radiating to the left arm",
    "troponin I rising on serial draws, chest pressure since this morning",
    "crushing chest pain with diaphoresis and nausea, troponin elevated",
    "new ST-segment depression in the lateral leads and positive troponin",
    "exertional angina now occurring at rest, high-sensitivity troponin above the cutoff",
    "acute chest tightness, shortness of breath, and elevated cardiac enzymes",
    "suspected non-ST elevation myocardial infarction given troponin elevation",
    "chest pain with dyspnea; cardiology consulted for acute coronary syndrome",
]
_BENIGN = [
    "routine follow-up visit, no acute complaints today",
    "seasonal allergies well controlled with a daily antihistamine",
    "mild knee pain after running, improving with rest and ice",
    "annual physical examination, feeling well and exercising regularly",
    "medication refill for hypothyroidism, thyroid levels stable",
    "minor skin rash on the forearm, likely contact dermatitis",
    "follow-up of controlled hypertension, home readings at goal",
    "requests travel vaccinations, otherwise healthy",
]
_PLANS_CARDIAC = [
    "Plan: admit to telemetry, serial troponins, aspirin and heparin, cardiology review.",
    "Plan: urgent cardiology consult, start antiplatelet therapy, repeat ECG in one hour.",
    "Plan: admit for chest pain workup and possible catheterization.",
]
_PLANS_BENIGN = [
    "Plan: continue current medications, return in twelve months.",
    "Plan: reassurance, follow up as needed.",
    "Plan: routine labs at next visit, no changes today.",
]
_FILLER = [
    "Allergies: no known drug allergies.",
    "Social history: lives with family, non-smoker.",
    "Vitals recorded by nursing staff.",
    "Past history reviewed and unchanged.",
    "Medications reconciled with the pharmacy list.",
]


def _name_line(p: Person, rng: np.random.Generator) -> str:
    forms = [
        lambda: f"Patient: {p.wrote('names', f'{p.first} {p.last}')}",
        lambda: f"Name: {p.wrote('names', f'{p.last}, {p.first}')}",
        lambda: f"Patient name: {p.wrote('names', f'{p.first} {p.last}')}",
    ]
    return forms[int(rng.integers(len(forms)))]()


def _mrn_line(p: Person, rng: np.random.Generator) -> str:
    forms = ["MRN: {}", "MRN {}", "MRN#{}"]
    return forms[int(rng.integers(len(forms)))].format(p.wrote("mrns", p.mrn))


def _date_line(p: Person, rng: np.random.Generator) -> str:
    dob = p.wrote("birth_dates", _date_forms(p.dob)[int(rng.integers(4))])
    visit = p.wrote("visit_dates", _date_forms(p.visit)[int(rng.integers(4))])
    forms = ["DOB: {dob}    Visit date: {visit}", "Date of birth: {dob}. Seen on {visit}.",
             "D.O.B. {dob} | Date of service: {visit}"]
    return forms[int(rng.integers(len(forms)))].format(dob=dob, visit=visit)


def note_text(p: Person, finding: bool, rng: np.random.Generator) -> str:
    """A note: PHI header lines, a narrative with the finding's wording, filler and plan."""
    honor = "Ms." if p.sex == "F" else "Mr."
    age = p.visit[0] - p.dob[0]
    sex_word = "woman" if p.sex == "F" else "man"
    pool = _CARDIAC if finding else _BENIGN
    picks = rng.choice(len(pool), size=2, replace=False)
    narrative = (
        f"{honor} {p.wrote('names', p.last)} is a {age}-year-old {sex_word} presenting with "
        f"{pool[picks[0]]}. Also notes {pool[picks[1]]}."
    )
    fill = [_FILLER[i] for i in rng.choice(len(_FILLER), size=2, replace=False)]
    plans = _PLANS_CARDIAC if finding else _PLANS_BENIGN
    phone = f"Contact phone: {p.wrote('phones', p.phone)}"
    header = [_name_line(p, rng), _mrn_line(p, rng), _date_line(p, rng)]
    order = rng.permutation(3)
    lines = [header[i] for i in order]
    lines += ["", narrative, *fill, str(plans[int(rng.integers(len(plans)))]), phone,
              f"Facility: {p.wrote('institutions', p.institution)}"]
    return "\n".join(lines) + "\n"


