"""Defaults: what a site gets for everything it does not say. The one place they live."""

from __future__ import annotations

from typing import Any, Final, get_args

from mailplan.plan.model import RuleVerb

# Per protocol: port, TLS mode and whether AUTH is required, offered, or not offered.
LISTENERS: dict[str, dict[str, Any]] = {
    "smtp": {"port": 25, "tls": "starttls", "auth": "optional"},
    "submission": {"port": 587, "tls": "starttls", "auth": "required"},
    "smtps": {"port": 465, "tls": "implicit", "auth": "required"},
    "pop3": {"port": 110, "tls": "starttls", "auth": "required"},
    "pop3s": {"port": 995, "tls": "implicit", "auth": "required"},
    "imap": {"port": 143, "tls": "starttls", "auth": "required"},
    "imaps": {"port": 993, "tls": "implicit", "auth": "required"},
}
LISTENER_BIND = ("0.0.0.0", "::")
PLAINTEXT_AUTH = False
ADMIN_BIND = "127.0.0.1"  # the admin listener answers on loopback unless told otherwise

RELAYING: dict[str, Any] = {"scope": "clients-only", "authenticated": True}

RECEIVING: dict[str, Any] = {
    "return_path": {"scope": "everybody-except-clients", "action": "reject"},
    "reverse_connect": {"scope": "nobody", "action": "reject", "cache": "1h", "timeout": "30s"},
    "spf": {"scope": "everybody-except-clients", "action": "reject-fail"},
    "rbl": {"scope": "everybody-except-clients", "zones": [], "threshold": 1},
    "blacklisted_ips": "everybody-except-clients",
    # DKIM and ARC verified, DMARC followed (a failing p=quarantine marked, p=reject refused)
    "dkim": {"scope": "everybody-except-clients"},
    "dmarc": {"scope": "everybody-except-clients", "action": "reject"},
    "arc": {"seal": False},  # ARC-seal mail from outside that leaves again
}
RBL_WEIGHT = 1
# receiving.content_filter: what is not said of rspamd
CONTENT_FILTER: dict[str, Any] = {
    "scope": "everybody-except-clients",
    "timeout": "20s",
    "on_failure": "tempfail",
}

LIMITS: dict[str, Any] = {
    "max_message_size": "25M",
    "max_recipients": 1000,
    "max_connections": 1000,
    "max_connections_per_client": 50,  # as Postfix's smtpd_client_connection_count_limit
}

QUEUE: dict[str, Any] = {
    "directory": "var/queue",
    "mail_directory": "var/mail",
    "retry": ["5m", "15m", "1h", "4h"],
    "give_up_after": "5d",
    "warn_after": "4h",
}

# Outbound TLS: the policies of other domains honoured (MTA-STS, DANE), TLS reports sent.
OUTBOUND_TLS: dict[str, Any] = {
    "mta_sts": True,
    "dane": True,
    "reports": True,
    "ca_file": None,
    "trusted_resolver": False,
}

PIPE_TIMEOUT = "60s"

DOMAIN: dict[str, Any] = {"sends_mail": True, "unknown": "reject"}
SPF: dict[str, Any] = {"policy": "-all", "include": [], "ip4": [], "ip6": []}
MAILING_LIST_POSTING = "members"

# DNS records (`mailplan dns`): TTL, the MX a domain without `mx:` gets (the server's
# hostname), DMARC (a domain that sends no mail always publishes p=reject), MTA-STS.
DNS_TTL = "1h"
MX_PRIORITY = 10
DMARC: dict[str, Any] = {
    "policy": "quarantine",
    "rua": [],
    "ruf": [],
    "adkim": "relaxed",
    "aspf": "relaxed",
    "percent": 100,
}
DMARC_NO_MAIL: Final = "reject"
MTA_STS: dict[str, Any] = {"mode": "enforce", "max_age": "1w"}

# Every main domain has a postmaster; when the site does not name one, it gets this
# account, which receives mail but cannot log in until a password is given.
POSTMASTER = "postmaster"

_UNITS = {
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
}


def seconds(value: int | str) -> int:
    """A duration from the site (`90`, `30s`, `5m`, `4h`, `5d`, `1w`) in seconds."""
    return value if isinstance(value, int) else int(value[:-1]) * _UNITS[value[-1]]


def size(value: int | str) -> int:
    """A size from the site (`1000`, `512K`, `25M`, `1G`) in bytes."""
    return value if isinstance(value, int) else int(value[:-1]) * _UNITS[value[-1]]


# Rules: how often an auto-reply (Reply with) may answer one sender, when the rule
# does not say (`once per 1d`); and what account rules may do when the site does not
# say (`account_rules: {actions: [...]}`): everything an account rule can do but
# Execute, which runs a program of the administrator's.
REPLY_PERIOD = "7d"
ACCOUNT_RULE_ACTIONS = tuple(verb for verb in get_args(RuleVerb) if verb != "Execute")
# Folders every account has (Store in may name them without `folders:`).
FOLDERS = ("INBOX", "Sent", "Drafts", "Trash", "Junk")
