"""Pattern rules for the structured HIPAA Safe Harbor classes in note text.

Dates (every form but a bare year), ages over 89, street addresses, cities, ZIP codes,
facilities, phone and fax numbers, e-mail addresses, URLs, IP addresses, SSNs and
record/account/plan/license/device numbers. Each rule yields ``(start, end, cls)``.

Every pattern is linear-time by construction: a pattern that starts with a repeated
character class is anchored by a negative look-behind for that class (only the start of a
run is tried), repetitions are bounded or separated by a literal the repeated class cannot
match, and the judgement calls (is ``3/4`` a date? is this token an ID?) are made in Python
on the match, not by nested quantifiers. ``tests/modalities/test_deid.py`` runs 1 MB
adversarial notes through every rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


def _split(words: str) -> list[str]:
    """A word list written as one string (easier to read and edit than a list literal)."""
    return words.split()


Span = tuple[int, int, str]

I = re.IGNORECASE  # noqa: E741

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_WEEKDAY = r"(?:Mon|Tue|Tues|Wed|Thu|Thur|Thurs|Fri|Sat|Sun)(?:day|nesday|rsday|urday|sday)?"
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_ORD = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)"
_YEAR = r"(?:(?:1[89]|20)\d\d|'\d\d)"

_DATE_WORDS = [
    # Month day(, year) -- "March 4th", "Mar. 4, 2024", "JAN 7 1997", "Mar-04-2024"
    re.compile(rf"(?<!\w){_MONTH}\.?[ \t-]?{_DAY}(?!\d)(?:(?:,[ \t]*|[ \t-]){_YEAR}(?!\d))?", I),
    # day (of) Month (year) -- "04-Mar-2024", "4 March 2024", "the 5th of May", "7th March"
    re.compile(
        rf"(?<![\w/]){_DAY}(?:[ \t]+of)?[ \t-]?{_MONTH}(?!\w)\.?"
        rf"(?:,?[ \t-]?{_YEAR}(?!\d)|-\d\d(?!\d))?",
        I,
    ),
    # Month year -- "March 2024", "Nov 2022", "Mar-2024", "July of 2025"
    re.compile(rf"(?<!\w){_MONTH}\.?(?:[ \t]+of)?,?[ \t-]?{_YEAR}(?!\d)", I),
    # weekday + ordinal -- "Sunday the 14th"
    re.compile(rf"(?<!\w){_WEEKDAY},?[ \t]+(?:the[ \t]+)?{_ORD}(?!\w)", I),
]
_NUM_DATE = re.compile(
    r"(?<![\d/.-])(?:(\d{4})([-/.])(\d{1,2})\2(\d{1,2})|(\d{1,2})([-/.])(\d{1,2})\6(\d{4}|\d{2}))"
    r"(?![\d/]|\.\d)"
)
# Month and year: "3/80", "8/79", "11/2019" (the second number cannot be a day).
_MONTH_YEAR = re.compile(r"(?<![\d/.,+:-])(0?[1-9]|1[0-2])/(\d{2}|(?:19|20)\d{2})(?![\d/]|\.\d)")
# A month named alone is a date element too ("since November"); "May" and "March" are
# also words, so they need a preposition in front.
_MONTH_ALONE = re.compile(
    r"(?<![\w-])(?:January|February|April|June|July|August|September|October|November|"
    r"December)(?![\w-])"
)
_MAY_MARCH = re.compile(
    r"\b(?:in|since|during|until|by|early|late|mid|last|next|this)[ \t]+(May|March)(?![\w-])"
)
_SHORT_DATE = re.compile(r"(?<![\d/.,+:-])(\d{1,2})/(\d{1,2})(?![\d/]|\.\d|\+)")
_SHORT_DATE_CUE = re.compile(
    rf"(?:\b(?:on|since|from|until|till|through|thru|to|by|dated?|dos|visit|seen|appt|"
    rf"appointment|admit(?:ted)?|discharged?|returned?|due|start(?:ed|ing)?|stopped|"
    rf"addendum|before|after|of|next|last|effective|as of|expires?|exp|logged|signed|"
    rf"interrogated|dictated|transcribed|performed|drawn|collected|obtained|reviewed|"
    rf"scheduled|placed|implanted|given|died|expired|md|do|rn|np|labs?|results?|imaging|"
    rf"echo|ekg|ecg|cxr|xr|ct|mri|cultures?|vaccinated|vaccine|dose|"
    rf"{_WEEKDAY})|[:(])[ \t]*$",
    I,
)
_NOT_DATE_AFTER = re.compile(
    r"[ \t]*(?:tabs?|tablets?|pills?|caps?|strength|dose|doses|inch|inches|cups?|tsp|tbsp|"
    r"of\b|mg|ml|units?|scale|score|mmhg|ns\b|nss\b|x\b)",
    I,
)
_DOB = re.compile(
    r"\b(?:DOB|D\.O\.B\.?|date of birth|birth ?date|birthday|born(?: on)?)[ \t]*[:#-]?[ \t]*"
    r"([A-Za-z0-9][\w/.,-]{0,11}(?:[ \t][\w,]{1,9}){0,2})",
    I,
)
_HOLIDAY = re.compile(
    r"\b(?:Christmas(?: Eve| Day)?|Thanksgiving(?: Day)?|New Year'?s(?: Eve| Day)?|"
    r"Easter(?: Sunday)?|Independence Day|Memorial Day|Labor Day|Halloween)"
    rf"(?:,?[ \t]+{_YEAR})?(?!\w)"
)

_AGE_UNIT = (
    r"(?:[ \t]*-?[ \t]*(?:years?[ \t-]+old|year-old|yrs?\.?[ \t-]+old|y/?o\b|y\.o\.?|yo\b|"
    r"yrs?\b|years?\b|y\b|yr\b|-?year\b))"
)
_AGE_NUM = r"(?:9\d|1[01]\d)"
_AGE_WORD = (
    r"(?:ninety|one[ \t-]hundred(?:[ \t-]and)?)"
    r"(?:[ \t-](?:one|two|three|four|five|six|seven|eight|nine|ten))?"
)
_AGES = [
    re.compile(rf"(?<![\w.]){_AGE_NUM}{_AGE_UNIT}", I),
    re.compile(rf"(?<![\w.]){_AGE_WORD}(?:{_AGE_UNIT}(?:[ \t-]+old)?)?(?!\w)", I),
    re.compile(
        rf"\b(?:age[ds]?|aged|age:|is|was|turns|turned|\()[ \t:]*({_AGE_NUM})"
        r"(?!\.\d|[\w%/]|[ \t]*(?:%|mg|mcg|ml|mmhg|bpm|/|percent))",
        I,
    ),
    re.compile(rf"\b({_AGE_NUM})[ \t]*(?:[MF]|male|female|man|woman)\b(?!\.\d)"),
]

_PHONE = re.compile(
    r"(?<![\w+/.-])(?:\+?1[ \t.-]?)?(?:\(\d{3}\)[ \t]?|\d{3}[ \t.-])\d{3}[ \t.-]\d{4}"
    r"(?:[ \t]*(?:ext\.?|x|extension)[ \t]*\d{1,5})?(?![\w-])",
    I,
)
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ \t.-]?\(?\d{1,5}\)?){2,5}(?![\w-])")
_PHONE_LOCAL = re.compile(r"(?<![\w.-])[2-9]\d{2}-\d{4}(?![\w-]|\.\d)")
_PHONE_CUE = re.compile(
    r"\b(?:phone|tel|telephone|cell|mobile|fax|pager|beeper|call(?: back)?(?: at)?|"
    r"callback|contact #?)[ \t]*[:#.]?[ \t]*(\+?[\d(][\d() .-]{2,18}\d)",
    I,
)
_SSN = re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
_URL = re.compile(r"(?<![\w.])(?:(?:https?|ftp)://|www\.)[^\s<>\"'|]{1,2000}", I)
_DOMAIN = re.compile(
    r"(?<![\w.@/-])(?:[a-z0-9-]{1,63}\.){1,6}(?:com|org|net|edu|gov|io|us|uk|de|info|health|"
    r"me|ly|co|ca|au|biz)(?![\w-])(?:/[^\s<>\"'|]{0,2000})?",
    I,
)
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?![\w:])", I)

_STATES = _split(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH "
    "NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR"
)
_STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|"
    "Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|"
    "Massachusetts|Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|"
    "New Hampshire|New Jersey|New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|"
    "Oregon|Pennsylvania|Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|"
    "Vermont|Virginia|Washington|West Virginia|Wisconsin|Wyoming|Puerto Rico"
)
_STATE = rf"(?:{'|'.join(_STATES)}|{_STATE_NAMES})"
_CAPWORD = r"(?:St\.|Ft\.|Mt\.|[A-Z][a-z'’]+(?:-[A-Z][a-z]+)?)"
_PLACE = rf"{_CAPWORD}(?:[ \t]{_CAPWORD}){{0,2}}"
_ZIP = r"\d{5}(?:-\d{4})?"
# "Eugene, OR", "Eugene OR 97402": without a comma only a ZIP after the state makes it one
# ("Insurance ID" is no city in Idaho).
_CITY_STATE = re.compile(
    rf"(?<![\w.])({_PLACE})(?:,[ \t]*{_STATE}(?![\w-])\.?|[ \t]+{_STATE}(?=[ \t]+{_ZIP}))"
    rf"(?:,?[ \t]+({_ZIP}))?(?!\d)"
)
_ZIP_CUE = re.compile(rf"\b(?:zip|zip ?code|postal code|zipcode)[ \t]*[:#]?[ \t]*({_ZIP})\b", I)
# Residence and origin cues; only "lives ... in" may have a "with ..." clause between
# ("Lives with partner Sam in Worcester"), so "male with a history of Type 2" is no place.
_CITY_CUE = re.compile(
    rf"\b(?:(?:lives|living|resides|residing)(?:[ \t]+with[^.\n]{{1,40}}?)?[ \t]+in|"
    rf"(?:resident|native)[ \t]+of|(?:moved(?:[ \t]+(?:here|back))?|relocated)[ \t]+(?:from|to)|"
    rf"(?:born|home)[ \t]+in|(?:travell?ed|trip|returned)[ \t]+to|"
    rf"(?:visiting|originally|(?:wo)?man|male|female|patient|pt|resident)[ \t]+from)"
    rf"[ \t]+((?-i:{_PLACE}))",
    I,
)
_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
    r"Terrace|Ter|Circle|Cir|Highway|Hwy|Parkway|Pkwy|Trail|Trl|Pike|Loop|Square|Sq|Plaza|"
    r"Alley|Crescent|Row|Run|Path|Crossing|Xing|Turnpike|Expressway|Broadway)"
)
_UNIT = (
    r"(?:,?[ \t]*(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Rm\.?|Room|Bldg\.?|Floor|Fl\.?|#)"
    r"[ \t]*#?[ \t]*[\w-]{1,6})"
)
_ADDRESS = re.compile(
    rf"(?<![\w.-])(\d{{1,6}}[A-Za-z]?[ \t]+(?:[NSEW]\.?[ \t]+|(?:North|South|East|West)[ \t]+)?"
    rf"(?:(?:[A-Z0-9][\w'.]{{0,20}}|[a-z]{{2,3}})[ \t]+){{1,4}}?{_SUFFIX}\b\.?{_UNIT}?)"
    rf"(?:(?:,[ \t]*|[ \t]+in[ \t]+|\n)({_PLACE})(?=[ \t]*[,.\n]|[ \t]+{_STATE}\b|$))?",
    re.M,
)
_PO_BOX = re.compile(r"\bP\.?[ \t]?O\.?[ \t]*Box[ \t]*#?[ \t]*\d{1,7}\b", I)
_ADDRESS_CUE = re.compile(
    r"\b(?:home |mailing |street |permanent )?address[ \t]*:[ \t]*([^\n]{3,200})", I
)

_FAC_KEY = (
    r"(?:Hospitals?|Medical Cent(?:er|re)|Health Cent(?:er|re)|Health System|Healthcare|"
    r"Health Care|Health|Clinics?|Infirmary|Nursing Home|Nursing Facility|Nursing Center|"
    r"Rehabilitation(?: Center| Hospital)?|Rehab|Urgent Care|Hospice|Institute|"
    r"Assisted Living|Senior Living|Manor|Care Center|Home Care|Imaging|Associates|"
    r"Medical Group|Pharmacy|Laborator(?:y|ies)|Surgery Center|Dialysis Center|"
    r"Elementary School|Middle School|High School|School|University|College|Academy|"
    r"Church|Correctional Facility|Prison|Jail|Shelter|Medical Associates|Physicians|"
    r"Specialists|Cancer Center|Heart Center|Children's|Memorial|Sanatorium|Asylum|Facility|"
    r"Centers?|Centres?)"
)
_FAC_WORD = r"(?:[A-Z][\w'’&-]{0,30}|St\.|Mt\.|Ft\.|of|and|the|&|for|de)"
_FACILITY = re.compile(
    rf"(?<![\w'’.&-])(?:{_FAC_WORD}[ \t]+){{0,6}}?{_FAC_KEY}(?:[ \t]+{_FAC_KEY}){{0,2}}(?![\w-])"
    rf"(?:[ \t]+of[ \t]+{_CAPWORD}(?:[ \t]+(?:and[ \t]+)?{_CAPWORD}){{0,5}})?"
)
_SAINT = re.compile(
    r"(?<![\w.])(?:St\.?|Saint|Mount|Mt\.?)[ \t]+[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+){0,2}"
)
# Words that make a facility name generic ("Cardiology Clinic"): redacting those costs
# precision and protects no one.
_GENERIC = set(
    _split(
        "the of and for at & a st. saint general memorial community regional university medical "
        "health family primary care urgent women's children's cardiology oncology pain dental eye "
        "internal medicine surgical surgery walk-in va county city state our your their this that "
        "his her outpatient inpatient specialty diabetes heart cancer kidney sleep vein wound "
        "endocrine neurology psychiatry pediatric pediatrics orthopedic orthopedics ent gi "
        "dermatology rheumatology behavioral mental home nursing rehabilitation rehab hospital "
        "hospitals clinic clinics center centre institute associates imaging emergency trauma "
        "poison control education wellness infusion dialysis ambulatory treatment recovery "
        "research diagnostic"
    )
)
# A facility word alone ("Facility:", "Pharmacy") is a label, not a name.
_GENERIC |= set(re.findall(r"[a-z'’]+", _FAC_KEY.lower()))

_ID_WORD = (
    r"MRN|MR|Med(?:ical)?[ \t]*Rec(?:ord)?s?|Acc(?:oun)?t|Accession|Encounter|Enc|Visit|CSN|"
    r"FIN|HAR|Policy|Insurance[ \t]+(?:ID|No\.?|#|number)|Beneficiary|Claim|Specimen|"
    r"License|Lic|Licence|DL|Driver'?s[ \t]+licen[cs]e|Plate|Tail|VIN|DEA|NPI|UPIN|"
    r"Certificate|Cert|Serial|S/N|SN|Device|UDI|Lot|Model|Implant|ID|Passport|Medicare|"
    r"Medicaid|EIN|Fax|Req(?:uisition)?|Unit[ \t]+No"
)
# Words that mark an identifier only with a number word after them ("Case #", "Member ID").
_ID_WORD_QUALIFIED = (
    r"Patient|Pt|Record|Case|Lab|Order|Member|Subscriber|Group|Grp|Hosp(?:ital)?|Chart|"
    r"Tax|Employee|Badge|Confirmation|Tracking|Ticket|Reference|Ref|Visit|Unit|Health[ \t]+plan"
)
_ID_CUE = re.compile(
    rf"(?:\b(?:{_ID_WORD}|(?:{_ID_WORD_QUALIFIED})(?=[ \t]*(?:#|No\b|No\.|Num|ID\b|Identifier)))"
    r"(?:[ \t]+(?:No\.?|Num(?:ber)?|ID|#|Code|plate|number|identifier)){0,2}"
    r"[ \t]*(?:\((?=[^)\n]*[A-Za-z])[^)\n]{0,20}\))?[ \t]*[:#=.-]*[ \t]*(?:is[ \t]+)?)"
    r"([A-Za-z0-9(][\w()/.-]{1,40}(?:[ \t]\d{4,12}\b)?)",
    I,
)
# Tokens with a digit (the look-ahead scans each token once: linear).
_WORD_START = re.compile(r"(?<![\w'’/-])[^\W\d_](?:[^\W\d_]|[/'’-])*")


def matches_at_words(
    pattern: re.Pattern[str], text: str, heads: frozenset[str]
) -> Iterator[re.Match[str]]:
    """``pattern.match`` at each word whose lowercase form is in ``heads``.

    The same matches as ``pattern.finditer`` for a pattern that starts with one of those
    words, at a fraction of the cost: a long alternation of cue words is otherwise tried
    at every character of the note.
    """
    end = 0
    for w in _WORD_START.finditer(text):
        if w.start() >= end and w.group().lower() in heads:
            m = pattern.match(text, w.start())
            if m:
                end = m.end()
                yield m


_ID_HEADS = frozenset(
    _split(
        "mrn mr med medical acct acc account accession encounter enc visit csn fin har policy "
        "insurance beneficiary claim specimen license lic licence dl driver's drivers driver’s "
        "plate tail vin dea npi upin certificate cert serial s/n sn device udi lot model "
        "implant id passport medicare medicaid ein fax req requisition unit patient pt record "
        "case lab order member subscriber group grp hosp hospital chart tax employee badge "
        "confirmation tracking ticket reference ref health"
    )
)
_TOKEN = re.compile(r"(?<![\w/-])(?=[\w/-]*\d)[A-Za-z0-9][\w/-]*")
_NO_DIGITS = str.maketrans("", "", "0123456789")
_DIGIT = re.compile(r"\d")
_UNIT_AFTER = re.compile(
    r"[ \t]*(?:/(?=[a-zA-Z])|units?\b|iu\b|copies|cells|mg\b|mcg\b|ml\b|g\b|k\b|ng\b|pg\b|"
    r"cfu|steps|"
    r"calories|kcal|mm\b|cm\b|ms\b|hz\b|per\b)",
    I,
)
_MEASURE = re.compile(r"\d+(?:\.\d+)?[a-zA-Z/%]{1,6}|[A-Za-z]{1,6}\d{1,3}[A-Za-z]{0,3}")
_YEAR_RANGE = re.compile(r"(?:19|20)\d\d-(?:19|20)?\d\d")


_ABBREV_DOT = re.compile(r"\b(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec|[A-Za-z])\.$", I)
_WEEKDAY_BEFORE = re.compile(rf"(?<!\w){_WEEKDAY}\.?,?[ \t]+$", I)


def _dates(text: str) -> Iterator[Span]:
    """Date spans, each with the weekday in front of it when there is one."""
    for start, end, cls in _date_spans(text):
        w = _WEEKDAY_BEFORE.search(text, max(0, start - 12), start)
        if text[end - 1] == "." and end - start > 1 and not _ABBREV_DOT.search(text, start, end):
            end -= 1  # "on 5th of November." ends a sentence; "Nov." keeps its dot
        yield (w.start() if w else start), end, cls


_MONTH_HINT = re.compile(r"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec", I)


def _date_spans(text: str) -> Iterator[Span]:
    if _MONTH_HINT.search(text):
        for pat in _DATE_WORDS:
            for m in pat.finditer(text):
                yield m.start(), m.end(), "DATE"
        for m in _MONTH_ALONE.finditer(text):
            yield m.start(), m.end(), "DATE"
        for m in _MAY_MARCH.finditer(text):
            yield m.start(1), m.end(1), "DATE"
    for m in _HOLIDAY.finditer(text):
        yield m.start(), m.end(), "DATE"
    if _DIGIT.search(text):
        yield from _numeric_dates(text)


def _numeric_dates(text: str) -> Iterator[Span]:
    for m in _NUM_DATE.finditer(text):
        if m.group(1):
            y, a, b = int(m.group(1)), int(m.group(3)), int(m.group(4))
            ok = 1800 <= y <= 2100 and 1 <= a <= 12 and 1 <= b <= 31
        else:
            a, b = int(m.group(5)), int(m.group(7))
            ok = (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)
        if ok:
            yield m.start(), m.end(), "DATE"
    for m in _SHORT_DATE.finditer(text):
        a, b = int(m.group(1)), int(m.group(2))
        if not (1 <= a <= 12 and 1 <= b <= 31):
            continue
        if _NOT_DATE_AFTER.match(text, m.end()):
            continue
        # "3/4", "5/5", "7/10" are also fractions and scales: take them as dates only after
        # a date cue ("on 3/4", "Friday 6/7") or when the day cannot be a scale's maximum.
        before = text[max(0, m.start() - 16) : m.start()]
        if b > 12 or _SHORT_DATE_CUE.search(before) or text.startswith(":", m.end()):
            yield m.start(), m.end(), "DATE"
    for m in _MONTH_YEAR.finditer(text):
        if int(m.group(2)) > 31 and not _NOT_DATE_AFTER.match(text, m.end()):
            yield m.start(), m.end(), "DATE"
    for m in _DOB.finditer(text):
        yield m.start(1), m.end(1), "DATE"


def _ages(text: str) -> Iterator[Span]:
    for pat in _AGES if _DIGIT.search(text) else _AGES[1:2]:
        for m in pat.finditer(text):
            if m.re.groups:
                yield m.start(1), m.end(1), "AGE"
            else:
                yield m.start(), m.end(), "AGE"


def _contacts_text(text: str) -> Iterator[Span]:
    """E-mail addresses and URLs, the contacts that need no digit."""
    if "@" in text:
        yield from ((m.start(), m.end(), "EMAIL") for m in _EMAIL.finditer(text))
    if "." in text:
        for pat in (_URL, _DOMAIN):
            for m in pat.finditer(text):
                end = m.end()
                while end > m.start() and text[end - 1] in ".,;:)]}!?'\"":
                    end -= 1
                yield m.start(), end, "URL"


def _contacts(text: str) -> Iterator[Span]:
    rules = [(_EMAIL, "EMAIL"), (_URL, "URL"), (_DOMAIN, "URL"), (_SSN, "SSN"), (_PHONE, "PHONE"),
             (_PHONE_INTL, "PHONE"), (_PHONE_LOCAL, "PHONE")]  # fmt: skip
    for pat, cls in rules:
        for m in pat.finditer(text):
            end = m.end()
            if cls == "URL":  # a sentence's full stop or a closing bracket is not the URL's
                while end > m.start() and text[end - 1] in ".,;:)]}!?'\"":
                    end -= 1
            if cls == "PHONE" and sum(ch.isdigit() for ch in m.group()) < 7:
                continue
            yield m.start(), end, cls
    for m in _PHONE_CUE.finditer(text):
        short_ok = m.group().lower().startswith(("pager", "beeper"))  # 4-5 digit pagers
        if sum(ch.isdigit() for ch in m.group(1)) >= (4 if short_ok else 7):
            yield m.start(1), m.end(1), "PHONE"
    for m in _IPV4.finditer(text):
        if all(int(g) <= 255 for g in m.groups()):
            yield m.start(), m.end(), "IP"
    for m in _IPV6.finditer(text):
        g = m.group()
        if ("::" in g or g.count(":") >= 5) and any(ch.isdigit() for ch in g) and len(g) >= 6:
            yield m.start(), m.end(), "IP"


def _near(
    pattern: re.Pattern[str], hint: re.Pattern[str], text: str, before: int, after: int
) -> Iterator[re.Match[str]]:
    """``pattern``'s matches within reach of a ``hint`` match (a cheaper regex that every
    match must contain): rules that try several capitalised words at each word start cost
    too much on long notes to scan whole."""
    windows: list[list[int]] = []
    for h in hint.finditer(text):
        lo, hi = max(0, h.start() - before), min(len(text), h.end() + after)
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], hi)
        else:
            windows.append([lo, hi])
    for lo, hi in windows:
        yield from pattern.finditer(text, lo, hi)


_FAC_HINT = re.compile(_FAC_KEY)
_STATE_HINT = re.compile(rf"(?:,[ \t]*|[ \t]){_STATE}(?![\w-])")
_CITY_CUE_HINT = re.compile(r"\b(?:in|of|from|to)[ \t]+[A-Z]", I)


def _places(text: str) -> Iterator[Span]:
    for m in _ADDRESS.finditer(text):
        street = m.group(1).rstrip(",")
        yield m.start(1), m.start(1) + len(street), "ADDRESS"
        if m.group(2):
            yield m.start(2), m.end(2), "CITY"
    for m in _PO_BOX.finditer(text):
        yield m.start(), m.end(), "ADDRESS"
    for m in _ADDRESS_CUE.finditer(text):
        yield m.start(1), m.end(1), "ADDRESS"
    for m in _near(_CITY_STATE, _STATE_HINT, text, 60, 20):
        yield m.start(1), m.end(1), "CITY"
        if m.group(2):
            yield m.start(2), m.end(2), "ZIP"
    for m in _ZIP_CUE.finditer(text):
        yield m.start(1), m.end(1), "ZIP"
    for m in _near(_CITY_CUE, _CITY_CUE_HINT, text, 80, 60):
        yield m.start(1), m.end(1), "CITY"
    for m in _near(_FACILITY, _FAC_HINT, text, 230, 200):
        words = m.group().replace("\t", " ").split()
        if any(w.lower().strip(",.") not in _GENERIC for w in words):
            yield m.start(), m.end(), "FACILITY"
    for m in _SAINT.finditer(text):
        yield m.start(), m.end(), "FACILITY"


def _ids(text: str) -> Iterator[Span]:
    for m in matches_at_words(_ID_CUE, text, _ID_HEADS):
        value = m.group(1).rstrip(".,;:)")
        if value.startswith("(") and ")" not in value:
            value = value[1:]
        if any(ch.isdigit() for ch in value) and len(value) >= 3:
            start = m.start(1)
            yield start, start + len(m.group(1).rstrip(".,;:)")), "ID"
    for m in _TOKEN.finditer(text):
        tok = m.group()
        digits = len(tok) - len(tok.translate(_NO_DIGITS))
        if digits < 4 or _MEASURE.fullmatch(tok) or _YEAR_RANGE.fullmatch(tok):
            continue
        if tok.isdigit():
            # Bare numbers: long ones are identifiers unless a unit follows (250000 /uL).
            if digits < 6 or _UNIT_AFTER.match(text, m.end()):
                continue
        elif tok.replace("-", "").replace("/", "").isdigit():
            groups = tok.replace("/", "-").split("-")
            if not ((len(groups) >= 3 and digits >= 6) or max(map(len, groups)) >= 5
                    or digits >= 8):  # fmt: skip
                continue
        elif digits < 4:
            continue
        yield m.start(), m.end(), "ID"


def find_patterns(text: str) -> list[Span]:
    """All pattern-rule hits in ``text`` (overlapping; the caller merges them)."""
    spans: list[Span] = []
    digits = _DIGIT.search(text) is not None
    # Without a digit most rules cannot match; skipping them keeps long prose cheap.
    rules = (
        (_dates, _ages, _contacts, _places, _ids)
        if digits
        else (_dates, _ages, _contacts_text, _places)
    )
    for rule in rules:
        spans.extend(rule(text))
    return spans
