"""Turning command-line text into payloads, and messages into lines (human or JSON).

Payloads from the command line:

- ``--encoding msgpack`` (default) or ``json``: DATA is parsed as JSON if it parses (``42``,
  ``{"a": 1}``, ``null``), else sent as the string itself (``hello``).
- ``--encoding raw``: the bytes of DATA as-is.
- ``{{count}}`` (or natscli's ``{{.Count}}``) in DATA is replaced by the message's sequence number
  (1, 2, ...), before parsing.

Messages on stdout: human mode prints ``[#n] subject: data`` (strings as-is, other values as compact
JSON, bytes as UTF-8 text when they are, else their ``repr``), then one indented ``Key: value`` line
per header. JSON mode prints one object per line: ``{"subject", "data", "encoding", "headers"}``;
a raw payload that is not UTF-8 comes as ``"data_base64"`` instead of ``"data"``. A payload that
cannot be decoded with its declared encoding is shown as raw bytes.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Sequence
from typing import Any, Final

import click
import msgspec

from conat import Message, PayloadError

__all__ = [
    "ENCODINGS",
    "Printer",
    "encoding_option",
    "format_value",
    "header_option",
    "message_fields",
    "parse_headers",
    "payload",
    "read_data",
]

ENCODINGS: Final = ("msgpack", "json", "raw")
_TEMPLATES: Final = ("{{count}}", "{{.Count}}")


def _fallback(value: Any) -> Any:
    return repr(value)


_json: Final = msgspec.json.Encoder(enc_hook=_fallback)


def to_json(value: Any) -> str:
    """Compact JSON; values JSON cannot hold are shown by ``repr`` and bytes as base64."""
    return _json.encode(value).decode()


encoding_option: Final = click.option(
    "--encoding",
    "-e",
    type=click.Choice(ENCODINGS),
    default="msgpack",
    show_default=True,
    help="Payload encoding on the wire. msgpack/json: DATA is parsed as JSON if it parses, else sent "
    "as a string; raw: the bytes of DATA as-is.",
)

header_option: Final = click.option(
    "--header",
    "-H",
    "headers",
    multiple=True,
    metavar="KEY:VALUE",
    help="A header to send (repeatable).",
)


def parse_headers(items: Sequence[str]) -> dict[str, str] | None:
    """``["K:V", ...]`` -> ``{"K": "V"}``. Raises ``click.BadParameter`` for a malformed item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition(":")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise click.BadParameter(f"{item!r} is not KEY:VALUE", param_hint="'--header'")
        if key.lower().startswith("conat-"):
            raise click.BadParameter(f"{key!r}: Conat-* headers are reserved", param_hint="'--header'")
        out[key] = value.strip()
    return out or None


def read_data(data: str | None) -> str:
    """DATA, or stdin when DATA is omitted (``-`` also reads stdin)."""
    if data is None or data == "-":
        if sys.stdin.isatty():
            print("conat: reading DATA from stdin (end with Ctrl-D)", file=sys.stderr, flush=True)
        return sys.stdin.read()
    return data


def payload(text: str, encoding: str, count: int | None = None) -> Any:
    """The value to send for DATA ``text`` (see the module docstring)."""
    if count is not None:
        for template in _TEMPLATES:
            text = text.replace(template, str(count))
    if encoding == "raw":
        return os.fsencode(text)  # the exact bytes of the argument, even when not valid UTF-8
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def _decoded(msg: Message) -> tuple[Any, str]:
    try:
        return msg.data, msg.encoding
    except PayloadError:
        return msg.raw, "raw"


def message_fields(msg: Message, subject: str | None = None) -> dict[str, Any]:
    """The JSON object for one message (``subject`` overrides the message's, e.g. for replies)."""
    value, encoding = _decoded(msg)
    out: dict[str, Any] = {"subject": subject or msg.subject}
    if isinstance(value, bytes):
        try:
            out["data"] = value.decode()
        except UnicodeDecodeError:
            out["data_base64"] = base64.b64encode(value).decode()
    else:
        out["data"] = value
    out["encoding"] = encoding
    out["headers"] = msg.headers
    return out


def format_value(value: Any) -> str:
    """A payload for people: strings as-is, bytes as text when UTF-8, everything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return repr(value)
    return to_json(value)


class Printer:
    """Writes results to stdout (flushed per line, so pipes see them at once); notes to stderr."""

    def __init__(self, json: bool) -> None:
        self.json = json

    def event(self, human: str, **fields: Any) -> None:
        """One result: the ``human`` line, or ``fields`` as a JSON object with ``--json``."""
        print(to_json(fields) if self.json else human, flush=True)

    def note(self, text: str) -> None:
        """A status line for people (always on stderr, so it never mixes with machine output)."""
        print(f"conat: {text}", file=sys.stderr, flush=True)

    def message(self, msg: Message, n: int | None = None, subject: str | None = None) -> None:
        """A received message: ``[#n] subject: data`` (just ``data`` when ``n`` is None).

        ``subject`` replaces the message's own (a reply's subject is an inbox nobody cares about).
        """
        if self.json:
            print(to_json(message_fields(msg, subject)), flush=True)
            return
        value, _ = _decoded(msg)
        text = format_value(value)
        lines = [text if n is None else f"[#{n}] {subject or msg.subject}: {text}"]
        lines.extend(f"    {k}: {v}" for k, v in msg.headers.items())
        print("\n".join(lines), flush=True)
