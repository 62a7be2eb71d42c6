"""Template generator for annotated clinical notes (markup: see the package docstring).

Every HIPAA Safe Harbor class that occurs in note text appears in several formats, in
headers, signatures, family mentions and running prose, next to clinical terms that must
survive (eponymous diseases, spinal levels, doses, vitals, labs). Names come from lists
written here, not from the de-identifier's dictionaries, and include names those
dictionaries lack.
"""

from __future__ import annotations

import random

FIRST = """Thi Hoa|Maria|Jane|Oluwaseun|Priya|Siobhan|Mateo|Kwame|Yusuf|Agnieszka|Dmitri|Lucia
|Ahmed|Mei|Rahul|Fatima|Bartholomew|Ngozi|Xiomara|Tomasz|Ingrid|Esperanza|Hyun-woo|Anouk
|Chidi|Giulia|Eamon|Zainab|Rosalind|Tariq|Marisol|Bjorn|Leilani|Kofi|Anastasia|Declan
|Yesenia|Farhan|Colette|Emeka|Linnea|Ravi|Beatriz|Otis|Svetlana|Imani|Wendell|Ana Lucia
|Henrik|Precious|Grace|Will|Faith|Rose|Dean|Hope|Mark|Bill|Joy|Frank""".replace("\n", "")
LAST = """Nguyen|Whitfield|Adeyemi|Raghunathan|O'Sullivan|Fernandez-Ortiz|Mensah|Al-Khatib
|Kowalczyk|Volkov|Esposito|Chen|Kapoor|Haddad|Featherstonehaugh|Okafor|Quispe|Wisniewski
|Lindqvist|Castellanos|Park|Van der Berg|Osei|Rossi|McAllister|Siddiqui|Blackwood|Mahmoud
|Delacroix|Nakashima|Thorsen|Kealoha|Boateng|Ivanova|Gallagher|Villanueva|Chowdhury|Moreau
|Nwosu|Holmberg|Pillai|Carvalho|Pettigrew|Abernathy|Dubois|Yilmaz|Brown|Green|Young|Hall
|Stone|Wood|Baker|Booker|Szymanski|Achterberg|Oyelaran|Tran|Le|Ramaswamy""".replace("\n", "")
FIRST_N = FIRST.split("|")
LAST_N = LAST.split("|")
MONTHS = "January February March April May June July August September October November December"
MONTH_N = MONTHS.split()
STREETS = [
    "Oak Hollow",
    "Elm",
    "Birchwood",
    "Main",
    "Martin Luther King Jr",
    "Quincy",
    "Sycamore Ridge",
    "Harbor View",
    "12th",
    "Old Mill",
    "Chestnut",
    "Washington",
    "Pine Crest",
    "Riverside",
    "Kensington",
    "Lakeshore",
    "Cedar",
    "Willow Bend",
]
SUFFIX = [
    "Street",
    "St",
    "St.",
    "Avenue",
    "Ave",
    "Road",
    "Rd",
    "Rd.",
    "Boulevard",
    "Blvd",
    "Lane",
    "Ln",
    "Drive",
    "Dr",
    "Court",
    "Ct",
    "Way",
    "Place",
    "Terrace",
    "Circle",
    "Parkway",
    "Highway",
]
CITIES = [
    ("Springfield", "IL"),
    ("Dorchester", "MA"),
    ("Eugene", "OR"),
    ("San Mateo", "CA"),
    ("Fall River", "MA"),
    ("Toledo", "OH"),
    ("Bangor", "ME"),
    ("Flagstaff", "AZ"),
    ("Des Moines", "IA"),
    ("Chattanooga", "TN"),
    ("Yakima", "WA"),
    ("Lafayette", "LA"),
    ("St. Cloud", "MN"),
    ("El Paso", "TX"),
    ("Burlington", "VT"),
    ("Kalamazoo", "MI"),
    ("Santa Fe", "NM"),
    ("Scranton", "PA"),
    ("Boise", "ID"),
    ("Cedar Rapids", "IA"),
]
STATES = {
    "IL": "Illinois",
    "MA": "Massachusetts",
    "OR": "Oregon",
    "CA": "California",
    "OH": "Ohio",
    "ME": "Maine",
    "AZ": "Arizona",
    "IA": "Iowa",
    "TN": "Tennessee",
    "WA": "Washington",
    "LA": "Louisiana",
    "MN": "Minnesota",
    "TX": "Texas",
    "VT": "Vermont",
    "MI": "Michigan",
    "NM": "New Mexico",
    "PA": "Pennsylvania",
    "ID": "Idaho",
}
FAC_HEAD = [
    "Mercy",
    "St. Agnes",
    "Saint Jude",
    "Lakeview",
    "Good Samaritan",
    "Riverside",
    "Oakridge",
    "Holy Cross",
    "Brightwater",
    "Northfield",
    "Beth Shalom",
    "Pinecrest",
    "Sacred Heart",
    "Valley Vista",
    "Harborview",
    "Maplewood",
    "Ashford",
]
FAC_TAIL = [
    "Hospital",
    "Medical Center",
    "Memorial Hospital",
    "General Hospital",
    "Family Clinic",
    "Nursing Home",
    "Rehabilitation Center",
    "Urgent Care",
    "Health Center",
    "Regional Medical Center",
    "Skilled Nursing Facility",
    "Community Hospital",
    "Cancer Institute",
    "Assisted Living",
]
RELATIONS = [
    "daughter",
    "son",
    "wife",
    "husband",
    "sister",
    "brother",
    "niece",
    "nephew",
    "granddaughter",
    "grandson",
    "mother",
    "father",
    "partner",
    "neighbor",
    "friend",
]
KEEP = [
    "Graves disease",
    "Parkinson disease",
    "Parkinson's disease",
    "Down syndrome",
    "Wilson's disease",
    "Crohn's disease",
    "Hodgkin lymphoma",
    "Alzheimer's dementia",
    "Cushing syndrome",
    "Addison's disease",
    "Bell's palsy",
    "Hashimoto thyroiditis",
    "Raynaud phenomenon",
    "Barrett's esophagus",
    "Guillain-Barre syndrome",
    "Babinski sign",
    "Glasgow Coma Scale 15",
    "Foley catheter",
    "Whipple procedure",
    "Nissen fundoplication",
    "Kawasaki disease",
    "Sjogren syndrome",
    "Lyme disease",
    "Marfan syndrome",
    "Huntington disease",
    "Paget disease",
    "Meniere's disease",
    "Tourette syndrome",
    "Kaposi sarcoma",
    "Wernicke encephalopathy",
    "Horner syndrome",
    "Dupuytren contracture",
    "Baker's cyst",
    "Brown-Sequard syndrome",
    "Stevens-Johnson syndrome",
    "Hirschsprung disease",
    "Ewing sarcoma",
    "L4-L5",
    "C5-C6",
    "T12",
    "L5-S1",
    "CN II-XII",
    "metoprolol 25 mg",
    "lisinopril 10 mg daily",
    "500 mg",
    "insulin glargine 20 units",
    "0.9% NS",
    "1/2 tab",
    "q6h",
    "2.5 mg/kg",
    "furosemide 40 mg IV",
    "Eliquis 5 mg",
    "Lasix",
    "Coumadin",
    "Keppra 750 mg",
    "Zofran 4 mg",
    "Xarelto",
    "Tylenol 650 mg",
    "BP 120/80",
    "BP 142/91",
    "HR 72",
    "SpO2 98%",
    "T 37.2",
    "RR 16",
    "pain 7/10",
    "5/5 strength",
    "Hgb 11.2",
    "WBC 12.4",
    "Cr 1.1",
    "A1c 7.2%",
    "INR 2.3",
    "platelets 250,000",
    "EF 55%",
    "GCS 15",
    "COVID-19",
    "HbA1c",
    "NYHA class II",
    "E11.9",
    "CD4 count 350",
    "BRCA1",
    "67-year-old",
    "45 yo",
    "may resume",
    "will follow up",
    "Emergency Department",
    "ICU",
    "Cardiology",
    "PT/OT",
    "troponin 0.04",
    "Na 138",
    "K 4.1",
    "HIV",
    "MRI brain",
    "CT chest",
    "stage IIIA",
    "grade 2",
    "2+ pitting edema",
    "Mallampati II",
    "APGAR 8/9",
    "1:1 sitter",
]


class _Note:
    """Collects the marked-up note while templates fill it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.first = rng.choice(FIRST_N)
        self.last = rng.choice(LAST_N)
        self.mid = rng.choice("ABCDEFGHJKLMNPRSTW")

    # ---- PHI makers: each returns markup -------------------------------------------
    def name(
        self, style: str | None = None, first: str | None = None, last: str | None = None
    ) -> str:
        r = self.rng
        f, la, mi = first or self.first, last or self.last, self.mid
        style = style or r.choice(["fl", "lf", "lfm", "fml", "FL", "LF", "l", "f"])
        text = {
            "fl": f"{f} {la}",
            "lf": f"{la}, {f}",
            "lfm": f"{la}, {f} {mi}.",
            "fml": f"{f} {mi}. {la}",
            "FL": f"{f} {la}".upper(),
            "LF": f"{la}, {f}".upper(),
            "l": la,
            "f": f,
            "low": f"{f} {la}".lower(),
        }[style]
        return f"[[NAME|{text}]]"

    def other_name(self, style: str | None = None) -> str:
        return self.name(style, self.rng.choice(FIRST_N), self.rng.choice(LAST_N))

    def date(self, style: str | None = None) -> str:
        r = self.rng
        y, m, d = r.randint(1931, 2025), r.randint(1, 12), r.randint(1, 28)
        mon = MONTH_N[m - 1]
        sfx = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd"}.get(d, "th")
        style = style or r.choice(list(range(17)))
        text = [
            f"{m:02d}/{d:02d}/{y}",
            f"{m}/{d}/{y % 100:02d}",
            f"{y}-{m:02d}-{d:02d}",
            f"{d:02d}-{mon[:3]}-{y}",
            f"{mon} {d}, {y}",
            f"{mon} {d}{sfx}",
            f"{mon[:3]} {d}",
            f"{d} {mon} {y}",
            f"{d}{sfx} of {mon}",
            f"{m}/{d}",
            f"{m:02d}.{d:02d}.{y}",
            f"{mon} {y}",
            f"{y}/{m:02d}/{d:02d}",
            f"{d}-{mon[:3]}-{y % 100:02d}",
            f"{mon[:3]}. {d}, {y}",
            f"{d}{sfx} {mon}",
            f"{mon.upper()[:3]} {d} {y}",
        ][style]
        if style == 8:  # "the" is no part of the date
            return f"the [[DATE|{text}]]"
        return f"[[DATE|{text}]]"

    def old_age(self) -> str:
        r = self.rng
        a = r.randint(90, 104)
        words = {
            90: "ninety",
            91: "ninety-one",
            92: "ninety-two",
            94: "ninety-four",
            97: "ninety-seven",
        }
        forms = [
            f"{a} y/o",
            f"{a}-year-old",
            f"{a} yo",
            f"{a} years old",
            f"{a}yo",
            f"{a} year old",
            f"{a} y.o.",
        ]
        if a in words:
            forms.append(f"{words[a]}-year-old")
        return f"[[AGE|{r.choice(forms)}]]"

    def street(self) -> str:
        r = self.rng
        num = r.choice(
            [str(r.randint(1, 99)), str(r.randint(100, 9999)), str(r.randint(10000, 99999))]
        )
        pre = r.choice(["", "", "N ", "S. ", "West ", "E "])
        apt = r.choice(
            [
                "",
                "",
                "",
                f", Apt {r.randint(1, 40)}{r.choice('ABC')}",
                f" Unit {r.randint(1, 300)}",
                f", Suite {r.randint(100, 900)}",
                f" #{r.randint(1, 99)}",
            ]
        )
        return f"[[ADDRESS|{num} {pre}{r.choice(STREETS)} {r.choice(SUFFIX)}{apt}]]"

    def po_box(self) -> str:
        return (
            f"[[ADDRESS|{self.rng.choice(['PO Box', 'P.O. Box'])} {self.rng.randint(10, 99999)}]]"
        )

    def zip(self) -> str:
        z = f"{self.rng.randint(1000, 99950):05d}"
        if self.rng.random() < 0.3:
            z += f"-{self.rng.randint(0, 9999):04d}"
        return f"[[ZIP|{z}]]"

    def city_state(self) -> str:
        city, st = self.rng.choice(CITIES)
        state = st if self.rng.random() < 0.7 else STATES.get(st, st)
        return f"[[CITY|{city}]], {state}"

    def city(self) -> str:
        return f"[[CITY|{self.rng.choice(CITIES)[0]}]]"

    def facility(self) -> str:
        r = self.rng
        head = r.choice(FAC_HEAD + [c for c, _ in CITIES[:6]] + [f"{r.choice(LAST_N)}"])
        return f"[[FACILITY|{head} {r.choice(FAC_TAIL)}]]"

    def phone(self) -> str:
        r = self.rng
        a, b, c = r.randint(201, 989), r.randint(200, 999), r.randint(0, 9999)
        forms = [
            f"({a}) {b}-{c:04d}",
            f"{a}-{b}-{c:04d}",
            f"{a}.{b}.{c:04d}",
            f"+1 {a} {b} {c:04d}",
            f"{a} {b} {c:04d}",
            f"1-{a}-{b}-{c:04d}",
            f"({a}){b}-{c:04d}",
            f"{a}-{b}-{c:04d} ext. {r.randint(1, 999)}",
            f"+1 ({a}) {b}-{c:04d} x{r.randint(10, 9999)}",
            f"{b}-{c:04d}",
        ]
        return f"[[PHONE|{r.choice(forms)}]]"

    def email(self) -> str:
        r = self.rng
        user = r.choice(
            [
                f"{self.first[0]}.{self.last}",
                f"{self.first}{r.randint(1, 99)}",
                f"{self.last}_{self.first}",
                f"pt.{r.randint(1000, 9999)}",
            ]
        )
        user = "".join(ch for ch in user if ch.isalnum() or ch in "._").lower()
        dom = r.choice(
            [
                "gmail.com",
                "yahoo.com",
                "mercyhealth.org",
                "outlook.com",
                "mail.example-clinic.net",
                "hotmail.co.uk",
                "uni-klinik.de",
            ]
        )
        return f"[[EMAIL|{user}@{dom}]]"

    def url(self) -> str:
        r = self.rng
        forms = [
            f"https://portal.mercyhealth.org/patient/{r.randint(10000, 99999)}",
            f"http://www.{self.last.lower().replace(' ', '').replace(chr(39), '')}-family.com",
            f"www.caringbridge.org/visit/{self.first.lower().replace(' ', '')}{r.randint(1, 99)}",
            f"https://mychart.example.com/MyChart/Billing?acct={r.randint(10**6, 10**7)}",
            f"facebook.com/{self.first.lower().replace(' ', '')}.{r.randint(10, 999)}",
            f"https://gofund.me/{r.randint(10**7, 10**8):x}",
        ]
        return f"[[URL|{r.choice(forms)}]]"

    def ip(self) -> str:
        r = self.rng
        if r.random() < 0.2:
            return (
                f"[[IP|fe80::{r.randint(0, 65535):x}:{r.randint(0, 65535):x}:"
                f"{r.randint(0, 65535):x}]]"
            )
        return (
            f"[[IP|{r.randint(10, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}."
            f"{r.randint(1, 254)}]]"
        )

    def ssn(self) -> str:
        r = self.rng
        a, b, c = r.randint(100, 899), r.randint(10, 99), r.randint(1000, 9999)
        return f"[[SSN|{r.choice([f'{a}-{b}-{c}', f'{a} {b} {c}', f'{a}{b}{c}'])}]]"

    def mrn(self) -> str:
        r = self.rng
        forms = [
            f"{r.randint(10**6, 10**8):08d}",
            f"A-{r.randint(10000, 99999)}",
            f"{r.randint(10, 99)}-{r.randint(10, 99)}-{r.randint(100, 999)}",
            f"MR{r.randint(10**5, 10**7)}",
            f"{r.randint(10000, 99999)}",
            f"E{r.randint(1000, 9999)}-{r.randint(10, 99)}",
            f"{r.randint(10**6, 10**7)}",
        ]
        return f"[[MRN|{r.choice(forms)}]]"

    def account(self) -> str:
        r = self.rng
        forms = [
            f"{r.randint(1000, 9999)}-{r.randint(10, 99)}-{r.randint(100, 999)}",
            f"{r.randint(10**7, 10**9)}",
            f"XJH{r.randint(10**7, 10**8)}",
            f"W{r.randint(10**8, 10**9)}",
            f"{r.randint(10, 99)}-{r.randint(1000, 9999)}-{r.randint(100, 999)}",
            f"E{r.randint(2020, 2025)}{r.randint(1000, 9999)}-{r.randint(1, 99)}",
        ]
        return f"[[ACCOUNT|{r.choice(forms)}]]"

    def license(self) -> str:
        r = self.rng
        forms = [
            f"S{r.randint(100, 999)}-{r.randint(1000, 9999)}-{r.randint(1000, 9999)}",
            f"D{r.randint(10**6, 10**7)}",
            f"RN{r.randint(10**5, 10**7)}",
            f"{r.choice('ABFM')}{r.choice('BCRT')}{r.randint(10**6, 10**7)}",
            f"{r.randint(1, 9)}{r.choice('ABCXYZ')}{r.choice('ABCXYZ')}"
            f"{r.choice('ABCXYZ')}{r.randint(100, 999)}",
            f"{r.randint(10**9, 10**10 - 1)}",
        ]
        return f"[[LICENSE|{r.choice(forms)}]]"

    def device(self) -> str:
        r = self.rng
        forms = [
            f"PJN{r.randint(10**5, 10**6)}S",
            f"{r.randint(1000, 9999)}-{r.randint(10, 99)}-AB{r.randint(1, 9)}",
            f"{r.randint(10000, 99999)}-X",
            f"MDT-{r.randint(1000, 9999)}-{r.randint(1000, 9999)}",
            f"SN{r.randint(10**6, 10**8)}",
            f"(01)00884521{r.randint(100000, 999999)}(21){r.randint(1000, 9999)}",
            f"{r.choice('ABCDEFGH')}{r.randint(100, 999)}{r.choice('XYZ')}{r.randint(1000, 9999)}",
        ]
        return f"[[DEVICE|{r.choice(forms)}]]"

    def keep(self) -> str:
        return "{{" + self.rng.choice(KEEP) + "}}"


def _header(n: _Note) -> list[str]:
    r = n.rng
    lines = []
    lines.append(
        r.choice(
            [
                f"Patient Name: {n.name('lf')}",
                f"PATIENT: {n.name('LF')}",
                f"Name: {n.name('fl')}",
                f"Pt: {n.name('lfm')}",
                f"patient name: {n.name('fml')}",
                f"PATIENT NAME {n.name('FL')}",
                f"Re: {n.name('fl')}",
                f"{n.name('LF')}",
            ]
        )
    )
    lines.append(
        r.choice(
            [
                f"MRN: {n.mrn()}",
                f"MR#: {n.mrn()}",
                f"Med Rec #: {n.mrn()}",
                f"Medical Record Number {n.mrn()}",
                f"mrn {n.mrn()}",
                f"Hosp #: {n.mrn()}",
                f"Unit No: {n.mrn()}",
            ]
        )
        + r.choice(
            [
                "",
                f"   DOB: {n.date(r.choice([0, 1, 2, 3, 4, 10, 12]))}",
                f"  D.O.B. {n.date(0)}",
                f"  Date of Birth: {n.date(4)}",
            ]
        )
    )
    lines.append(
        r.choice(
            [
                f"Acct #: {n.account()}",
                f"Account No. {n.account()}",
                f"Encounter #: {n.account()}",
                f"Insurance ID: {n.account()}",
                f"Member ID {n.account()}",
                f"Policy # {n.account()}",
                f"CSN: {n.account()}",
                f"Health plan beneficiary no. {n.account()}",
                f"Visit ID {n.account()}",
            ]
        )
    )
    lines.append(
        r.choice(
            [
                f"Date of service: {n.date()}",
                f"Admit date: {n.date()}   Discharge date: {n.date()}",
                f"DOS {n.date()}",
                f"Visit: {n.date()}",
                f"Date: {n.date()}",
            ]
        )
    )
    if r.random() < 0.6:
        lines.append(
            r.choice(
                [
                    f"SSN: {n.ssn()}",
                    f"SSN# {n.ssn()}",
                    f"Social Security Number: {n.ssn()}",
                    f"social security no {n.ssn()}",
                ]
            )
        )
    if r.random() < 0.6:
        lines.append(
            r.choice(
                [
                    f"Address: {n.street()}, {n.city_state()} {n.zip()}",
                    f"Home: {n.street()}\n{n.city_state()} {n.zip()}",
                    f"Addr: {n.po_box()}, {n.city_state()} {n.zip()}",
                    f"Lives at {n.street()} in {n.city()}.",
                    f"Mailing address {n.street()}, {n.city()}, zip code {n.zip()}",
                ]
            )
        )
    if r.random() < 0.6:
        lines.append(
            r.choice(
                [
                    f"Phone: {n.phone()}",
                    f"Tel {n.phone()}   Fax: {n.phone()}",
                    f"Cell: {n.phone()}",
                    f"Home phone {n.phone()}; work {n.phone()}",
                    f"Contact #: {n.phone()}",
                ]
            )
        )
    if r.random() < 0.5:
        lines.append(
            r.choice([f"Email: {n.email()}", f"E-mail {n.email()}", f"email: {n.email()}"])
        )
    if r.random() < 0.4:
        lines.append(
            r.choice(
                [
                    f"PCP: Dr. {n.other_name('l')}",
                    f"PCP: {n.other_name('fl')}, MD",
                    f"Referring provider: {n.other_name('fml')}, NP",
                    f"Attending: {n.other_name('fl')}",
                ]
            )
        )
    return lines


def _body(n: _Note) -> list[str]:
    r = n.rng
    k = n.keep
    age = r.choice([f"{r.randint(18, 89)}-year-old", n.old_age(), n.old_age()])
    sex = r.choice(["woman", "man", "female", "male", "patient"])
    s = [
        f"HPI: {n.name(r.choice(['f', 'fl', 'l']))} is a{'n' if age[0] in '8[' else ''} {age} "
        f"{sex} with {k()} and {k()} "
        f"who presents with worsening dyspnea since {n.date(r.choice([5, 6, 8, 9, 15]))}.",
        f"Pt is a {n.old_age()} {sex} from {n.facility()}, history of {k()}, admitted {n.date()}.",
        f"{r.choice(['Mr.', 'Ms.', 'Mrs.', 'Mr', 'Ms'])} {n.name('l')} reports {k()} and {k()}; "
        f"last seen in clinic on {n.date(r.choice([6, 9, 5, 0]))}.",
        f"Transferred from {n.facility()} on {n.date()} for {k()} management.",
        f"pt's {r.choice(RELATIONS)} {n.other_name(r.choice(['f', 'fl']))} at bedside, "
        f"can be reached at {n.phone()}.",
        f"Her {r.choice(RELATIONS)}, {n.other_name('fl')}, is health care proxy ({n.phone()}).",
        f"Discussed plan with {r.choice(RELATIONS)} "
        f"{n.other_name(r.choice(['f', 'low', 'fl']))} by phone.",
        f"Exam: {k()}, {k()}, {k()}. Neuro: {k()}.",
        f"Labs {n.date(r.choice([9, 5, 6, 0, 1]))}: {k()}, {k()}, {k()}.",
        f"Imaging at {n.facility()} ({n.date()}) showed degenerative change at {{{{L4-L5}}}}.",
        f"History of {k()}; s/p {k()} in {r.randint(1990, 2020)}.",
        f"She has an implanted pacemaker, serial no. {n.device()}, interrogated {n.date()}.",
        f"Insulin pump S/N: {n.device()}; CGM device ID {n.device()}.",
        f"Device: ICD model Evera, serial number {n.device()}.",
        f"Patient portal: {n.url()} ; family blog {n.url()}.",
        f"Remote session from IP {n.ip()} (telehealth), logged {n.date()}.",
        f"Photos uploaded from {n.ip()} via {n.url()}.",
        f"Driver's license {n.license()}; license plate {n.license()}.",
        f"Prescriber DEA {n.license()}, NPI {n.license()}.",
        f"Nursing license #: {n.license()}",
        f"Lives in {n.city()} with her {r.choice(RELATIONS)}; moved from {n.city_state()} in 2019.",
        f"Follow up at {n.facility()}, {n.street()}, {n.city_state()} {n.zip()}.",
        f"Spoke with {n.other_name('fl')} from social work; callback {n.phone()}.",
        f"Interpreter {n.other_name('f')} (Vietnamese) used for the visit on {n.date()}.",
        f"Next appt {n.date(r.choice([9, 5, 6, 7, 15]))} with Dr {n.other_name('l')}.",
        f'Pt states "{n.name("f")} is my name, call me at {n.phone()}".',
        f"Case reviewed with {n.other_name('fml')}, RN and {n.other_name('fl')}, PA-C.",
        f"Plan: continue {k()}, start {k()}; recheck {k()} on {n.date(r.choice([9, 5, 15]))}.",
        f"Email results to {n.email()} per patient request.",
        f"Records faxed to {n.facility()} at {n.phone()}.",
        f"{n.name('l')} tolerated the procedure well. {k()} noted. {k()}.",
        f"Grandmother ({n.old_age()}) died of {k()} on {n.date()}.",
        f"Account {n.account()} flagged for billing; MRN {n.mrn()}.",
        f"ID band checked: {n.name('LF')} / {n.mrn()} / {n.date(0)}.",
        f"Follows with Dr. {n.other_name('fl')} at {n.facility()}.",
    ]
    return r.sample(s, r.randint(6, 10))


def _footer(n: _Note) -> list[str]:
    r = n.rng
    doc = n.other_name
    return [
        r.choice(
            [
                f"Electronically signed by: {doc('fml')}, MD {n.date()}",
                f"electronically signed by {doc('fl')}, MD on {n.date()}",
                f"Signed: {doc('fl')} MD",
                f"Dictated by: {doc('lf')}, DO   Transcribed: {n.date()}",
                f"-- {doc('fml')}, NP",
                f"Attending attestation: I saw and examined the patient. {doc('fl')}, MD",
                f"{doc('FL')}, MD\n{n.facility()} | {n.phone()}",
                f"cc: {doc('fl')}, MD; {doc('fl')}, DO",
            ]
        )
    ]


def generate(n: int, seed: int = 7) -> list[str]:
    """``n`` marked-up notes, reproducible for a given seed."""
    rng = random.Random(seed)
    notes = []
    for _ in range(n):
        note = _Note(rng)
        parts = [*_header(note), "", *_body(note), "", *_footer(note)]
        notes.append("\n".join(parts))
    return notes
