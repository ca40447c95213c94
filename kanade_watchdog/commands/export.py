"""The `export` command: connect, read every stream, write the declaration.

The I/O around the pure `export` / `export_doc`: the connection settings come
from the config file's `[nats]` (defaults when there is no file yet), with
`--server` on top; streams are read through `broker.Broker`, one STREAM.LIST
request per 256; the result goes to standard output or, atomically, to a
file. `cli` adds the arguments (`export_args`) and calls `export_command`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat
import sys
import tempfile
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from kanade_watchdog.broker.api import Broker
from kanade_watchdog.broker.connect import connect_once
from kanade_watchdog.commands.export_args import KIND_CHOICES
from kanade_watchdog.config.load import ENV_TOKEN, MAX_FILE_BYTES, SECRET_KEYS, load, parse
from kanade_watchdog.core.export import Export, Held, collect
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.resources import Kind
from kanade_watchdog.model.secret import Secret
from kanade_watchdog.model.settings import NatsSettings

KINDS = dict(zip(KIND_CHOICES, (Kind.STREAM, Kind.KV, Kind.OBJECT_STORE), strict=True))
NEW_FILE_MODE = 0o644


class _Lister(Broker):
    async def list_held(self) -> dict[str, Held]:
        """Every stream with its state and creation time (`Broker.list_raw`:
        one request per page of 256)."""
        items, missing = await self.list_raw()
        out: dict[str, Held] = {}
        for item in items:
            held = Held.from_info(item)
            out[str(held.config.get("name", ""))] = held
        for name in missing:
            out.setdefault(name, Held(config={"name": name}, leaderless=True))
        return out


async def fetch(settings: NatsSettings) -> tuple[dict[str, Held], Counter[str]]:
    """What the broker holds, and the API requests it took."""
    lister: list[_Lister] = []
    nc = await connect_once(
        settings, on_error=lambda text: lister[0].note_error(text) if lister else None
    )
    lister.append(_Lister(nc, timeout=settings.request_timeout, domain=settings.jetstream_domain))
    try:
        return await lister[0].list_held(), lister[0].requests
    finally:
        await nc.close()


def settings_for(config_path: str, servers: Sequence[str]) -> NatsSettings:
    """The config file's [nats] (it may declare no resources yet), or the
    defaults when there is no such file; `servers` replace its servers."""
    if os.path.lexists(config_path):
        settings = load(config_path, require_resources=False).nats
    else:
        print(f"export: no config file at {config_path}: default [nats] settings", file=sys.stderr)
        settings = NatsSettings()
        token = os.environ.get(ENV_TOKEN)
        if token:
            settings = replace(settings, token=Secret(token))
    if servers:
        override = parse({"nats": {"servers": list(servers)}}, "--server", require_resources=False)
        settings = replace(settings, servers=override.nats.servers)
    return settings


@dataclass(frozen=True)
class MergeSource:
    text: str
    declared: set[str]  # the streams behind its resources
    mode: int  # permission bits: a merged copy gets the same
    inline_secret: bool  # [nats] holds a token or password in the text itself


def _read_merge_source(path: str) -> MergeSource:
    """The file's text and what it declares. It must be TOML; it need not be
    a valid config yet (validate says what is wrong with it)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: file is over the {MAX_FILE_BYTES} byte limit"])
    try:
        text = raw.decode("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax: {exc}"]) from None
    from kanade_watchdog.report.declaration import declared_streams  # noqa: PLC0415 - see export_command

    nats = document.get("nats")
    inline = isinstance(nats, dict) and bool(SECRET_KEYS & set(nats))
    return MergeSource(text, declared_streams(document), mode, inline)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def output_problem(output: str, merge_source: str | None) -> str | None:
    """Why `output` must not be written. An existing file is replaced only
    when it is the --merge source: then it keeps every byte it had."""
    directory = os.path.dirname(os.path.realpath(output)) or "."
    if not os.path.isdir(directory):
        return f"{output}: no such directory {directory}"
    if os.path.lexists(output) and not (merge_source and _same_file(output, merge_source)):
        return (
            f"{output}: already exists; not replaced (add to it with "
            f"--merge {output} -o {output}, or remove it first)"
        )
    return None


def write_atomic(path: str, text: str, *, new_mode: int = NEW_FILE_MODE) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over
    `path`: a reader sees the old file or the new one, never half of one.
    A replaced file keeps its mode and owner (a config with an inline secret
    stays private); a new one gets `new_mode`."""
    target = os.path.realpath(path)
    owner: tuple[int, int] | None
    try:
        st = os.stat(target)
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = new_mode, None
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fh.fileno(), *owner)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _report(export: Export, where: str) -> str:
    text = f"export: {export.summary()} {where}"
    for skipped in export.skipped:
        text += f"\nexport: {skipped}"
    return text


def export_command(config_path: str, args: argparse.Namespace) -> int:
    """`kanade-watchdog export`: 0 written, 1 broker or output error, 78 bad
    config or merge source (raised as ConfigError for `cli` to print)."""
    # tomlkit is loaded only when exporting: `check` starts every few minutes.
    from kanade_watchdog.report.declaration import MergeError, merge, render  # noqa: PLC0415

    settings = settings_for(config_path, args.server)
    source = _read_merge_source(args.merge) if args.merge else None
    if source is not None and source.inline_secret and not args.output:
        # The merge keeps the file's text, secret included: never print it.
        print(
            f"export: {args.merge} holds an inline token or password; its text is not "
            f"printed: write the merge to a file with -o",
            file=sys.stderr,
        )
        return exitcodes.FAILURE
    if args.output:
        problem = output_problem(args.output, args.merge)
        if problem:
            print(f"export: {problem}", file=sys.stderr)
            return exitcodes.FAILURE
    try:
        held, _requests = asyncio.run(fetch(settings))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
    kinds = [KINDS[k] for k in args.kind] or list(Kind)
    declared = source.declared if source is not None else set()
    export = collect(held, kinds=kinds, match=args.match, skip_streams=declared)
    now = datetime.now(UTC).replace(tzinfo=None)
    if source is not None:
        try:
            text = merge(source.text, export, now=now)
        except MergeError as exc:
            raise ConfigError([f"{args.merge}: {exc}"]) from None
        where = f"added to {args.merge}" if export.entries else f"to add: {args.merge} unchanged"
    else:
        text = render(export, settings=settings, now=now)
        where = "exported"
    if args.output:
        try:
            write_atomic(
                args.output, text, new_mode=source.mode if source is not None else NEW_FILE_MODE
            )
        except OSError as exc:
            print(f"export: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return exitcodes.FAILURE
        where += f" (written to {args.output})"
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    print(_report(export, where), file=sys.stderr)
    return exitcodes.OK
