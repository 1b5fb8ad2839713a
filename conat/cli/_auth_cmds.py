"""``conat auth keygen|token|inspect`` and ``conat server --auth``: a bus with auth from the shell.

The whole path, without writing Python::

    conat auth keygen                          # signing keys in <data dir>/keys (0600 files)
    conat server --auth                        # a bus that only accepts tokens signed by them
    conat auth token hub -o admin.token        # a 0600 token file (for the running bus)
    conat --credentials admin.token pub public.x hi

Secrets never go through argv or the environment: keys stay in their 0600 files, a token goes to a
0600 file (``--out``; ``-`` prints it, for a pipe) and clients take the file's path
(``--credentials FILE``). Every command prints one result (``--json``: one JSON object), and never a
seed. ``conat server --auth`` publishes its bus in the state file, so ``conat auth token`` knows the
audience without ``--bus``.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import msgspec
from click.decorators import FC

from conat import ServerError
from conat._paths import clear_state, data_dir, read_state, write_state
from conat._server_config import ServerConfig
from conat.auth import (
    MAX_REVISION,
    MAX_TOKEN_TTL,
    MIN_TOKEN_TTL,
    AuthBus,
    BusJoin,
    Keyring,
    KeyringError,
    PublicKeys,
    PublicKeySource,
    SecretFileError,
    TokenClaims,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    peek_claims,
    read_private_file,
    write_private_file,
)
from subjects import InvalidBus, InvalidSubject, Scope, parse_bus

from ._app import Options, json_option, stop_on_signals, until_stopped
from ._cluster_cmds import JOIN_FILE
from ._output import Printer

__all__ = ["auth_group", "auth_keys", "check_bus", "keys_option", "public_keys_option", "serve_auth"]

def keys_option(help: str = "The signing keys' directory (default: <data dir>/keys).") -> Callable[[FC], FC]:
    """``--keys DIR``: the signing keys (a :class:`~conat.auth.Keyring` directory)."""
    return click.option("--keys", type=click.Path(file_okay=False, path_type=Path), help=help)


def public_keys_option(help: str) -> Callable[[FC], FC]:
    """``--public-keys FILE``: pinned public keys (``conat auth keygen --export FILE``)."""
    return click.option(
        "--public-keys", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", help=help
    )


_keys_option = keys_option()


def _keys_dir(keys: Path | None) -> Path:
    return keys if keys is not None else data_dir() / "keys"


def _existing_keyring(directory: Path) -> Keyring | None:
    """The keyring in ``directory``; ``None`` if there is no such directory or no key in it."""
    if not os.path.lexists(directory):
        return None
    try:
        return Keyring.open(directory, create=False)
    except KeyringError as e:
        if e.code != "no-keys":
            raise
        return None


def _keyring(keys: Path | None) -> Keyring:
    """The existing keyring; refused with the way out when there is none."""
    directory = _keys_dir(keys)
    keyring = _existing_keyring(directory)
    if keyring is None:
        raise KeyringError("no-keys", "no signing keys: create them with `conat auth keygen`", str(directory))
    return keyring


def _utc(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _claims_fields(claims: TokenClaims) -> dict[str, Any]:
    return {
        "principal": claims.sub,
        "bus": claims.aud,
        "kid": claims.kid,
        "iss": claims.iss,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "exp": claims.exp,
        "jti": claims.jti,
        "scope": {"projects": list(claims.scope.projects), "hosts": list(claims.scope.hosts)},
        "once": claims.once,
        "revision": claims.rev,
    }


def _claims_lines(claims: TokenClaims, now: float) -> list[str]:
    left = claims.exp - now
    expiry = f"in {_span(left)}" if left > 0 else f"{_span(left)} ago"
    lines = [
        f"  kid {claims.kid}, issued {_utc(claims.iat)}, expires {_utc(claims.exp)} ({expiry})",
    ]
    scope = claims.scope
    extra = [f"projects {', '.join(scope.projects)}"] if scope.projects else []
    extra += [f"hosts {', '.join(scope.hosts)}"] if scope.hosts else []
    extra += ["one-time"] if claims.once else []
    extra += [f"revision {claims.rev}"]
    lines.append("  " + "; ".join(extra))
    return lines


# -- conat auth --------------------------------------------------------------------------------


@click.group(name="auth", short_help="Signing keys and token files for a bus with auth.", no_args_is_help=True)
def auth_group() -> None:
    """Signing keys and token files for a bus with auth (`conat server --auth`).

    `conat auth keygen` makes the signing keys, `conat auth token` writes a token file that
    `conat --credentials FILE ...` (or `conat.connect(credentials=path)`) uses, and
    `conat auth inspect` tells what a token file holds and whether it is valid.
    """


@auth_group.command(short_help="Create the signing keys (or rotate them).")
@_keys_option
@click.option("--rotate", is_flag=True, help="Add a new signing key; older ones keep verifying.")
@click.option(
    "--export",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also write the public keys to FILE, for a bus elsewhere (`conat server --auth --public-keys FILE`).",
)
@json_option
@click.pass_obj
def keygen(opts: Options, keys: Path | None, rotate: bool, export: Path | None) -> None:
    """Create the signing keys of your tokens in --keys (default <data dir>/keys; a 0700 directory,
    one 0600 file per key). With keys already there: refused, unless --rotate adds a new signing key
    (tokens signed by the older ones stay valid until they expire; restart a running
    `conat server --auth` to make it accept the new key).

    Prints the key directory, the signing key's id and the public keys (never a seed).
    """
    out = Printer(opts.json)
    directory = _keys_dir(keys)
    keyring = _existing_keyring(directory)
    if keyring is None:
        keyring = Keyring.open(directory)
    elif rotate:
        keyring.rotate()
    else:
        raise click.UsageError(
            f"signing keys already exist in {directory} (signing key {keyring.current}); --rotate adds a new one"
        )
    if export is not None:
        keyring.public().save(export)
    public = keyring.export_public()
    lines = [f"signing keys in {directory}: {keyring.current} signs ({len(keyring.kids)} key(s))"]
    lines.append(f"  public keys: {public}")
    if export is not None:
        lines.append(f"  written to {export} (pin them with `conat server --auth --public-keys {export}`)")
    out.event(
        "\n".join(lines),
        event="keys",
        keys=str(directory),
        current=keyring.current,
        kids=list(keyring.kids),
        public_keys=msgspec.json.decode(public),
        export=str(export) if export is not None else None,
    )


def _running_bus() -> str:
    state = read_state()
    if state is None or state.bus is None:
        raise click.UsageError(
            "--bus: no running bus with auth (start one with `conat server --auth`); name the bus "
            "the token is for: master or host-<uuid>"
        )
    return state.bus


@auth_group.command(short_help="Write a token file.")
@click.argument("principal")
@click.option(
    "-o",
    "--out",
    required=True,
    metavar="FILE",
    help="The token file to write (mode 0600); '-' prints the token instead.",
)
@click.option("--bus", help="The bus the token is for: master or host-<uuid> (default: the running bus).")
@click.option(
    "--ttl",
    type=click.FloatRange(MIN_TOKEN_TTL, MAX_TOKEN_TTL),
    default=3600.0,
    show_default=True,
    help="Lifetime in seconds.",
)
@click.option("--project", "projects", multiple=True, metavar="UUID", help="A project it grants (repeatable).")
@click.option(
    "--host-id", "hosts", multiple=True, metavar="UUID", help="A host whose boot log it grants (repeatable)."
)
@click.option("--once", is_flag=True, help="A one-time token: the bus accepts it once.")
@click.option(
    "--revision",
    type=click.IntRange(0, MAX_REVISION),
    default=0,
    show_default=True,
    help="The principal's revision (after `revoke`, tokens below the bus's floor are refused).",
)
@_keys_option
@json_option
@click.pass_obj
def token(
    opts: Options,
    principal: str,
    out: str,
    bus: str | None,
    ttl: float,
    projects: tuple[str, ...],
    hosts: tuple[str, ...],
    once: bool,
    revision: int,
    keys: Path | None,
) -> None:
    """Write a token for PRINCIPAL (hub, account-<uuid>, host-<uuid> or project-<uuid>), signed
    with the signing keys, to a 0600 file: `conat --credentials FILE ...` connects with it.

    hub may do everything; an account on a host bus may use the projects it is given (--project);
    a project may use its own subjects. Prints who, for which bus and until when (never the token,
    unless --out -).
    """
    printer = Printer(opts.json)
    audience = bus if bus is not None else _running_bus()
    target = None if out == "-" else Path(out)
    if target is not None and not target.absolute().parent.is_dir():
        raise click.BadParameter(f"{target.absolute().parent} is not a directory", param_hint="'--out'")
    try:
        scope = Scope(projects=projects, hosts=hosts)
    except InvalidSubject as e:
        raise click.BadParameter(str(e), param_hint="'--project'/'--host-id'") from None
    issuer = TokenIssuer(_keyring(keys))
    try:
        minted = issuer.issue(principal, audience, scope, ttl, once=once, revision=revision)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    claims = peek_claims(minted)
    if target is None:
        click.echo(minted)
        printer.note(f"token for {claims.sub} on bus {claims.aud}, valid until {_utc(claims.exp)}")
        return
    write_private_file(target, minted.encode() + b"\n", what="token file")
    printer.event(
        f"token for {claims.sub} on bus {claims.aud}, valid until {_utc(claims.exp)} ({_span(ttl)}): {target}",
        event="token",
        file=str(target),
        **_claims_fields(claims),
    )


@auth_group.command(short_help="Write what another node needs to join the running bus (a 0600 file).")
@click.option(
    "-o", "--out", "target", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The file."
)
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="URL",
    help="Routes the node seeds from, nats-route://HOST:PORT (default: the running node's).",
)
@json_option
@click.pass_obj
def join(opts: Options, target: Path, routes: tuple[str, ...]) -> None:
    """Write the join file of the running bus (`conat server --auth --cluster ...` on this data dir)
    to a 0600 file: the bus, its cluster and routes, the callout's public keys and the bus's static
    passwords (no seed). On the new node: `conat server --join FILE --node NAME`. The file is a
    secret: hand it over as one.
    """
    printer = Printer(opts.json)
    state = read_state()
    if state is None or state.bus is None:
        raise click.UsageError(
            "no running bus with auth on this data dir (start one with `conat server --auth --cluster`)"
        )
    source = data_dir() / "buses" / state.bus / JOIN_FILE
    try:
        bus_join = BusJoin.read(source)
    except SecretFileError as e:
        if e.code != "missing":
            raise
        raise click.UsageError(
            f"bus {state.bus} runs in no cluster: start it with --cluster to add nodes"
        ) from None
    if routes:
        try:
            bus_join = msgspec.structs.replace(bus_join, routes=routes)
        except (ValueError, msgspec.ValidationError) as e:
            raise click.UsageError(f"--route: {e}") from None
    bus_join.write(target)
    printer.event(
        f"join file for bus {bus_join.bus} (cluster {bus_join.cluster}, routes"
        f" {', '.join(bus_join.routes)}): {target}\n  on the new node: conat server --join {target} --node NAME",
        event="join",
        file=str(target),
        bus=bus_join.bus,
        cluster=bus_join.cluster,
        routes=list(bus_join.routes),
    )


@auth_group.command(short_help="Show what a token file holds, and whether it is valid.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_keys_option
@public_keys_option("Verify with pinned public keys (from `conat auth keygen --export`) instead.")
@json_option
@click.pass_obj
def inspect(opts: Options, file: Path, keys: Path | None, public_keys: Path | None) -> None:
    """Show the token in FILE (a 0600 token file): principal, bus, times, scope; and check it with
    the signing keys (--keys, default <data dir>/keys) or --public-keys: signature, times and bus,
    as the bus would (revocations are the bus's own). Exits 1 if it would be refused (its code is
    in the error line); without keys, says it was not verified.
    """
    out = Printer(opts.json)
    text = read_private_file(file, what="token file").decode("ascii", errors="replace").strip()
    claims = peek_claims(text)
    source, where = _verification_keys(keys, public_keys)
    verdict, error = "not verified: no signing keys here (--keys or --public-keys)", None
    if source is not None:
        try:
            TokenVerifier(source, audience=claims.aud, max_size=len(text) + 1).verify(text, check_replay=False)
        except TokenError as e:
            verdict, error = f"refused ({e.code})", e
        else:
            verdict = "valid"
        verdict += f" (keys: {where})"
    lines = [f"token file {file}: {claims.sub} on bus {claims.aud}", *_claims_lines(claims, time.time())]
    lines.append(f"  {verdict}")
    out.event(
        "\n".join(lines),
        event="token",
        file=str(file),
        valid=None if source is None else error is None,
        refusal=error.code if error is not None else None,
        **_claims_fields(claims),
    )
    if error is not None:
        raise error


def _verification_keys(keys: Path | None, public_keys: Path | None) -> tuple[PublicKeySource | None, str]:
    if public_keys is not None:
        return PublicKeys.load(public_keys), str(public_keys)
    directory = _keys_dir(keys)
    if keys is None and not directory.is_dir():
        return None, ""
    return _keyring(keys), str(directory)


# -- conat server --auth ------------------------------------------------------------------------


def check_bus(bus: str) -> str:
    """``--bus``, checked (``master`` or ``host-<uuid>``)."""
    try:
        parse_bus(bus)
    except InvalidBus as e:
        raise click.BadParameter(str(e), param_hint="'--bus'") from None
    return bus


def auth_keys(keys: Path | None, public_keys: Path | None) -> PublicKeySource:
    """The keys a bus with auth accepts tokens of: pinned public keys, or the signing keys'."""
    if public_keys is not None:
        return PublicKeys.load(public_keys)
    return _keyring(keys).public()


async def serve_auth(config: ServerConfig, out: Printer, *, bus: str, public_keys: PublicKeySource) -> None:
    """Run a bus with auth (:class:`~conat.auth.AuthBus`, its files under ``<data dir>/buses/<bus>``)
    until SIGINT, SIGTERM or SIGHUP, publishing it (and its bus) in the state file meanwhile.

    Raises:
        ServerError: the nats-server exited on its own.
    """
    directory = data_dir() / "buses" / bus
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with stop_on_signals() as stop:
        async with await AuthBus.start(bus=bus, public_keys=public_keys, directory=directory, config=config) as auth:
            server = auth.server
            pid = server.pid
            assert pid is not None
            write_state(server.state(bus=bus))
            if server.config.cluster is not None:  # what `conat auth join` hands to other nodes
                auth.join().write(directory / JOIN_FILE)
            try:
                _announce(out, auth, directory)
                code = await until_stopped(stop, server.wait())
                if not stop.is_set():
                    raise ServerError(f"exited unexpectedly with code {code}; see {server.log_path}")
            finally:
                clear_state(pid=pid)


def _announce(out: Printer, auth: AuthBus, directory: Path) -> None:
    server = auth.server
    if out.json:
        out.event(
            "",
            event="ready",
            url=server.url,
            pid=server.pid,
            bus=auth.bus,
            websocket_url=server.websocket_url,
            log_path=str(server.log_path),
            audit_path=str(auth.audit.path),
            directory=str(directory),
            cluster_url=server.cluster_url,
        )
        return
    lines = [f"conat server ready at {server.url} (nats-server pid {server.pid}): bus {auth.bus}, with auth"]
    if server.websocket_url is not None:
        lines.append(f"  websocket: {server.websocket_url}")
    if (cluster := server.config.cluster) is not None:
        lines.append(
            f"  cluster:   {cluster.name}, routes at {server.cluster_url}: `conat auth join -o FILE` for a node"
        )
    lines += [
        f"  log:       {server.log_path}",
        f"  audit:     {auth.audit.path}",
        "  tokens:    conat auth token hub -o admin.token; then conat --credentials admin.token ...",
        "Press Ctrl-C to stop.",
    ]
    out.event("\n".join(lines))
