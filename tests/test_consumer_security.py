"""The documented consumer grants are enough: a daemon as the least-privilege
user plus SECURITY.md's consumer block creates a declared consumer and heals
its delete from the advisory, with no request or subscription denied and
nothing deleted."""

from __future__ import annotations

import re
from pathlib import Path

from tests.audit import audited
from tests.conftest import StartServer
from tests.daemonproc import DaemonProc, eventually
from tests.jsapi import request
from tests.natsserver import NatsServer
from tests.test_security import (
    WATCHDOG_USER,
    admin,
    documented_block,
    least_privilege_conf,
    new_creds,
    secret_file,
    violations,
    write_config,
)

CONSUMERS = """
[streams.ORDERS]
subjects = ["orders.>"]

[consumers.ORDERS.shipper]
ack_policy = "explicit"
filter_subject = "orders.new"
"""


def with_consumer_grants(conf: str) -> str:
    """The least-privilege block with the documented consumer subjects added."""
    grants = documented_block("least-privilege-consumers")
    publish = re.findall(r'"([^"]+)"', grants.split("subscribe:")[0])
    subscribe = re.findall(r'"([^"]+)"', grants.split("subscribe:")[1])
    assert publish
    assert subscribe
    pub_lines = "".join(f'            "{s}"\n' for s in publish)
    sub_lines = "".join(f'            "{s}"\n' for s in subscribe)
    conf = conf.replace('"$JS.API.INFO"\n', '"$JS.API.INFO"\n' + pub_lines, 1)
    return conf.replace('"_INBOX.>"\n', '"_INBOX.>"\n' + sub_lines, 1)


async def test_the_documented_consumer_grants_are_enough(
    tmp_path: Path, start_server: StartServer
) -> None:
    """Created, then healed at once after a delete; no violation logged by the broker."""
    creds = new_creds()
    conf = with_consumer_grants(least_privilege_conf(creds))
    srv = start_server(NatsServer(tmp_path, extra_conf=conf))
    pw = secret_file(tmp_path / "pw", creds.password)
    config = write_config(
        tmp_path / "watchdog.toml",
        srv.url,
        f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"',
        resources=CONSUMERS,
    )
    async with (
        admin(srv.url, user="admin", password=creds.admin_password) as nc,
        audited(nc) as audit,
    ):
        daemon = DaemonProc(config).start()
        try:

            async def present() -> bool:
                answer = await request(nc, "$JS.API.CONSUMER.INFO.ORDERS.shipper")
                return "error" not in answer

            await eventually(present, what="the declared consumer")
            await nc.request("$JS.API.CONSUMER.DELETE.ORDERS.shipper", b"", timeout=5)
            await eventually(present, within=5, what="the consumer healed")
        finally:
            daemon.close()
    # The create and the heal; a heal raced by a second pass may send one more
    # create, which the broker refuses (action "create" never overwrites).
    assert audit.count("CONSUMER.CREATE") >= 2, audit.verbs
    assert audit.destructive == 0, audit.verbs
    assert violations(srv) == []
    assert daemon.raw == []
