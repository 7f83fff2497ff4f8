"""Keep RPC credentials out of logs, errors and metrics.

RPC providers put API keys in three places: the userinfo (`https://user:pass@host`), the
query string (`?apikey=...`, Helius `?api-key=...`) and the path (Alchemy `/v2/<key>`, Infura
`/v3/<key>`, QuickNode `/<token>/`, Ankr `/eth/<key>`). `redact_url` hides all three while
keeping scheme, host and port, so a log line still says *which* endpoint failed.

`Redactor` is for free text (exception messages, tracebacks, repr of config objects): it knows
the configured URLs and the secrets extracted from them, plus any extra secret values (such as
environment variables interpolated into the config), and also redacts any URL it finds.
`RedactingFilter` applies a `Redactor` to every log record passing through a handler.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"

# Shorter "secrets" are refused: scrubbing every "1" or "eth" would make logs unreadable and
# such values are not credentials anyway (a real API key or password is longer).
MIN_SECRET_LEN = 6
# All-digit values shorter than this are ports, chain ids or block numbers interpolated from the
# environment; masking them would garble every block number in the logs.
MIN_NUMERIC_SECRET_LEN = 16

_TOKEN_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+")
_VERSION_SEGMENT = re.compile(r"v\d{1,2}", re.IGNORECASE)
# A URL inside free text. Brackets are allowed for IPv6 hosts; quotes, whitespace and the
# delimiters that usually surround a URL in a message end it.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>(){}|\\^`]+")
_TRAILING_PUNCT = ".,;:!?"


def _looks_like_key(segment: str) -> bool:
    """True for a path segment that is probably an API key or access token.

    A key is >= 16 characters of letters, digits, '-' and '_' and is not a plain word: it
    contains a digit, or mixes upper and lower case, or is a long run without separators.
    'solana-mainnet-beta' stays (it's a route name); 'a8Fk...' and hex tokens go.
    """
    if len(segment) < 16 or not _TOKEN_SEGMENT.fullmatch(segment):
        return False
    if any(c.isdigit() for c in segment):
        return True
    letters = [c for c in segment if c.isalpha()]
    if any(c.isupper() for c in letters[1:]) and any(c.islower() for c in letters):
        return True
    return not any(c in "-_" for c in segment) and len(segment) >= 24


def _secret_path_segments(path: str) -> list[str]:
    """Path segments that carry credentials (see `_looks_like_key`, and anything after /vN/)."""
    secrets = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        if not seg:
            continue
        after_version = i > 0 and _VERSION_SEGMENT.fullmatch(segments[i - 1]) is not None
        # Alchemy/Infura keys follow a version segment and may be shorter than 16 characters.
        if (after_version and len(seg) >= 8 and _TOKEN_SEGMENT.fullmatch(seg)) or _looks_like_key(seg):
            secrets.append(seg)
    return secrets


def _split_netloc(netloc: str) -> tuple[str | None, str]:
    """(userinfo or None, host[:port]) without lowercasing or re-encoding anything."""
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        return userinfo, hostport
    return None, netloc


def redact_url(url: str) -> str:
    """Return `url` with credentials replaced by `***`; scheme, host and port are kept.

    Hidden: the whole userinfo, every query value (names are kept: `?apikey=***`), the fragment,
    and key-like path segments. A URL without secrets comes back unchanged. Text that can't be
    parsed as a URL comes back fully masked, because we can't tell what in it is secret.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port or IPv6 literal
    except ValueError:
        return MASK
    userinfo, hostport = _split_netloc(parts.netloc)
    netloc = hostport if userinfo is None else f"{MASK}@{hostport}"

    path = parts.path
    if path:
        secret_segments = set(_secret_path_segments(path))
        path = "/".join(MASK if seg in secret_segments else seg for seg in path.split("/"))

    query = parts.query
    if query:
        fields = []
        for field in re.split(r"([&;])", query):
            if field in ("&", ";"):
                fields.append(field)
            elif "=" in field:
                name, _, value = field.partition("=")
                fields.append(f"{name}={MASK}" if value else field)
            elif field:
                # A bare value such as `?<token>` is as secret as a named one.
                fields.append(MASK)
        query = "".join(fields)

    out = f"{parts.scheme}:" if parts.scheme else ""
    if parts.netloc or url[len(out) :].startswith("//"):
        out += f"//{netloc}"
    out += path
    if parts.query or url.endswith("?"):
        out += f"?{query}"
    if parts.fragment:
        out += f"#{MASK}"
    return out


def url_secrets(url: str) -> list[str]:
    """The secret substrings inside `url` (userinfo parts, query values, key-like path segments).

    Both the raw form and the percent-decoded form are returned, because either may show up in
    an error message.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: list[str] = []
    userinfo, _ = _split_netloc(parts.netloc)
    if userinfo:
        found.append(userinfo)
        found.extend(p for p in userinfo.split(":", 1) if p)
    for field in re.split(r"[&;]", parts.query):
        if not field:
            continue
        value = field.partition("=")[2] if "=" in field else field
        if value:
            found.append(value)
    found.extend(_secret_path_segments(parts.path))
    if parts.fragment:
        found.append(parts.fragment)
    decoded = [unquote(s) for s in found]
    if userinfo:
        # what an HTTP/WebSocket client sends (and may log at DEBUG): Authorization: Basic base64(user:password)
        import base64
        decoded.append(base64.b64encode(unquote(userinfo).encode()).decode())
    return list(dict.fromkeys(found + decoded))


def _worth_masking(secret: str) -> bool:
    if len(secret) < MIN_SECRET_LEN:
        return False
    return not (secret.isdigit() and len(secret) < MIN_NUMERIC_SECRET_LEN)


class Redactor:
    """Scrubs known secrets and credential-bearing URLs out of arbitrary text.

    Thread-safe: secrets may be added while other threads log.
    """

    def __init__(self, urls: Iterable[str] = (), secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        # Maps a literal to its replacement: a full configured URL becomes its redacted form
        # (keeps the host visible); a bare secret becomes ***.
        self._replacements: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None
        for url in urls:
            self.add_url(url)
        for secret in secrets:
            self.add_secret(secret)

    def add_url(self, url: str) -> None:
        """Register a configured RPC URL: the URL itself and every secret inside it."""
        if not url:
            return
        with self._lock:
            redacted = redact_url(url)
            if redacted != url:
                self._replacements[url] = redacted
            for secret in url_secrets(url):
                if _worth_masking(secret):
                    self._replacements.setdefault(secret, MASK)
            self._pattern = None

    def add_secret(self, secret: str) -> None:
        """Register a secret value (e.g. an env var interpolated into the config).

        Values shorter than MIN_SECRET_LEN and short all-digit values are ignored (see the
        constants' comments).
        """
        if not _worth_masking(secret):
            return
        with self._lock:
            self._replacements.setdefault(secret, MASK)
            self._pattern = None

    @property
    def secret_count(self) -> int:
        return len(self._replacements)

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._replacements:
                # Longest first so a full URL wins over the key inside it.
                literals = sorted(self._replacements, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(s) for s in literals))
            return self._pattern

    def scrub(self, text: str) -> str:
        """Return `text` with registered secrets masked and every embedded URL redacted."""
        if not text:
            return text
        pattern = self._compiled()
        if pattern is not None:
            replacements = self._replacements
            text = pattern.sub(lambda m: replacements[m.group(0)], text)
        return _URL_IN_TEXT.sub(_redact_url_match, text)


def _redact_url_match(match: re.Match[str]) -> str:
    url = match.group(0)
    # Sentence punctuation after a URL ("failed: wss://x/y.") belongs to the sentence.
    stripped = url.rstrip(_TRAILING_PUNCT)
    tail = url[len(stripped) :]
    # A closing bracket without an opening one is the end of a list repr, not an IPv6 host.
    if stripped.endswith("]") and "[" not in stripped:
        stripped, tail = stripped[:-1], "]" + tail
    return redact_url(stripped) + tail


# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class RedactingFilter(logging.Filter):
    """A handler filter that scrubs message, args, exception text, stack and extra fields.

    Attach it to a *handler* (filters on a logger don't see records from child loggers). The
    message is formatted here (args merged in) because an arg's str() is where secrets hide.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        scrub = self.redactor.scrub
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not raise at the logging call site
            message = f"{record.msg!r} % {record.args!r} (unformattable log arguments)"
        record.msg = scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, scrub(value))
        return True
