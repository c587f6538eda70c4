"""Redaction of secrets and personal data before anything reaches a shard.

Each rule replaces a match with a typed placeholder (`<API_KEY>`, `<SECRET>`, `<PASSWORD>`,
`<TOKEN>`, `<PRIVATE_KEY>`, `<EMAIL>`, `<PHONE>`, `<IP_ADDRESS>`) so a world model still learns
that a key or an address appears there, never which one. Where a value sits behind a name
(`DB_PASSWORD=...`, `"api_key": "..."`, `user:pass@host`) the name stays and only the value goes.

Covered (patterns written from the providers' documented token formats; `bench/bench_redact.py`
plants every kind in several contexts and measures recall, and false positives on real turns):
  - tokens recognisable on their own: AWS access key ids, Google API keys and OAuth secrets,
    Azure AD client secrets, GitHub, GitLab, Bitbucket/Atlassian, Slack, Discord, Telegram,
    Twilio, SendGrid, Mailgun, Stripe, OpenAI, Anthropic, Hugging Face, npm, PyPI, Docker Hub,
    Shopify, Square, Facebook, PayPal/Braintree, DigitalOcean, Heroku, Linear, Postman, Vault,
    Grafana, Databricks, Doppler, Pulumi, Notion, New Relic, Sentry, age, Alibaba, Mapbox; JWTs;
    Slack and Discord webhook URLs;
  - private key blocks (any PEM kind, OpenSSH, PGP), also inside JSON strings (GCP service
    accounts);
  - credentials in URLs (`postgres://u:pw@`, `mongodb+srv://`, `redis://:pw@`, `amqp://`,
    `https://u:pw@`), Authorization headers (Basic, Bearer, Token, ...), `curl -u`, `mysql -p`,
    `.netrc` entries, Azure connection strings and SAS signatures;
  - values behind a name that says secret, in every assignment form (`KEY=v`, `export KEY="v"`,
    `"key": "v"`, `key: v`, `--password v`, nested `A=b_secret = v`, where the value is the last
    link). A name that merely ends in `key` (`primary_key`) needs a value that looks random; a
    password/secret/token name needs a literal, not code (`token = next_token()`,
    `password: str = None`, `--password=PASSWORD` stay);
  - personal data: email addresses, phone numbers (+CC international forms, US forms), public
    IPv4/IPv6 addresses.

Kept on purpose, because they are not personal data and a world model of terminals, servers and
browsers needs them verbatim (redacting them would be false positives on clean sessions):
loopback, private, link-local, shared, multicast, reserved and documentation addresses
(127.0.0.1, 0.0.0.0, 10/8, 172.16/12, 192.168/16, 169.254/16, 100.64/10, 192.0.2/24,
198.51.100/24, 203.0.113/24, ::1, fe80::/10, fc00::/7, 2001:db8::/32), the public resolvers
everybody types (8.8.8.8, 1.1.1.1, 9.9.9.9, ...); addresses at the reserved example domains
(RFC 2606/6761: example.com/.net/.org, *.example, *.test, *.invalid, *.localhost), at mailing
lists (`lists.*`) or of roles (`team+x@`, `*-maintainers@`, `noreply@`, `git@host`). Every other
address, public IP and phone number is redacted: it may identify a person.

Speed: prepare redacts every turn of millions of trajectories, so a rule runs only where a cheap
test passes: a literal it needs is in the text, or a keyword in the lower-cased text, and the
provider tokens only near runs of 16 token characters (every token has one). A trajectory's
texts take those tests together first (redact_texts): a rule none of them can need is not
tested on each. Patterns start with a literal where they can: Python's regex engine scans for
a literal fast and for an alternation slowly.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable

from lwm.schema import Step, Trajectory

# ---- tokens recognisable on their own: kind -> (literals of its prefix, pattern) ---------------
_TOKENS: dict[str, tuple[tuple[str, ...], str]] = {
    "aws_access_key_id": (("AKIA", "ASIA", "ABIA", "ACCA"), r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    "google_api_key": (("AIza",), r"\bAIza[\w-]{35}(?![\w-])"),
    "google_oauth": (("GOCSPX-", "ya29."), r"\b(?:GOCSPX-[\w-]{28}|ya29\.[\w-]{30,})(?![\w-])"),
    "github": (("gh", "github_pat_"), r"\b(?:gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_\w{40,255})\b"),
    "gitlab": (("gl", "GR1348941"),
               r"\b(?:gl(?:pat|dt|rt|ptt|cbt|ffct|ft|imt|oas|soat|agent)-[\w.-]{20,}|GR1348941[\w-]{20,})"),
    "atlassian": (("ATBB", "ATATT3", "ATCTT3"), r"\b(?:ATBB[\w=.-]{32,}|AT[AC]TT3[\w=-]{100,})"),
    "slack_token": (("xox", "xapp-"), r"\b(?:xox[abeoprs]|xoxe\.xox[bp])-[\w-]{16,}|\bxapp-\d-[\w-]{16,}"),
    "discord_bot_token": ((), r"\b[MNO][A-Za-z0-9]{23,27}\.[\w-]{6}\.[\w-]{27,40}(?![\w-])"),
    "telegram_bot_token": ((":A",), r"\b\d{5,16}:A[\w-]{34}(?![\w-])"),
    "twilio": (("SK", "AC"), r"\b(?:SK[0-9a-fA-F]{32}|AC[0-9a-f]{32})\b"),
    "sendgrid": (("SG.",), r"\bSG\.[\w-]{22}\.[\w-]{43}(?![\w-])"),
    "mailgun": ((), r"\b(?:(?:pub)?key-[0-9a-f]{32}|[0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{8})\b"),
    "stripe": (("k_live_", "k_test_", "whsec_"),
               r"\b(?:[sr]k_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,})\b"),
    "anthropic": (("sk-ant-",), r"\bsk-ant-[\w-]{20,}"),
    "openai": (("sk-",), r"\bsk-(?:proj-|svcacct-|admin-)?(?=[\w-]*\d)[\w-]{20,}"),
    "huggingface": (("hf_", "api_org_"), r"\b(?:hf_[A-Za-z0-9]{30,}|api_org_[A-Za-z0-9]{30,})\b"),
    "npm": (("npm_",), r"\bnpm_[A-Za-z0-9]{36}\b"),
    "pypi": (("pypi-AgE",), r"\bpypi-AgE[\w-]{50,}"),
    "docker_hub": (("dckr_",), r"\bdckr_(?:pat|oat)_[\w-]{20,}"),
    "shopify": (("shp",), r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b"),
    "square": (("EAAA", "sq0"), r"\b(?:EAAA[\w-]{40,}|sq0(?:atp|csp|idp)-[\w-]{22,43})"),
    "facebook": (("EAA",), r"\bEAA[B-Z][A-Za-z0-9]{60,}"),
    "paypal_braintree": (("access_token$",),
                         r"\baccess_token\$(?:production|sandbox)\$[0-9a-z]{16}\$[0-9a-f]{32}\b"),
    "digitalocean": (("_v1_",), r"\bdo[opr]_v1_[a-f0-9]{64}\b"),
    "heroku": (("HRKU-AA",), r"\bHRKU-AA[\w-]{58}"),
    "linear": (("lin_",), r"\blin_(?:api|oauth)_[A-Za-z0-9]{40}\b"),
    "postman": (("PMAK-",), r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b"),
    "vault": (("hvs.", "hvb.", "hvr."), r"\bhv[sbr]\.[\w-]{24,}"),
    "grafana": (("glc_", "glsa_"),
                r"\b(?:glc_[A-Za-z0-9+/]{32,}={0,2}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})"),
    "databricks": (("dapi",), r"\bdapi[a-f0-9]{32}(?:-\d)?\b"),
    "doppler": (("dp.",), r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,}"),
    "pulumi": (("pul-",), r"\bpul-[a-f0-9]{40}\b"),
    "notion": (("ntn_", "secret_"), r"\b(?:ntn_[A-Za-z0-9]{40,}|secret_[A-Za-z0-9]{43})\b"),
    "newrelic": (("NRAK-", "NRII-", "NRJS-"), r"\bNR(?:AK|II|JS)-[A-Za-z0-9]{27,32}\b"),
    "sentry": (("sntr",), r"\bsntr[ysu]_[\w=+/]{40,}"),
    "age": (("AGE-SECRET-KEY-1",), r"\bAGE-SECRET-KEY-1[0-9A-Z]{58}\b"),
    "alibaba": (("LTAI",), r"\bLTAI[A-Za-z0-9]{20}\b"),
    "mapbox": (("sk.eyJ",), r"\bsk\.eyJ[\w-]{20,}\.[\w-]{20,}"),
}
_RUN_TABLE = bytes(int(chr(i).isascii() and (chr(i).isalnum() or chr(i) in "_-")) for i in range(256))
_RUN16, _BEFORE = b"\x01" * 16, 48


def _token_windows(text: str, ascii_text: bytes) -> str:
    """The stretches of text around runs of 16 token characters: every token lies in one.

    One pass in C: the text as ASCII bytes (one per character, so offsets agree) mapped to 1 for a
    token character and 0 otherwise; each run is taken with the 48 characters before it (a prefix
    such as `access_token$production$`), and touching stretches are joined."""
    flags = ascii_text.translate(_RUN_TABLE)
    spans: list[list[int]] = []
    i = flags.find(_RUN16)
    while i >= 0:
        end = flags.find(b"\0", i)
        end = len(flags) if end < 0 else end
        if spans and i - _BEFORE <= spans[-1][1]:
            spans[-1][1] = end + 1
        else:
            spans.append([max(0, i - _BEFORE), end + 1])
        i = flags.find(_RUN16, end)
    return "\n".join(text[s:e] for s, e in spans)


# ---- values behind a name that says secret ----------------------------------------------------
_KEYWORDS = ("pass", "pwd", "secret", "token", "key", "credential", "creds", "auth", "pat")
_STRONG = {"password", "passwd", "pwd", "passphrase", "pass", "passcode", "secret", "secrets",
           "token", "apikey", "credential", "credentials", "creds", "auth", "pat"}
_KEY_QUALIFIERS = {"api", "access", "private", "secret", "auth", "signing", "encryption", "master",
                   "account", "app", "consumer", "client", "license", "service", "shared",
                   "session", "webhook", "deploy", "storage", "sas"}
_NOT_SECRET_SUFFIX = {"file", "files", "path", "dir", "name", "names", "id", "ids", "type",
                      "types", "length", "len", "size", "count", "url", "uri", "endpoint", "env",
                      "var", "field", "prompt", "format", "min", "max", "policy", "expires",
                      "expiry", "expiration", "ttl", "timeout", "header", "prefix", "regex",
                      "pattern", "class", "mode", "enabled", "required", "method", "label", "hint",
                      "strength", "reset", "manager", "provider", "helper", "cache", "source",
                      "limit", "index", "idx", "usage", "kind", "version", "scope", "scopes",
                      "location", "command", "cmd", "argument", "arg", "option", "flag", "store",
                      "fn", "func", "callback", "handler", "parser", "validator", "error", "state",
                      "hdr", "headers"}
_NOT_SECRET_VALUE = {"none", "null", "nil", "true", "false", "yes", "no", "on", "off", "required",
                     "optional", "string", "str", "int", "bool", "bytes", "text", "hidden",
                     "default", "basic", "bearer", "digest", "oauth", "oauth2", "token",
                     "password", "secret", "undefined", "self", "this", "object", "any",
                     "example", "redacted", "masked", "env", "file", "prompt", "value",
                     "pass", "passwd", "pwd", "pw", "changeit", "mypassword", "yourpassword"}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# a value: quoted (anything but quotes and blanks), or bare (stops at code and list punctuation,
# and at `&` only before the next `name=` of a query string)
_VALUE = (r"""(?:(?P<q>\\*["'`])(?P<v>[^\s"'`\\]++)"""
          r"""|(?P<v2>(?:[^\s"'`\\,;<>(){}\[\]|&]|&(?!\w+=))++))""")
_ASSIGN = re.compile(r"(?i)(?:pass|pwd|secret|token|key|credential|creds|auth|pat)[\w.-]*+"
                     r"(?P<nq>\\*[\"'])?[ \t]*+(?P<op>:=|=>|[:=])[ \t]*+" + _VALUE)
_FLAG = re.compile(r"--[\w-]*?(?i:pass|pwd|secret|token|key|credential|auth)[\w-]*[ \t]++" + _VALUE)
_PATH = re.compile(r"(?:~|\.{1,2})?/[\w.@-]+/[\w.@/-]*")  # a path, not base64 (no + or =)
_CODE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")  # `module.attr`
_WORDS = re.compile(r"[A-Za-z][a-z]*(?:[-_.][A-Za-z][a-z]*)+")
_NUMBERS = re.compile(r"\d+(?:\.\d+)+")  # a version or an OID
_KEYISH, _HEX = re.compile(r"[\w+/=.~-]+"), re.compile(r"[0-9a-f]+|[0-9A-F]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _name_words(name: str) -> list[str]:
    return [w for w in re.split(r"[_.\-]+", _CAMEL.sub("_", name).lower()) if w]


@functools.lru_cache(maxsize=4096)
def _name_strength(name: str) -> str | None:
    """'strong' (the name says secret), 'key' (it ends in key: the value must look random), None."""
    words = _name_words(name)
    if not words or words[-1] in _NOT_SECRET_SUFFIX:
        return None
    if any(w in _STRONG for w in words) or any(
            w in ("key", "keys") and i and words[i - 1] in _KEY_QUALIFIERS for i, w in enumerate(words)):
        return "strong"
    return "key" if words[-1].endswith(("key", "keys")) else None


def _looks_random(v: str) -> bool:
    """Key material: 16+ token characters of high entropy mixing cases and digits (or hex)."""
    n = len(v)
    if n < 16 or not _KEYISH.fullmatch(v):
        return False
    mixed = any(c.isupper() for c in v) and any(c.islower() for c in v) and any(c.isdigit() for c in v)
    hexish = _HEX.fullmatch(v) and any(c.isdigit() for c in v) and any(c.isalpha() for c in v)
    return bool(mixed or hexish) and -sum(c / n * math.log2(c / n) for c in Counter(v).values()) >= 3.0


def _is_secret_value(v: str, name: str, strength: str, quoted: bool, env_style: bool) -> bool:
    low = v.lower()
    if (len(v) < 4 or v[0] in "<$%{(" or "://" in v or low in _NOT_SECRET_VALUE
            or low in _name_words(name) or low == name.lower() or set(low) <= set("*x.")
            or _PATH.fullmatch(v) or (not quoted and _CODE.fullmatch(v)) or _NUMBERS.fullmatch(v)):
        return False
    if strength == "key":
        return _looks_random(v)
    if re.fullmatch(r"[A-Z][A-Z_\-\u2010]*", v) or (v.isdigit() and len(v) < 6):
        return False  # a metavar (--password=PASSWORD), a count or a port
    if quoted and _WORDS.fullmatch(v):
        return False  # `"Proxy-Authorization"`, `"refresh_token"`: a name, not a secret
    if re.fullmatch(r"[A-Za-z_.]+", v):  # a bare word or identifier is code, unless env-style
        return quoted or env_style
    return True


def _value_span(m: re.Match) -> tuple[int, int]:
    return m.span("v") if m.group("v") is not None else m.span("v2")


def _secret_assignment(m: re.Match, start: int) -> str | None:
    text, (s, e) = m.string, _value_span(m)
    name = text[start:m.start("nq") if m.group("nq") else m.start("op")].rstrip()
    strength = _name_strength(name.lstrip("-."))
    q, after = m.group("q"), text[e:e + 40]
    if strength is None:
        return None
    if q and not after.startswith(q):
        return None  # a quoted value with blanks in it: prose, not a literal
    if not q and re.match(r"[ \t]*(?:[:=(\[]|=>)", after):
        return None  # `A=b_secret = v`: this value is the next name; or a call or an index
    env_style = (m.group("op") == "=" and not q and name.isupper()
                 and text[m.start("op") - 1] not in " \t" and m.end("op") == s)
    if not _is_secret_value(text[s:e], name, strength, bool(q), env_style):
        return None
    return text[start:s] + "<SECRET>" + text[e:m.end()]


def _flag(m: re.Match, start: int) -> str | None:
    name, (s, e) = m.group(0).split()[0].lstrip("-"), _value_span(m)
    v = m.string[s:e]
    strength = _name_strength(name)
    if (start and m.string[start - 1] not in " \t\n\"'=") or strength is None or v.startswith("-") \
            or not _is_secret_value(v, name, strength, bool(m.group("q")), False):
        return None
    return m.string[start:s] + "<SECRET>" + m.string[e:m.end()]


def _swap_value(m: re.Match, start: int, placeholder: str) -> str | None:
    """The match with only its value (group `v`, or `v2`) replaced: the name, user or host stays."""
    s, e = _value_span(m)
    if m.string.startswith("<", s) or m.string[s:e].lower() in _NOT_SECRET_VALUE:
        return None  # already redacted, or a documentation placeholder (`user:password@`)
    return m.string[start:s] + placeholder + m.string[e:m.end()]


def _keep_head(placeholder: str) -> Callable[[re.Match, int], str | None]:
    return lambda m, start: _swap_value(m, start, placeholder)


def _authorization(m: re.Match, start: int) -> str | None:
    """After `Authorization:` and a scheme word (Basic, Bearer, ...) any value is a credential;
    otherwise (no scheme, or a bare `bearer` in text) it must look like a token."""
    v = m.group("v")
    header = m.group(0)[:1] in "aA"
    if not (header and m.group("scheme")) and not (
            len(v) >= 16 and any(c.isdigit() for c in v) and not _CODE.fullmatch(v)):
        return None
    return _swap_value(m, start, "<TOKEN>")


# ---- personal data ----------------------------------------------------------------------------
_RESERVED_DOMAIN = re.compile(r"(?:^|\.)(?:example\.(?:com|net|org)|example|test|invalid|localhost)$",
                              re.I)
_ROLE_MAILBOX = {"team", "maintainers", "devel", "list", "lists", "discuss", "announce", "users",
                 "bug", "bugs", "security", "support", "info", "noreply", "reply", "postmaster", "abuse",
                 "webmaster", "hostmaster", "help", "root", "admin", "git"}
_USERINFO = re.compile(r"://[^\s/@]*$")
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_PUBLIC_RESOLVERS = {"8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112",
                     "208.67.222.222", "208.67.220.220", "2001:4860:4860::8888",
                     "2001:4860:4860::8844", "2606:4700:4700::1111", "2606:4700:4700::1001"}
_DIGITS = frozenset("0123456789")
_VERSION = re.compile(r"(?i)(?:\b(?:version|ver|release|v|sections?|chapter|rfc|specs?)[ :=\"'(]*|§ ?)$")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _email(m: re.Match, start: int) -> str | None:
    local, domain = m.string[start:m.start()], m.group(0)[1:]
    if not local.strip(".") or _USERINFO.search(m.string, max(0, start - 64), start):
        return None  # `https://user:pw@host`: a URL's user, whose password url_password took
    if _RESERVED_DOMAIN.search(domain) or domain.lower().startswith("lists.") \
            or _ROLE_MAILBOX & set(re.split(r"[.+_-]", local.lower())):
        return None  # an example, a mailing list or a role, not a person
    return "<EMAIL>"


def _standalone(m: re.Match, start: int, before: frozenset | str, after: frozenset | str) -> bool:
    """Not part of a longer word, number or version (`1.2.3.4.5`)."""
    text, e = m.string, m.end()
    return not (start and text[start - 1] in before) and not (e < len(text) and text[e] in after) \
        and not (text.startswith(".", e) and text[e + 1:e + 2].isdigit())


def _phone(m: re.Match, start: int) -> str | None:
    digits = sum(c.isdigit() for c in m.group(0))
    if not 10 <= digits <= 15 or not _standalone(m, start, _WORD | set("+-./"), _WORD | set("-/")):
        return None
    return "<PHONE>"


def _ip(m: re.Match, start: int) -> str | None:
    addr = m.string[start:m.end()]
    colon = ":" if addr.endswith(":") and not addr.endswith("::") else ""  # `from 2a02::1: icmp`
    if not _standalone(m, start, _WORD | set(".:-"), _WORD | set("-+~")) or \
            _VERSION.search(m.string, max(0, start - 12), start):
        return None
    try:
        ip = ipaddress.ip_address(addr[:len(addr) - len(colon)])
    except ValueError:
        return None
    if not ip.is_global or ip.is_multicast or str(ip) in _PUBLIC_RESOLVERS:
        return None
    return "<IP_ADDRESS>" + colon


# ---- the rules, in order ---------------------------------------------------------------------
Repl = str | Callable[[re.Match, int], "str | None"]


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern
    repl: Repl                     # a callable gets the match and where it starts (see `left`)
    needles: tuple[str, ...] = ()  # runs only if one of these is in the text ...
    lower: bool = False            # ... in the lower-cased text (as ASCII bytes)
    gate: Callable[[str], object] | None = None  # ... and this says yes (given the text)
    left: frozenset = frozenset()  # the match starts earlier, over these characters
    anchors: bool = False          # tried only where a lower-cased needle starts (a keyword)

    def __post_init__(self):
        object.__setattr__(self, "bytes_needles", tuple(n.encode() for n in self.needles))


# provider tokens: a rule runs where its prefix (or, without one, its pattern) is in the windows
_TOKEN_RULES = tuple(_Rule(kind, re.compile(rx), "<API_KEY>", needles)
                     for kind, (needles, rx) in _TOKENS.items())
_RULES: list[_Rule | tuple[_Rule, ...]] = [
    # first: key blocks and URL credentials, whose bodies would match later rules
    _Rule("private_key", re.compile(
        r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----.*?"
        r"(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\Z)", re.S), "<PRIVATE_KEY>",
        ("-----BEGIN",)),
    _Rule("jwt", re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}|eyJ[\w-]{16,}\.[\w-]{16,}\.[\w-]{16,}"),
          "<TOKEN>", ("eyJ",)),
    # scheme://user:password@host keeps the user and host, drops the password
    _Rule("url_password", re.compile(r"://[^\s:/@\"'<>\[\]]*:(?P<v>[^\s/?#\"'<>\[\]]+)(?=@[^\s@/\"'<>]+)"),
          _keep_head("<PASSWORD>"), ("://",)),
    _Rule("webhook_url", re.compile(
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<v>[\w/-]{20,})"
        r"|discord(?:app)?\.com/api/webhooks/(?P<v2>\d+/[\w-]{20,})"), _keep_head("<SECRET>"),
        ("hooks.slack.com", "/api/webhooks/")),
    _TOKEN_RULES,
    _Rule("azure_client_secret", re.compile(r"(?<![\w~.-])[\w~.]{3}\dQ~[\w~.-]{31,34}(?![\w~.-])"),
          "<API_KEY>", ("Q~",)),
    # also caught as an assignment, but not in the space-separated `aws configure set` form
    _Rule("aws_secret_access_key", re.compile(
        r"(?i)(?:aws[\w.-]{0,20}secret|secret[_.-]?access)[\w.-]{0,20}(?:\\*[\"'])?[ \t]*"
        r"(?:[:=]|=>)?[ \t]*(?:\\*[\"'])?(?P<v>(?-i:[A-Za-z0-9/+]{40}))(?![A-Za-z0-9/+=])"),
        _keep_head("<SECRET>"), ("aws", "secret"), lower=True, anchors=True),
    _Rule("azure_storage_key", re.compile(
        r"(?i)(?:AccountKey|SharedAccessKey)=(?P<v>[A-Za-z0-9+/]{20,}={0,2})|sig=(?P<v2>[\w%+/=-]{20,})"),
        _keep_head("<SECRET>"), ("accountkey=", "sharedaccesskey=", "sig="), lower=True, anchors=True),
    _Rule("netrc", re.compile(r"machine\s+\S+\s+(?:login\s+\S+\s+)?password\s+(?P<v>\S+)"),
          _keep_head("<PASSWORD>"), ("password",)),
    _Rule("curl_user", re.compile(r"curl\b[^\n]*?\s(?:-u|--user)\s*[\"']?[^\s:\"']+:(?P<v>[^\s\"'@\\]+)"),
          _keep_head("<PASSWORD>"), ("curl",)),
    _Rule("mysql_password", re.compile(r"mysql\w*\b[^\n]*?\s-p(?P<v>[^\s\"'\\]+)"),
          _keep_head("<PASSWORD>"), ("mysql",)),
    _Rule("authorization", re.compile(
        r"(?i)(?:authorization[\"']?\s*[:=]\s*[\"']?|(?=bearer\s))(?P<scheme>(?:basic|bearer|token|bot|"
        r"ssws|apikey|api-key|key|sso-key|negotiate)\s+)?(?P<v>(?!<)[\w.~+/=:-]{8,})"),
        _authorization, ("authorization", "bearer"), lower=True, anchors=True),
    _Rule("secret_assignment", _ASSIGN, _secret_assignment, _KEYWORDS, lower=True,
          left=_NAME_CHARS, anchors=True),
    _Rule("secret_flag", _FLAG, _flag, ("--",)),
    _Rule("email", re.compile(r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), _email, ("@",),
          left=_LOCAL_CHARS),
    # +CC: 1 (NANP, then an area code) or a code of 1-3 digits that starts with 2-9
    _Rule("phone", re.compile(r"\+(?:1[ .-]?\(?[2-9]\d\d\)?|[2-9]\d{0,2})(?:[ .-]?\(?\d{1,4}\)?){1,6}"),
          _phone, ("+",)),
    _Rule("phone", re.compile(r"(?:1[ .-])?(?:\d{3}[.-]|\(\d{3}\)[ .-]?)\d{3}[.-]\d{4}"), _phone,
          gate=re.compile(r"[.-]\d{4}").search),
    _Rule("ip_address", re.compile(r"\.\d{1,3}\.\d{1,3}\.\d{1,3}"), _ip, (".",), left=_DIGITS),
    _Rule("ip_address", re.compile(r"[23][0-9a-fA-F]{3}:[0-9a-fA-F:]{2,35}"), _ip,
          gate=lambda text: "::" in text or text.count(":") >= 7),
]


def _matches(rule: _Rule, text: str, lowered: bytes):
    if not rule.anchors:
        yield from rule.pattern.finditer(text)
        return
    starts = sorted({i for n in rule.bytes_needles for i in _find_all(lowered, n)})
    for i in starts:
        m = rule.pattern.match(text, i)
        if m:
            yield m


def _find_all(s: bytes, sub: bytes):
    i = s.find(sub)
    while i >= 0:
        yield i
        i = s.find(sub, i + 1)


def _apply(rule: _Rule, text: str, lowered: bytes, counts: Counter | None) -> str:
    out, last = [], 0
    for m in _matches(rule, text, lowered):
        start = m.start()
        while start > last and text[start - 1] in rule.left:
            start -= 1
        if start < last:
            continue  # overlaps what the previous match replaced
        new = m.expand(rule.repl) if isinstance(rule.repl, str) else rule.repl(m, start)
        if new is None:
            continue
        out += [text[last:start], new]
        last = m.end()
        if counts is not None:
            counts[rule.kind] += 1
    return "".join(out) + text[last:] if out else text


def _may_run(rule: _Rule, text: str, lowered: bytes) -> bool:
    """The cheap test of whether a rule can match: a needle in the text (or in the lower-cased
    text), and the rule's gate."""
    if rule.needles and not (any(n in lowered for n in rule.bytes_needles) if rule.lower
                             else any(n in text for n in rule.needles)):
        return False
    return rule.gate is None or bool(rule.gate(text))


_TOKEN_NEEDLES = sorted({n for r in _TOKEN_RULES for n in r.needles})
_NEEDLES = sorted({n for r in _RULES if r is not _TOKEN_RULES and not r.lower for n in r.needles})
_LOWER_NEEDLES = sorted({n for r in _RULES if r is not _TOKEN_RULES and r.lower for n in r.bytes_needles})


def _rules_for(text: str) -> list[_Rule | tuple[_Rule, ...]]:
    """The rules whose cheap test (_may_run) passes on `text`, in order, each distinct needle
    looked for once; the provider tokens when `text` has a run of 16 token characters (else
    redact_text finds no window to look in). On texts joined by newlines it is a superset of
    what passes on each of them, at any point of its redaction: no needle, gate or run spans a
    newline, and a placeholder (bracketed by `<>`) makes none pass where none did. A
    lower-cased placeholder can hold a keyword of an anchored rule (`<api_key>`), but the rule
    never matches there (a `>` ends the name)."""
    ascii_text = text.encode("ascii", "replace")
    lowered = ascii_text.lower()
    found = {n for n in _NEEDLES if n in text}
    found.update(n for n in _LOWER_NEEDLES if n in lowered)
    rules: list[_Rule | tuple[_Rule, ...]] = []
    for rule in _RULES:
        if rule is _TOKEN_RULES:
            if _RUN16 in ascii_text.translate(_RUN_TABLE):
                rules.append(rule)
        elif (not rule.needles or not found.isdisjoint(rule.bytes_needles if rule.lower else rule.needles)) \
                and (rule.gate is None or rule.gate(text)):
            rules.append(rule)
    return rules


def redact_text(text: str, counts: Counter | None = None,
                rules: list[_Rule | tuple[_Rule, ...]] = _RULES) -> str:
    """`text` with every secret and personal datum a placeholder; `rules` may leave out rules
    whose cheap test fails on it (_rules_for)."""
    # One byte per character (non-ASCII as `?`), so offsets agree with the text's: lower-casing
    # bytes is fast, and it never changes the length as str.lower() can. Needles may look at an
    # older text (placeholders add none that matter); anchors need the current one.
    original = source = text
    ascii_text = text.encode("ascii", "replace")
    lowered = ascii_text.lower()
    for rule in rules:
        if isinstance(rule, tuple):  # the provider tokens
            if text is not original:
                ascii_text = text.encode("ascii", "replace")
            windows = _token_windows(text, ascii_text)
            if windows:
                found = {n for n in _TOKEN_NEEDLES if n in windows}
                for token in rule:
                    if not found.isdisjoint(token.needles) if token.needles else token.pattern.search(windows):
                        text = _apply(token, text, lowered, counts)
            continue
        if not _may_run(rule, text, lowered):
            continue
        if rule.anchors and source is not text:
            source, lowered = text, text.encode("ascii", "replace").lower()
        text = _apply(rule, text, lowered, counts)
    return text


def redact_texts(texts: list[str], counts: Counter | None = None) -> list[str]:
    """redact_text of each text, testing the rules' needles once over all of them: a rule whose
    needles none of them holds is not tried on each."""
    rules = _rules_for("\n".join(texts))
    if not rules:
        return list(texts)
    return [redact_text(text, counts, rules) for text in texts]


def redact_trajectory(traj: Trajectory, counts: Counter | None = None) -> Trajectory:
    """A copy with every free-text field redacted (tool definitions are schema, left as is)."""
    texts = redact_texts([traj.task, traj.initial_observation]
                         + [text for s in traj.steps for text in (s.action, s.observation)], counts)
    return replace(traj, task=texts[0], initial_observation=texts[1],
                   steps=[Step(texts[i], texts[i + 1]) for i in range(2, len(texts), 2)])
