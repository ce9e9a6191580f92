"""Masking secrets in URLs before they reach any public output (JSON, headers, metrics, logs).

Operators put credentials into URLs (``http://user:password@host/``) and API keys into query
strings (``https://rpc.example/?api-key=...``). Everything the tracker shows — listings,
``location`` headers, metrics labels, log lines, config error messages — passes such text
through these functions, which replace the userinfo and the query with ``***``. The real URL is
kept where the tracker needs it (to reach the source); only what it shows is masked.

The masking errs on the side of hiding: text that is not a well-formed URL (a password with an
unescaped ``/``, ``#`` or ``?``, a URL without a scheme) is masked generously rather than
parsed precisely, so that no part of a secret survives a typo.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"

# A scheme and its "//", or the "//" alone of a scheme-relative URL ("//user:pw@host/",
# which a Location may hold: its userinfo is as secret).
_SCHEME = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?//")
# A URL inside free text: a scheme, then anything up to a blank, a double quote or an angle
# bracket; a single quote ends it only where it closes a quoted URL ('http://…' in messages).
_URL_IN_TEXT = re.compile(r"""(?:[A-Za-z][A-Za-z0-9+.-]*:)?//[^\s"<>]*?(?='?(?:[\s"<>]|$))""")
#: What ends a text cut short (tracker.core.text): a URL cut inside its authority may have
#: lost the ``@`` that showed the rest was userinfo.
CUT = "…"


def redact_url(text: str) -> str:
    """``text`` with its userinfo, query and fragment replaced by ``***``.

    ``http://user:pw@host:8899/p?key=1`` becomes ``http://***@host:8899/p?***``; a URL with
    none of them comes back unchanged. Userinfo is everything from the start of the authority
    (or of the text, when it has no ``scheme://``) to the last ``@``; the query or fragment is
    everything from the first ``?`` or ``#``. When an ``@`` follows that ``?`` or ``#`` (one in
    the password, or an ``@`` in the query: the two cannot be told apart) everything after
    ``scheme://`` is masked, and so it is of a URL cut short (:data:`CUT`) before its
    authority ended. A scheme-relative ``//user:pw@host/`` is masked as ``//***@host/``.
    """
    scheme = _SCHEME.match(text)
    start = scheme.end() if scheme else 0
    rest = text[start:]
    if scheme and rest.endswith(CUT) and not any(c in rest for c in "/?#@"):
        return text[:start] + MASK  # cut inside the authority: what is left may be userinfo
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@")
    if at > cut:
        return text[:start] + MASK
    head = rest[:cut]
    if at >= 0:
        head = MASK + head[at:]
    tail = rest[cut : cut + 1] + MASK if cut < len(rest) else ""
    return text[:start] + head + tail


def redact_text(text: str) -> str:
    """``text`` with every ``scheme://…`` URL in it passed through :func:`redact_url`.

    For free text (error messages, log lines, exception texts) and for values that are either
    a URL or something else (a target: a URL, or a local directory shown as it is).
    """
    if "//" not in text or not any(c in text for c in "@?#" + CUT):
        return text  # nothing to hide; the common case, kept cheap for large listings
    return _URL_IN_TEXT.sub(lambda m: redact_url(m[0]), text)


def redact_userinfo(url: str) -> str:
    """``url`` with only its userinfo masked: for URLs handed to clients to download from.

    The query of such a URL came from the source's redirect (a signed object-store link, say)
    and is needed to fetch the file; a configured query never gets there, because a source
    whose configured URL has one is proxied (:func:`has_secrets`). Text that does not parse
    as a URL is masked whole (:func:`redact_url`), and so is one whose userinfo cannot be
    told from its query (a "?" or "#" ends the parser's authority and an "@" follows). A "/"
    ends the authority: no URL carries one in its userinfo unencoded, and a signed URL's
    query may hold an "@" (``GoogleAccessId=name@project``) that must reach the client.
    """
    if "@" not in url:
        return url
    scheme = _SCHEME.match(url)
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return redact_url(url)
    if not scheme or "@" in parts.path + parts.fragment or any(c.isspace() for c in url):
        return redact_url(url)  # not a clean URL: mask generously
    start = scheme.end()
    end = start + len(parts.netloc)
    if url[end : end + 1] in ("?", "#") and "@" in url[end:]:
        # A "?" or "#" ended the parser's authority and an "@" follows: a password holding
        # one ("http://u:p?w@host/", "http://u:@?w@host/") cannot be told from a query
        # holding an "@" ("http://u:p@host?mail=a@b"), so it is masked as
        # :func:`redact_url` masks it, naming no host (which could be the password's tail)
        return redact_url(url)
    at = url.rfind("@", start, end)
    if at < 0:
        return url
    return url[:start] + MASK + url[at:]


def has_secrets(url: str) -> bool:
    """True when ``url`` carries userinfo, a query or a fragment: what :func:`redact_url` hides."""
    return any(c in url for c in "@?#") and redact_url(url) != url
