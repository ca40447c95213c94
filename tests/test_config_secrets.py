"""No secret in a config error: credentials in server URLs are refused without
being echoed, however the URL is written, and a value under a key whose name
looks secret is never shown, wherever in the document it sits."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import string
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kanade_watchdog import cli
from kanade_watchdog.config.load import load, parse
from kanade_watchdog.config.problems import looks_secret
from kanade_watchdog.model.errors import ConfigError
from tests.test_config_fuzz import REPO_TEXT, documents, toml_document

BASE = '[streams.S]\nsubjects = ["s.>"]\n'
SECRET = "Adm/inSecretPW"


def problems(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "watchdog.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    return info.value.problems


def windows(secret: str, size: int = 10) -> list[str]:
    """Every run of `size` characters of the secret: a cut-off echo still leaks."""
    return [secret[i : i + size] for i in range(max(1, len(secret) - size + 1))]


def assert_no_leak(lines: list[str], secret: str) -> None:
    for line in lines:
        for part in windows(secret):
            assert part not in line, f"secret {secret!r} leaked into {line!r}"


# --- credentials in server URLs ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"nats://admin:{SECRET}@127.0.0.1:14230",
        f"nats://{SECRET}@127.0.0.1:14230",
        "nats://admin:Adm?inSecretPW@127.0.0.1:14230",
        "nats://admin:Adm#inSecretPW@127.0.0.1:14230",
        "nats://admin:Adm@inSecretPW@127.0.0.1:14230",
        f"tls://admin:{SECRET}@127.0.0.1:14230/",
        f"admin:{SECRET}@127.0.0.1:14230",
    ],
    ids=["slash", "token-slash", "question", "hash", "at", "tls", "no-scheme"],
)
def test_credentials_in_a_server_url_are_refused_unseen(tmp_path: Path, url: str) -> None:
    """A server URL with a user, password or token is refused, even when the secret
    holds '/', '?', '#' or '@'; the line names the key and shows no part of the secret."""
    lines = problems(f"[nats]\nservers = [{json.dumps(url)}]\n" + BASE, tmp_path)
    assert len(lines) == 1, lines
    assert ": nats.servers: " in lines[0]
    assert "credentials in a server URL" in lines[0]
    assert_no_leak(lines, "inSecretPW")


def test_the_bad_url_among_several_is_named_and_the_others_not_echoed(tmp_path: Path) -> None:
    """With several servers, the line says which one holds credentials and shows none."""
    urls = ["nats://a:4222", f"nats://admin:{SECRET}@b:4222", "nats://c:4222"]
    lines = problems(f"[nats]\nservers = {json.dumps(urls)}\n" + BASE, tmp_path)
    assert len(lines) == 1
    assert "URL 2: credentials" in lines[0]
    assert_no_leak(lines, SECRET)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("nats://h:4222/path", "no path"),
        ("nats://h:4222?x=1", "no query or fragment"),
        ("wss://h:443/ws#top", "no query or fragment"),
        ("nats://h:port", "bad host or port"),
        ("nats://h:70000", "bad host or port"),
        ("nats://:4222", "must name a host"),
        ("http://h:4222", "scheme one of"),
        ("localhost:4222", "scheme one of"),
    ],
)
def test_malformed_server_urls_are_refused(tmp_path: Path, url: str, why: str) -> None:
    """A URL the client cannot use (path, query, bad port, no host, other scheme) is
    refused with the URL shown (it holds no credentials)."""
    lines = problems(f"[nats]\nservers = [{json.dumps(url)}]\n" + BASE, tmp_path)
    assert len(lines) == 1, lines
    assert why in lines[0]
    assert lines[0].endswith(f"got {url!r}")


@pytest.mark.parametrize(
    "url", ["nats://127.0.0.1:4222", "tls://broker.example:4222", "nats://[::1]:4222", "nats://h"]
)
def test_plain_server_urls_load(tmp_path: Path, url: str) -> None:
    """Ordinary server URLs load unchanged."""
    path = tmp_path / "watchdog.toml"
    path.write_text(f"[nats]\nservers = [{json.dumps(url)}]\n" + BASE)
    assert load(str(path)).nats.servers == (url,)


@contextlib.contextmanager
def captured_cli() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Capture stdout/stderr and undo the logging set-up cli.main does."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("command", ["validate", "plan", "apply", "check"])
def test_commands_refuse_a_url_with_credentials_without_printing_it(
    tmp_path: Path, command: str
) -> None:
    """Every one-shot command stops at the config (no connection attempt that
    would print the URL) and prints no part of the password."""
    path = tmp_path / "watchdog.toml"
    path.write_text(f'[nats]\nservers = ["nats://admin:{SECRET}@127.0.0.1:14230"]\n' + BASE)
    with captured_cli() as (out, err):
        code = cli.main([command, "--config", str(path)])
    assert code in (78, 3)  # check speaks the monitoring plugin's UNKNOWN
    assert "credentials in a server URL" in err.getvalue()
    assert_no_leak([out.getvalue(), err.getvalue()], "inSecretPW")


# --- values under secret-looking keys ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'[nats]\nservers = ["nats://h:4222"]\n[nats.tls]\npassword = "{SECRET}"\n' + BASE,
        f'[nats]\nservers = [{{ url = "nats://h:4222", password = "{SECRET}" }}]\n' + BASE,
        f'[nats]\nservers = "nats://h:4222"\npassword = ["{SECRET}"]\nuser = "u"\n' + BASE,
        f'[nats]\ntls = {{ ca_file = 5, auth = {{ token = "{SECRET}" }} }}\n' + BASE,
        BASE + f'placement = {{ cluster = 1, secret = "{SECRET}" }}\n',
        BASE + f'metadata = {{ db = {{ password = "{SECRET}" }} }}\n',
        BASE + f'subjects_ = [{{ nkey_seed = "{SECRET}" }}]\n',
        f'[streams.TOKENS]\nsubjects = "{SECRET}"\n',
        f'[kv_buckets]\napi_key = "{SECRET}"\n',
        f'[watchdog]\nresync_interval = {{ jwt = "{SECRET}" }}\n' + BASE,
        f'x = {{ y = [{{ Private_Key = "{SECRET}" }}] }}\n' + BASE,
        BASE + f'description = {{ creds = "{SECRET}", why = 1 }}\n',
    ],
    ids=[
        "tls-unknown-key",
        "server-table",
        "password-list",
        "tls-nested",
        "placement",
        "metadata-nested",
        "unknown-key-list",
        "secret-named-stream",
        "section-entry",
        "watchdog-value",
        "top-level-deep",
        "description-table",
    ],
)
def test_values_under_secret_keys_are_never_shown(tmp_path: Path, text: str) -> None:
    """A value under a key named like a secret (password, token, secret, seed, nkey,
    creds, jwt, private key...) is shown as <hidden>, at any depth and in any table."""
    lines = problems(text, tmp_path)
    assert lines
    assert_no_leak(lines, SECRET)


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "PASSWORD",
        "db_passwd",
        "pwd",
        "token",
        "auth_token",
        "client_secret",
        "seed",
        "nkey",
        "creds",
        "credentials",
        "jwt",
        "private_key",
        "api_key",
        "apikey",
    ],
)
def test_the_secret_name_rule(name: str) -> None:
    """Names containing pass, pwd, token, secret, seed, nkey, cred, jwt, private or
    api key look secret; a *_file key (a path to a secret) and plain names do not."""
    assert looks_secret(name)
    assert not looks_secret(name + "_file")


@pytest.mark.parametrize("name", ["history", "subjects", "description", "owner", "key_file"])
def test_ordinary_names_are_not_secret(name: str) -> None:
    """Ordinary keys keep their values visible in problem lines."""
    assert not looks_secret(name)


def test_a_secret_file_path_is_still_shown(tmp_path: Path) -> None:
    """A *_file key holds where the secret is, not the secret: its path is shown."""
    missing = tmp_path / "nowhere"
    lines = problems(f'[nats]\ntoken_file = "{missing}"\n' + BASE, tmp_path)
    assert lines == [
        f"{tmp_path / 'watchdog.toml'}: nats.token_file: no such file, got '{missing}'"
    ]


# --- the property: a secret placed anywhere never leaks --------------------------------
# The oracle is a twin: the same document with another secret of the same shape
# must give the very same lines. Any echo of the secret, whole or cut, differs.

SECRET_NAMES = st.builds(
    lambda pre, word, post: pre + word + post,
    st.sampled_from(["", "db_", "nats_", "X", "client-"]),
    st.sampled_from(
        [
            "password",
            "Passwd",
            "pwd",
            "token",
            "SECRET",
            "seed",
            "nkey",
            "creds",
            "jwt",
            "private_key",
            "api_key",
        ]
    ),
    st.sampled_from(["", "s", "_value", "2"]),
).filter(looks_secret)
SECRET_TEXT = st.text(
    alphabet=string.ascii_letters + string.digits + "/?#@:!$%&*+,;=~-_.", min_size=16, max_size=40
)
# Every letter and digit to another of its class: the twin differs wherever
# the secret has one, and is valid or invalid exactly where the secret is.
TWIN = str.maketrans(
    string.ascii_lowercase + string.ascii_uppercase + string.digits,
    string.ascii_lowercase[1:] + "a" + string.ascii_uppercase[1:] + "A" + string.digits[1:] + "0",
)


class Slot:
    """Where the secret goes; filled in once per twin."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Slot:
        return self


SLOT = Slot()


def fill(node: Any, secret: str) -> Any:
    if node is SLOT:
        return secret
    if isinstance(node, dict):
        return {k: fill(v, secret) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, secret) for v in node]
    return node


def containers(node: Any) -> list[dict[str, Any] | list[Any]]:
    """Every table and list in a decoded document, the document itself first."""
    found: list[dict[str, Any] | list[Any]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            found.append(item)
            stack.extend(item)
    return found


REPO_DOC = tomllib.loads(REPO_TEXT)


def repo_like() -> dict[str, Any]:
    """The real config with the tables a secret could be misplaced into present."""
    doc = copy.deepcopy(REPO_DOC)
    doc["nats"]["tls"] = {"verify": True}
    doc["streams"]["RESULTS"]["placement"] = {"cluster": "c1"}
    doc["streams"]["RESULTS"]["metadata"] = {"owner": "ops"}
    return doc


SLOT_VALUES = st.sampled_from([SLOT, [SLOT], {"inner": SLOT}, [{"v": SLOT}], {"a": [SLOT]}])


@st.composite
def documents_with_a_secret(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    doc = draw(st.one_of(st.builds(repo_like), documents))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        name, value = draw(SECRET_NAMES), copy.deepcopy(draw(SLOT_VALUES))
        target = draw(st.sampled_from(containers(doc)))
        if isinstance(target, dict):
            target[name] = value
        else:
            target.insert(draw(st.integers(0, len(target))), {name: value})
    if draw(st.booleans()):  # break a value next to it, so tables get shown whole
        spot = draw(st.sampled_from([c for c in containers(doc) if isinstance(c, dict)]))
        if spot:
            spot[draw(st.sampled_from(sorted(spot)))] = draw(st.sampled_from([1, "bad", [2]]))
    return doc, draw(SECRET_TEXT)


def lines_of(doc: dict[str, Any], path: str) -> list[str]:
    try:
        parse(doc, path)
    except ConfigError as exc:
        return [*exc.problems, str(exc)]
    return []


@given(documents_with_a_secret())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_secret_placed_anywhere_never_leaks(case: tuple[dict[str, Any], str]) -> None:
    """Property: random documents with secret-named keys holding a random secret,
    dropped into random tables and lists, print the same lines whatever the secret."""
    doc, secret = case
    path = "/fuzz/watchdog.toml"
    assert lines_of(fill(doc, secret), path) == lines_of(fill(doc, secret.translate(TWIN)), path)


@given(documents_with_a_secret())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_secret_placed_anywhere_in_a_file_never_leaks(case: tuple[dict[str, Any], str]) -> None:
    """The same through a real TOML file and load(), secret files and TLS checks included."""
    doc, secret = case
    seen: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "watchdog.toml"
        for text in (secret, secret.translate(TWIN)):
            path.write_text(toml_document(fill(doc, text)), encoding="utf-8")
            try:
                load(str(path))
                seen.append([])
            except ConfigError as exc:
                seen.append([*exc.problems, str(exc)])
    assert seen[0] == seen[1]


URL_FORMS = [
    "nats://admin:{}@127.0.0.1:4222",
    "nats://{}@127.0.0.1:4222",
    "tls://user:{}@broker:4222",
    "admin:{}@broker:4222",
    "ws://u:{}@h:80/path",
]


@given(st.sampled_from(URL_FORMS), SECRET_TEXT, st.integers(0, 2))
@settings(max_examples=200, deadline=None)
def test_no_url_secret_leaks(form: str, secret: str, position: int) -> None:
    """Property: whatever characters the password or token holds, a URL carrying it
    is refused and prints the same lines as with any other secret."""

    def lines(text: str) -> list[str]:
        servers = ["nats://a:4222", "nats://b:4222"]
        servers.insert(position, form.format(text))
        return lines_of({"nats": {"servers": servers}, "kv_buckets": {"b": {}}}, "/f.toml")

    found = lines(secret)
    assert any("credentials in a server URL" in line for line in found), found
    assert found == lines(secret.translate(TWIN))
