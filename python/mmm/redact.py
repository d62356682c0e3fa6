"""Keeping secrets out of messages: the one place mmm's Python layer hides them.

Every URI a :class:`mmm.Server` or :class:`mmm.Tailer` is given has its secrets (userinfo,
password-, secret- and token-like options, ``authMechanismProperties`` values) remembered here;
:func:`text` hides them, and every ``mongodb://`` URI, in anything about to be shown: exception
messages, log records (:class:`LogFilter`), status fields, reprs. The rules themselves are the
Rust core's (``src/redact.rs``), so both sides hide the same things.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Iterable, Set

from . import _mmm

__all__ = ["LogFilter", "error", "remember", "text", "uri", "userinfo_problem"]

_lock = threading.Lock()
_secrets: Set[str] = set()


def remember(uri_text: str) -> None:
    """Notes the secrets of a URI so that :func:`text` hides them wherever they turn up."""
    if not isinstance(uri_text, str):
        return
    found = _mmm.uri_secrets(uri_text)
    if found:
        with _lock:
            _secrets.update(found)


def uri(uri_text: str, keep_variables: bool = False) -> str:
    """The URI with its secrets replaced by ``***`` (``${VAR}`` templates kept if asked)."""
    return _mmm.redact_uri(str(uri_text), keep_variables)


def text(message: object, extra_uris: Iterable[str] = ()) -> str:
    """``str(message)`` with every URI redacted and every remembered secret hidden."""
    with _lock:
        secrets = list(_secrets)
    for u in extra_uris:
        secrets.extend(_mmm.uri_secrets(u))
    return _mmm.redact_text(str(message), secrets)


def userinfo_problem(uri_text: str) -> "str | None":
    """Why the URI's user name and password cannot be read unambiguously, or None."""
    return _mmm.uri_userinfo_problem(uri_text)


def error(exc: BaseException) -> str:
    """One line about a failure: PyMongo's server selection errors lose the topology
    description they append (two long lines per server), and secrets are hidden."""
    message = str(exc).strip() or exc.__class__.__name__
    # PyMongo's ServerSelectionTimeoutError: "<why per server>, Timeout: 3.0s, Topology
    # Description: <...>"; the Rust driver's: "Kind: Server selection timeout: No available
    # servers. Topology: { ... Error: Kind: I/O error: <why> ... }, labels: {}, ...".
    message = message.split(", Timeout: ", 1)[0]
    message = message.split(" (configured timeouts: ", 1)[0]
    if ". Topology: {" in message:
        head, topology = message.split(". Topology: {", 1)
        reasons = re.findall(r"Address: ([^,]+),[^{}]*?Error: (?:Kind: )?(.*?)(?:, labels: |\s*}|$)", topology)
        message = head + (": " + "; ".join(f"{a}: {r}" for a, r in reasons) if reasons else "")
    message = re.sub(r"Kind: ", "", message)
    message = re.sub(r", labels: \{.*?\}, source: .*?, server response: \S*", "", message)
    first = message.splitlines()[0] if message.splitlines() else message
    return text(first)


class LogFilter(logging.Filter):
    """Hides secrets in a record's message (and exception text) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return True
        record.msg, record.args = text(message), None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            record.exc_text = text("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        return True


def install_log_filter(*handlers: logging.Handler) -> None:
    """Adds :class:`LogFilter` to handlers (default: the root logger's), so records from any
    library pass through it."""
    for h in handlers or tuple(logging.getLogger().handlers):
        if not any(isinstance(f, LogFilter) for f in h.filters):
            h.addFilter(LogFilter())
