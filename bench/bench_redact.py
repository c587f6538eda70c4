"""Recall, false positives and speed of redaction (`data_pipeline/curate/redact.py`).

    python bench/bench_redact.py                                     # committed clean sample
    python bench/bench_redact.py --clean runs/x/collect/trajectories.jsonl --out redact.json

Planted: every kind in KINDS (secrets of ~50 documented formats and personal data) rendered in
every context that fits it (plain and `export` assignment, JSON, YAML, nested `A=b_key = v`,
a terminal screen, a terminal action, Python code, a URL, an HTTP header, bare command output).
Values are drawn with a seeded random from each format's documented alphabet and length: none is
a real key. An item is recalled when no run of 10 characters of any of its secret parts (the
random part, not a documented prefix such as `ghp_`) is left in the redacted text.
Clean: actions and observations of real collected trajectories; the false-positive rate is the
share of them that redaction changes at all. Real collected turns are not all clean, though: the
search domain shows Debian package metadata, whose Maintainer lines hold real people's addresses.
A changed turn whose every change removed an address on a `Maintainer:`/`Author:` line is
counted as personal data found (reported, and out of the false-positive denominator); any other
change is a false positive. Throughput: MB/s of `redact_text` over the clean turns.
Goals (tests/test_redact.py asserts them): recall >= 99%, false positives <= 0.1% of clean turns.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import string
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.curate.redact import redact_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLEAN_FIXTURES = [ROOT / "tests/data/redact_clean_trajectories.jsonl",
                  ROOT / "tests/data/terminal_trajectories.jsonl"]
RECALL_GOAL, FP_GOAL = 0.99, 0.001
WINDOW = 10  # a surviving run this long of a secret counts as a leak

UP, LOW, DIG = string.ascii_uppercase, string.ascii_lowercase, string.digits
ALNUM, HEX = UP + LOW + DIG, "0123456789abcdef"
B64, B64URL, B32 = ALNUM + "+/", ALNUM + "-_", UP + "234567"

# ---- contexts: how a value sits in text -------------------------------------------------------

CONTEXTS: dict[str, Callable[[str, str], str]] = {
    "assign": lambda var, v: f"{var}={v}",
    "export": lambda var, v: f'export {var}="{v}"',
    "json": lambda var, v: json.dumps({"service": "billing", var.lower(): v, "retries": 3}, indent=2),
    "yaml": lambda var, v: f"service: billing\ncredentials:\n  {var.lower()}: {v}\n  region: eu-west-1\n",
    "nested": lambda var, v: f"SETTING={var.lower()} = {v}",
    "terminal": lambda var, v: (f"user@sandbox:~/app$ cat .env\nDEBUG=false\n{var}={v}\nPORT=8080\n"
                                "user@sandbox:~/app$ "),
    "action": lambda var, v: json.dumps([{"keystrokes": f"export {var}='{v}'\n", "duration": 0.1}]),
    "python": lambda var, v: f'client = Client(region="eu-west-1", {var.lower()}="{v}")',
    "url": lambda var, v: f"curl -s 'https://api.service.io/v1/items?{var.lower()}={v}&page=2'",
    "header": lambda var, v: (f"GET /v1/me HTTP/1.1\nHost: api.service.io\nAuthorization: Bearer {v}\n"
                              "Accept: */*"),
    "output": lambda var, v: f"user@sandbox:~$ echo ${var}\n{v}\nuser@sandbox:~$ ",
}
NAMED = ("assign", "export", "json", "yaml", "nested", "terminal", "action", "python", "url")
TOKEN = NAMED + ("header", "output")          # recognisable on its own: also bare and in headers
URLS = ("assign", "export", "json", "yaml", "terminal", "action", "python", "output")
BLOCK = {  # multi-line values (private keys)
    "terminal": lambda var, v: f"user@sandbox:~$ cat ~/.ssh/id_key\n{v}\nuser@sandbox:~$ ",
    "json": lambda var, v: json.dumps({"type": "service_account", var.lower(): v}, indent=2),
    "yaml": lambda var, v: "tls:\n  key: |\n" + "".join(f"    {l}\n" for l in v.splitlines()),
    "action": lambda var, v: json.dumps([{"keystrokes": f"cat > key.pem <<'EOF'\n{v}\nEOF\n",
                                          "duration": 0.1}]),
    "export": lambda var, v: f'export {var}="{v}"',
}
PERSONAL = {
    "prose": lambda var, v: f"Thanks! Reach me at {v} if the deploy fails again.",
    "json": lambda var, v: json.dumps({"name": "Jane Roe", var: v, "active": True}),
    "yaml": lambda var, v: f"owner:\n  name: Jane Roe\n  {var}: {v}\n",
    "csv": lambda var, v: f"id,name,{var},city\n17,Jane Roe,{v},Berlin\n",
    "terminal": lambda var, v: (f"user@sandbox:~$ grep -r Roe contacts/\ncontacts/jane.txt:{var}: {v}\n"
                                "user@sandbox:~$ "),
    "action": lambda var, v: json.dumps([{"keystrokes": f"echo '{v}' >> contacts.txt\n", "duration": 0.1}]),
}
NETWORK = {
    "ping": lambda var, v: (f"user@sandbox:~$ ping -c1 {v}\nPING {v} ({v}) 56(84) bytes of data.\n"
                            f"64 bytes from {v}: icmp_seq=1 ttl=54 time=11.2 ms\nuser@sandbox:~$ "),
    "log": lambda var, v: f'{v} - - [02/Dec/2026:10:14:03 +0000] "GET /login HTTP/1.1" 200 512 "-" "-"',
    "json": lambda var, v: json.dumps({"event": "login", "client_ip": v, "ok": True}),
    "action": lambda var, v: json.dumps([{"keystrokes": f"ssh deploy@{v}\n", "duration": 0.5}]),
    "url": lambda var, v: f"curl http://{v}:8080/health" if "." in v else f"curl http://[{v}]:8080/health",
    "yaml": lambda var, v: f"server:\n  {var}: {v}\n  port: 22\n",
}


@dataclass(frozen=True)
class Kind:
    name: str
    var: str                                   # the name it is usually stored under
    make: Callable[[random.Random], tuple[str, list[str]]]  # -> (value as written, secret parts)
    contexts: tuple[str, ...] | dict = TOKEN
    extra: dict = field(default_factory=dict)  # kind-specific contexts


def _s(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def prefixed(prefix: str, *parts: tuple[str, int], sep: str = "") -> Callable:
    """A token of a documented prefix and random parts; the random parts are the secret."""
    def make(rng):
        body = [_s(rng, a, n) for a, n in parts]
        return prefix + sep.join(body), [b for b in body if len(b) >= 8]
    return make


def plain(alphabet: str, n: int) -> Callable:
    return lambda rng: (lambda v: (v, [v]))(_s(rng, alphabet, n))


def _pem(label: str, lines: int = 12) -> Callable:
    def make(rng):
        body = [_s(rng, B64, 64) for _ in range(lines)] + [_s(rng, B64, 20) + "=="]
        end = "BLOCK" if label == "PGP" else ""
        head = f"{label} PRIVATE KEY {end}".replace("  ", " ").strip()
        return f"-----BEGIN {head}-----\n" + "\n".join(body) + f"\n-----END {head}-----", body
    return make


def _url(scheme: str, user: str, host: str) -> Callable:
    def make(rng):
        pw = _s(rng, ALNUM + "-_.~", 18)
        return f"{scheme}://{user}:{pw}@{host}", [pw]
    return make


def _jwt(rng):
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    payload, sig = enc({"sub": _s(rng, DIG, 9), "name": "svc", "iat": 1764633600}), _s(rng, B64URL, 43)
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{payload}.{sig}", [payload, sig]


def _discord_bot(rng):
    uid = base64.b64encode(_s(rng, "123456789", 18).encode()).decode().rstrip("=")
    mid, sig = _s(rng, B64URL, 6), _s(rng, B64URL, 38)
    return f"{uid}.{mid}.{sig}", [uid, sig]


def _gcp_json(rng):
    key, body = _pem("")(rng)
    kid = _s(rng, HEX, 40)
    doc = {"type": "service_account", "project_id": "billing-prod", "private_key_id": kid,
           "private_key": key + "\n", "client_email": "sync@billing-prod.iam.gserviceaccount.com"}
    return json.dumps(doc, indent=2), body  # the key id names the key, it grants nothing


def _azure_conn(rng):
    key = _s(rng, B64, 86) + "=="
    return (f"DefaultEndpointsProtocol=https;AccountName=billingstore;AccountKey={key};"
            "EndpointSuffix=core.windows.net"), [key]


def _azure_client_secret(rng):
    tail = _s(rng, ALNUM + "~.-_", 34)
    return _s(rng, ALNUM, 3) + _s(rng, DIG, 1) + "Q~" + tail, [tail]


def _basic(rng):
    cred = base64.b64encode(f"deploy:{_s(rng, ALNUM, 14)}".encode()).decode()
    return cred, [cred]


def _uuid(rng):
    h = _s(rng, HEX, 32)
    v = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return v, [v]


def _password(rng):
    v = _s(rng, ALNUM, 6) + rng.choice("!@#%^*-_+=") + _s(rng, ALNUM, 7)
    return v, [v]


def _django(rng):
    v = "django-insecure-" + _s(rng, LOW + DIG + "!@#$%^&*(-_=+)", 50)
    return v, [v[16:]]


def _email(rng):
    v = f"{rng.choice(['jane', 'omar', 'li', 'ana'])}.{_s(rng, LOW, 6)}{_s(rng, DIG, 2)}@" \
        f"{rng.choice(['gmail.com', 'proton.me', 'mailbox.org', 'corp-mail.de'])}"
    return v, [v]


def _phone_intl(rng):
    cc, groups = rng.choice([("+44", (2, 4, 4)), ("+49", (3, 4, 4)), ("+33", (1, 2, 2, 2, 2)),
                             ("+1", (3, 3, 4)), ("+91", (5, 5)), ("+81", (2, 4, 4))])
    sep = rng.choice([" ", "-", ""])
    v = cc + " " + sep.join(_s(rng, "123456789", 1) + _s(rng, DIG, n - 1) for n in groups)
    return v, [v]


def _phone_us(rng):
    a, b = (_s(rng, "23456789", 1) + _s(rng, DIG, 2) for _ in range(2))
    c = _s(rng, DIG, 4)
    v = rng.choice([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"1-{a}-{b}-{c}"])
    return v, [v]


def _ipv4(rng):
    import ipaddress
    while True:
        v = ".".join(str(rng.randint(1, 223)) for _ in range(4))
        if ipaddress.ip_address(v).is_global and v not in ("8.8.8.8", "1.1.1.1", "9.9.9.9"):
            return v, [v]


def _ipv6(rng):
    groups = [rng.choice(["2a01", "2a02", "2600", "2607", "2804", "2c0f"])] + \
        [format(rng.randint(1, 0xffff), "x") for _ in range(7)]
    v = ":".join(groups[:4]) + "::" + ":".join(groups[5:]) if rng.random() < 0.5 else ":".join(groups)
    return v, [v]


KINDS: list[Kind] = [
    Kind("aws_access_key_id", "AWS_ACCESS_KEY_ID", prefixed("AKIA", (B32, 16))),
    Kind("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", plain(B64, 40), NAMED,
         {"aws_configure": lambda var, v: f"user@sandbox:~$ aws configure set aws_secret_access_key {v}\n",
          "credentials_file": lambda var, v: f"[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
                                             f"aws_secret_access_key = {v}\n",
          "sts_json": lambda var, v: json.dumps({"Credentials": {"AccessKeyId": "ASIAXAMPLE",
                                                                 "SecretAccessKey": v}}, indent=4)}),
    Kind("gcp_service_account_key", "GOOGLE_CREDENTIALS", _gcp_json, ("assign",),
         {"file": lambda var, v: f"user@sandbox:~$ cat sa.json\n{v}\nuser@sandbox:~$ ",
          "action": lambda var, v: json.dumps([{"keystrokes": f"cat > sa.json <<'EOF'\n{v}\nEOF\n",
                                                "duration": 0.1}])}),
    Kind("google_api_key", "GOOGLE_API_KEY", prefixed("AIza", (B64URL, 35))),
    Kind("google_oauth_client_secret", "GOOGLE_CLIENT_SECRET", prefixed("GOCSPX-", (B64URL, 28))),
    Kind("azure_storage_connection_string", "AZURE_STORAGE_CONNECTION_STRING", _azure_conn,
         ("assign", "export", "json", "yaml", "terminal", "action", "python", "output")),
    Kind("azure_client_secret", "AZURE_CLIENT_SECRET", _azure_client_secret),
    Kind("github_pat_classic", "GITHUB_TOKEN", prefixed("ghp_", (ALNUM, 36))),
    Kind("github_oauth", "GH_OAUTH_TOKEN", prefixed("gho_", (ALNUM, 36))),
    Kind("github_user_to_server", "GH_USER_TOKEN", prefixed("ghu_", (ALNUM, 36))),
    Kind("github_app_installation", "GH_APP_TOKEN", prefixed("ghs_", (ALNUM, 36))),
    Kind("github_refresh", "GH_REFRESH_TOKEN", prefixed("ghr_", (ALNUM, 36))),
    Kind("github_fine_grained_pat", "GITHUB_PAT", prefixed("github_pat_", (ALNUM, 22), (ALNUM, 59), sep="_")),
    Kind("gitlab_pat", "GITLAB_TOKEN", prefixed("glpat-", (B64URL, 20))),
    Kind("bitbucket_app_password", "BITBUCKET_APP_PASSWORD", prefixed("ATBB", (ALNUM, 32))),
    Kind("atlassian_api_token", "JIRA_API_TOKEN", prefixed("ATATT3", (B64URL + "=", 186))),
    Kind("slack_bot_token", "SLACK_BOT_TOKEN", prefixed("xoxb-", (DIG, 12), (DIG, 13), (ALNUM, 24), sep="-")),
    Kind("slack_user_token", "SLACK_USER_TOKEN",
         prefixed("xoxp-", (DIG, 12), (DIG, 12), (DIG, 13), (HEX, 32), sep="-")),
    Kind("slack_webhook", "SLACK_WEBHOOK_URL", lambda rng: (lambda t, b, s: (
        f"https://hooks.slack.com/services/T{t}/B{b}/{s}", [s, b]))(
        _s(rng, UP + DIG, 8), _s(rng, UP + DIG, 10), _s(rng, ALNUM, 24)), URLS),
    Kind("discord_bot_token", "DISCORD_BOT_TOKEN", _discord_bot),
    Kind("discord_webhook", "DISCORD_WEBHOOK_URL", lambda rng: (lambda i, s: (
        f"https://discord.com/api/webhooks/{i}/{s}", [s]))(_s(rng, DIG, 18), _s(rng, B64URL, 68)), URLS),
    Kind("telegram_bot_token", "TELEGRAM_BOT_TOKEN", lambda rng: (lambda i, s: (f"{i}:AA{s}", [s]))(
        _s(rng, DIG, 10), _s(rng, B64URL, 33))),
    Kind("twilio_api_key", "TWILIO_API_KEY", prefixed("SK", (HEX, 32))),
    Kind("twilio_auth_token", "TWILIO_AUTH_TOKEN", plain(HEX, 32), NAMED),
    Kind("sendgrid", "SENDGRID_API_KEY", prefixed("SG.", (B64URL, 22), (B64URL, 43), sep=".")),
    Kind("mailgun", "MAILGUN_API_KEY", prefixed("key-", (HEX, 32))),
    Kind("stripe_live_secret", "STRIPE_SECRET_KEY", prefixed("sk_live_", (ALNUM, 24))),
    Kind("stripe_restricted", "STRIPE_RESTRICTED_KEY", prefixed("rk_live_", (ALNUM, 24))),
    Kind("stripe_test_secret", "STRIPE_TEST_KEY", prefixed("sk_test_", (ALNUM, 24))),
    Kind("openai_project", "OPENAI_API_KEY", prefixed("sk-proj-", (B64URL, 64))),
    Kind("openai_legacy", "OPENAI_KEY", prefixed("sk-", (ALNUM, 20), (ALNUM, 20), sep="T3BlbkFJ")),
    Kind("anthropic", "ANTHROPIC_API_KEY", prefixed("sk-ant-api03-", (B64URL, 93), (UP, 2))),
    Kind("huggingface", "HF_TOKEN", prefixed("hf_", (ALNUM, 34))),
    Kind("npm", "NPM_TOKEN", prefixed("npm_", (ALNUM, 36))),
    Kind("pypi", "PYPI_TOKEN", prefixed("pypi-AgEIcHlwaS5vcmc", (B64URL, 70))),
    Kind("docker_hub_pat", "DOCKERHUB_TOKEN", prefixed("dckr_pat_", (B64URL, 27))),
    Kind("shopify", "SHOPIFY_ACCESS_TOKEN", prefixed("shpat_", (HEX, 32))),
    Kind("square_access_token", "SQUARE_ACCESS_TOKEN", prefixed("EAAA", (B64URL, 60))),
    Kind("square_oauth_secret", "SQUARE_APP_SECRET", prefixed("sq0csp-", (B64URL, 43))),
    Kind("paypal_braintree", "BRAINTREE_ACCESS_TOKEN", lambda rng: (lambda a, b: (
        f"access_token$production${a}${b}", [a, b]))(_s(rng, LOW + DIG, 16), _s(rng, HEX, 32))),
    Kind("digitalocean", "DIGITALOCEAN_TOKEN", prefixed("dop_v1_", (HEX, 64))),
    Kind("heroku_api_key", "HEROKU_API_KEY", _uuid, NAMED),
    Kind("heroku_hrku", "HEROKU_TOKEN", prefixed("HRKU-AA", (B64URL, 58))),
    Kind("vault", "VAULT_TOKEN", prefixed("hvs.", (B64URL, 90))),
    Kind("linear", "LINEAR_API_KEY", prefixed("lin_api_", (ALNUM, 40))),
    Kind("jwt", "ID_TOKEN", _jwt),
    Kind("rsa_private_key", "RSA_KEY", _pem("RSA"), BLOCK),
    Kind("openssh_private_key", "SSH_KEY", _pem("OPENSSH"), BLOCK),
    Kind("ec_private_key", "EC_KEY", _pem("EC", 4), BLOCK),
    Kind("pgp_private_key", "PGP_KEY", _pem("PGP"), BLOCK),
    Kind("postgres_url", "DATABASE_URL", _url("postgresql", "app", "db.internal:5432/app"), URLS),
    Kind("mysql_url", "MYSQL_URL", _url("mysql", "root", "10.0.3.7:3306/shop"), URLS),
    Kind("mongodb_srv_url", "MONGO_URI", _url("mongodb+srv", "svc", "c0.x1y2z.mongodb.net/prod"), URLS),
    Kind("redis_url", "REDIS_URL", _url("redis", "", "cache.internal:6379/0"), URLS),
    Kind("amqp_url", "BROKER_URL", _url("amqp", "worker", "mq.internal:5672/%2F"), URLS),
    Kind("basic_auth_url", "REPO_URL", _url("https", "deploy", "git.corp.io/infra.git"), URLS),
    Kind("basic_auth_header", "AUTH", _basic, (),
         {"header": lambda var, v: f"GET / HTTP/1.1\nHost: intranet\nAuthorization: Basic {v}\n",
          "curl": lambda var, v: f"curl -H 'Authorization: Basic {v}' https://intranet/api",
          "json": lambda var, v: json.dumps({"headers": {"Authorization": f"Basic {v}"}}),
          "python": lambda var, v: f'requests.get(url, headers={{"Authorization": "Basic {v}"}})'}),
    Kind("bearer_token", "ACCESS_TOKEN", plain(ALNUM, 32), NAMED + ("header",),
         {"curl": lambda var, v: f'curl -H "Authorization: Bearer {v}" https://api.service.io/v1/me',
          "python": lambda var, v: f'headers = {{"Authorization": f"Bearer {v}"}}'}),
    Kind("generic_password", "DB_PASSWORD", _password, NAMED,
         {"flag": lambda var, v: f"user@sandbox:~$ psql --host db --username app --password {v}\n",
          "flag_eq": lambda var, v: json.dumps([{"keystrokes": f"mysqldump --password={v} shop\n",
                                                 "duration": 0.1}]),
          "netrc": lambda var, v: f"machine api.heroku.com\n  login me@corp.io\n  password {v}\n",
          "mysql_p": lambda var, v: f"user@sandbox:~$ mysql -u root -p{v} shop\n",
          "curl_u": lambda var, v: f"curl -u deploy:{v} https://intranet/api"}),
    Kind("generic_api_key", "API_KEY", plain(ALNUM, 32), NAMED,
         {"header": lambda var, v: f"GET /v2/data HTTP/1.1\nX-Api-Key: {v}\n"}),
    Kind("generic_secret_key_django", "SECRET_KEY", _django,
         ("export", "json", "python", "action"),
         {"settings": lambda var, v: f"SECRET_KEY = '{v}'\nDEBUG = False\n"}),
    Kind("generic_encryption_key", "ENCRYPTION_KEY", plain(B64, 44), NAMED),
    Kind("email", "email", _email, PERSONAL,
         {"git_log": lambda var, v: f"commit 3f2a1c9\nAuthor: Jane Roe <{v}>\nDate:   Tue Dec 2 2026\n",
          "mail_header": lambda var, v: f"From: Jane Roe <{v}>\nTo: ops@corp.io\nSubject: deploy\n"}),
    Kind("phone_international", "phone", _phone_intl, PERSONAL),
    Kind("phone_us", "phone", _phone_us, PERSONAL),
    Kind("ipv4_public", "host", _ipv4, NETWORK),
    Kind("ipv6_public", "host", _ipv6, NETWORK),
]


def planted(seed: int = 0, instances: int = 2) -> list[dict]:
    """Every kind in each of its contexts, `instances` times with different values."""
    rng, items = random.Random(seed), []
    for kind in KINDS:
        table = kind.contexts if isinstance(kind.contexts, dict) else \
            {c: CONTEXTS[c] for c in kind.contexts}
        for ctx, render in {**table, **kind.extra}.items():
            for _ in range(instances):
                value, secrets = kind.make(rng)
                items.append({"kind": kind.name, "context": ctx, "text": render(kind.var, value),
                              "secrets": secrets})
    return items


def leaked(secret: str, out: str) -> bool:
    w = min(WINDOW, len(secret))
    return any(secret[i:i + w] in out for i in range(len(secret) - w + 1))


def measure_recall(items: list[dict], redact: Callable[[str], str] = redact_text) -> dict:
    misses = []
    for it in items:
        out = redact(it["text"])
        if any(leaked(s, out) for s in it["secrets"]):
            misses.append({"kind": it["kind"], "context": it["context"], "text": it["text"][:300],
                           "redacted": out[:300]})
    by_kind = Counter(it["kind"] for it in items)
    return {"planted": len(items), "kinds": len(by_kind),
            "contexts": len({it["context"] for it in items}),
            "recall": 1 - len(misses) / len(items), "misses": misses}


def clean_turns(paths: list[Path]) -> list[tuple[str, str]]:
    """(domain, text) of every action and observation of the trajectories in `paths`."""
    turns = []
    for p in paths:
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                turns += [(d["domain"], t) for s in d["steps"] for t in (s["action"], s["observation"])]
    return turns


_ADDRESS = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
_NAMED_PERSON = re.compile(r"(?i)\b(?:maintainer|author)\b")


def personal_data_found(text: str, out: str) -> bool:
    """Every change removed an address on a Maintainer/Author line: a real person's, not a miss."""
    gone = [m for m in _ADDRESS.finditer(text) if m.group(0) not in out]
    if not gone:
        return False
    rest = text
    for m in gone:
        end = text.find("\n", m.end())
        line = text[text.rfind("\n", 0, m.start()) + 1:end if end >= 0 else len(text)]
        if not _NAMED_PERSON.search(line):
            return False
        rest = rest.replace(m.group(0), "<EMAIL>")
    return rest == out


def measure_clean(turns: list[tuple[str, str]], redact: Callable[..., str] = redact_text,
                  repeats: int = 3) -> dict:
    changed, personal, kinds = [], 0, Counter()
    for domain, text in turns:
        c = Counter()
        out = redact(text, c)
        if out == text:
            continue
        if personal_data_found(text, out):
            personal += 1
            continue
        kinds.update(c)
        changed.append({"domain": domain, "kinds": dict(c), "text": text[:300], "redacted": out[:300]})
    size = sum(len(t.encode()) for _, t in turns)
    best = float("inf")
    for _ in range(repeats):  # CPU time of this process: a busy machine does not skew it
        t0 = time.process_time()
        for _, text in turns:
            redact(text)
        best = min(best, time.process_time() - t0)
    clean = len(turns) - personal
    return {"turns": len(turns), "domains": dict(Counter(d for d, _ in turns)),
            "personal_data_turns": personal, "clean_turns": clean, "changed": len(changed),
            "fp_rate": len(changed) / max(clean, 1), "changed_kinds": dict(kinds),
            "examples": changed[:20], "mb": size / 1e6, "mb_per_s": size / 1e6 / best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clean", nargs="*", type=Path, default=CLEAN_FIXTURES,
                    help="collected trajectories JSONL (default: the committed clean sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    recall = measure_recall(planted(args.seed))
    clean = measure_clean(clean_turns(args.clean))
    print(f"planted: {recall['planted']} items, {recall['kinds']} kinds, {recall['contexts']} contexts: "
          f"recall {recall['recall']:.2%} (goal >= {RECALL_GOAL:.0%})")
    for m in recall["misses"][:15]:
        print(f"  missed {m['kind']} in {m['context']}: {m['redacted'][:160]!r}")
    print(f"collected: {clean['turns']} turns {clean['domains']}; {clean['personal_data_turns']} hold "
          f"real people's addresses (Maintainer/Author lines, redacted)")
    print(f"clean: {clean['clean_turns']} turns, {clean['changed']} changed: false positives "
          f"{clean['fp_rate']:.3%} (goal <= {FP_GOAL:.1%}) {clean['changed_kinds']}")
    for e in clean["examples"][:10]:
        print(f"  changed {e['domain']} {e['kinds']}: {e['redacted'][:160]!r}")
    print(f"throughput: {clean['mb_per_s']:.1f} MB/s over {clean['mb']:.2f} MB of clean turns")
    if args.out:
        args.out.write_text(json.dumps({"recall": recall, "clean": clean}, indent=2))


if __name__ == "__main__":
    main()
