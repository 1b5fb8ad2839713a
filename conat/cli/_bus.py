"""``conat pub | sub | req | reply``: talk to the bus from a shell, natscli-style.

Status lines (``subscribed to ...``) go to stderr; stdout carries only results, so
``conat --json sub 'x.>' | jq`` sees nothing but messages.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import click

import conat
from subjects import validate_pattern, validate_subject

from ._app import Options, common_options, run, stop_on_signals, until_stopped
from ._output import (
    Printer,
    encoding_option,
    header_option,
    parse_headers,
    payload,
    read_data,
)

__all__ = ["pub", "reply", "req", "sub"]

log = logging.getLogger("conat.cli")

_positive_float = click.FloatRange(min=0, min_open=True)


async def _connect(opts: Options, role: str) -> conat.Client:
    return await opts.connect(f"conat-cli-{role}")


def _queue_text(queue: str | None) -> str:
    return f" in queue group {queue!r}" if queue else ""


# -- pub --------------------------------------------------------------------------------------


@click.command(short_help="Publish a message.")
@click.argument("subject")
@click.argument("data", required=False)
@click.option(
    "--count",
    "-c",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Publish N messages; {{count}} in DATA becomes 1..N.",
)
@encoding_option
@header_option
@click.option(
    "--timeout", type=_positive_float, default=5.0, show_default=True, help="Seconds to wait for the flush."
)
@common_options
@click.pass_obj
def pub(
    opts: Options,
    subject: str,
    data: str | None,
    count: int,
    encoding: str,
    headers: Sequence[str],
    timeout: float,
) -> None:
    """Publish DATA to SUBJECT (DATA omitted or '-': read stdin).

    Returns once the server has everything (a flush), so the messages are not lost on exit.
    """
    validate_subject(subject)
    hdrs = parse_headers(headers)
    text = read_data(data)
    run(_pub(opts, subject, text, count, encoding, hdrs, timeout))
    noun = "message" if count == 1 else "messages"
    Printer(opts.json).event(f"published {count} {noun} to {subject}", subject=subject, published=count)


async def _pub(
    opts: Options,
    subject: str,
    text: str,
    count: int,
    encoding: str,
    headers: dict[str, str] | None,
    flush_seconds: float,
) -> None:
    async with await _connect(opts, "pub") as client:
        for n in range(1, count + 1):
            await client.publish(subject, payload(text, encoding, n), headers=headers, encoding=encoding)
        await client.flush(flush_seconds)


# -- sub --------------------------------------------------------------------------------------


@click.command(short_help="Print the messages on a subject pattern.")
@click.argument("pattern")
@click.option("--queue", "-q", metavar="GROUP", help="Join a queue group: each message goes to one member.")
@click.option("--count", "-c", type=click.IntRange(min=1), help="Exit after N messages.")
@common_options
@click.pass_obj
def sub(opts: Options, pattern: str, queue: str | None, count: int | None) -> None:
    """Print the messages on PATTERN (wildcards * and > allowed) until Ctrl-C or --count.

    Each message is a line '[#n] subject: data' (or, with --json, an object with subject, data,
    encoding and headers). Ctrl-C is a normal stop: exit code 0.
    """
    validate_pattern(pattern)
    if queue is not None:
        validate_subject(queue)
    try:
        run(_sub(opts, pattern, queue, count))
    except KeyboardInterrupt:
        pass


async def _sub(opts: Options, pattern: str, queue: str | None, count: int | None) -> None:
    out = Printer(opts.json)
    with stop_on_signals() as stop:
        await until_stopped(stop, _sub_body(opts, out, pattern, queue, count))


async def _sub_body(opts: Options, out: Printer, pattern: str, queue: str | None, count: int | None) -> None:
    async with await _connect(opts, "sub") as client:
        subscription = await client.subscribe(pattern, queue=queue)
        out.note(f"subscribed to {pattern}{_queue_text(queue)}")
        n = 0
        async for msg in subscription:
            n += 1
            out.message(msg, n)
            if count is not None and n >= count:
                break


# -- req --------------------------------------------------------------------------------------


@click.command(short_help="Send a request and print the reply (or replies).")
@click.argument("subject")
@click.argument("data", required=False)
@click.option("--timeout", "-t", type=_positive_float, default=5.0, show_default=True, help="Seconds.")
@click.option(
    "--many",
    is_flag=True,
    help="Print every reply (request_many) until the responder ends the stream, --max replies, "
    "--idle seconds of silence, or --timeout.",
)
@click.option("--max", "max_replies", type=click.IntRange(min=1), help="With --many: stop after N replies.")
@click.option("--idle", type=_positive_float, help="With --many: stop after S seconds without a reply.")
@click.option(
    "--wait",
    is_flag=True,
    help="If nobody listens yet, retry until --timeout instead of failing with 'no responders'.",
)
@encoding_option
@header_option
@common_options
@click.pass_obj
def req(
    opts: Options,
    subject: str,
    data: str | None,
    timeout: float,
    many: bool,
    max_replies: int | None,
    idle: float | None,
    wait: bool,
    encoding: str,
    headers: Sequence[str],
) -> None:
    """Send DATA as a request to SUBJECT and print the reply (DATA omitted or '-': read stdin).

    Exit codes: 2 the responder replied with an error, 3 timeout, 4 no responders, 5 forbidden.
    """
    if (max_replies is not None or idle is not None) and not many:
        raise click.UsageError("--max and --idle need --many")
    if wait and many:
        raise click.UsageError("--wait works without --many only")
    validate_subject(subject)
    hdrs = parse_headers(headers)
    value = payload(read_data(data), encoding)
    out = Printer(opts.json)
    if many:
        run(_req_many(opts, out, subject, value, timeout, max_replies, idle, encoding, hdrs))
    else:
        run(_req(opts, out, subject, value, timeout, wait, encoding, hdrs))


async def _req(
    opts: Options,
    out: Printer,
    subject: str,
    value: object,
    seconds: float,
    wait: bool,
    encoding: str,
    headers: dict[str, str] | None,
) -> None:
    async with await _connect(opts, "req") as client:
        msg = await client.request(
            subject, value, timeout=seconds, headers=headers, encoding=encoding, wait_for_interest=wait
        )
        out.message(msg, subject=subject)


async def _req_many(
    opts: Options,
    out: Printer,
    subject: str,
    value: object,
    seconds: float,
    max_replies: int | None,
    idle: float | None,
    encoding: str,
    headers: dict[str, str] | None,
) -> None:
    async with await _connect(opts, "req") as client:
        n = 0
        replies = client.request_many(
            subject,
            value,
            timeout=seconds,
            idle_timeout=idle,
            max_messages=max_replies,
            headers=headers,
            encoding=encoding,
        )
        async for msg in replies:
            n += 1
            out.message(msg, n, subject=subject)


# -- reply ------------------------------------------------------------------------------------


@click.command(short_help="Answer requests: an echo service.")
@click.argument("subject")
@click.argument("data", required=False)
@click.option("--queue", "-q", metavar="GROUP", help="Join a queue group: each request goes to one member.")
@click.option("--count", "-c", type=click.IntRange(min=1), help="Exit after handling N messages.")
@encoding_option
@common_options
@click.pass_obj
def reply(
    opts: Options, subject: str, data: str | None, queue: str | None, count: int | None, encoding: str
) -> None:
    """Answer requests on SUBJECT until Ctrl-C or --count: an echo service.

    Without DATA each request is answered with its own payload, unchanged and in its own encoding.
    With DATA every request gets DATA instead ({{count}} becomes the request's number). Each
    request is printed like `conat sub` prints messages. Ctrl-C is a normal stop: exit code 0.
    """
    validate_pattern(subject)
    if queue is not None:
        validate_subject(queue)
    try:
        run(_reply(opts, subject, data, queue, count, encoding))
    except KeyboardInterrupt:
        pass


async def _reply(
    opts: Options, subject: str, data: str | None, queue: str | None, count: int | None, encoding: str
) -> None:
    out = Printer(opts.json)
    with stop_on_signals() as stop:
        await until_stopped(stop, _reply_body(opts, out, subject, data, queue, count, encoding))


async def _reply_body(
    opts: Options,
    out: Printer,
    subject: str,
    data: str | None,
    queue: str | None,
    count: int | None,
    encoding: str,
) -> None:
    async with await _connect(opts, "reply") as client:
        subscription = await client.subscribe(subject, queue=queue)
        mode = "echo" if data is None else "fixed reply"
        out.note(f"replying on {subject}{_queue_text(queue)} ({mode})")
        n = 0
        async for msg in subscription:
            n += 1
            out.message(msg, n)
            if msg.reply:
                await _answer(msg, data, encoding, n)
            if count is not None and n >= count:
                break
        await client.flush()


async def _answer(msg: conat.Message, data: str | None, encoding: str, n: int) -> None:
    try:
        if data is not None:
            await msg.respond(payload(data, encoding, n), encoding=encoding)
            return
        try:
            value, echo_encoding = msg.data, msg.encoding
        except conat.PayloadError:
            value, echo_encoding = msg.raw, "raw"
        await msg.respond(value, encoding=echo_encoding)
    except conat.ConatError as e:  # one bad request must not end the service
        log.warning("cannot answer request #%d on %s: %s", n, msg.subject, e)
        with contextlib.suppress(conat.ConatError):
            await msg.respond_error(e.code, str(e))
