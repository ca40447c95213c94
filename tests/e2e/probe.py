"""A second NATS client for the end-to-end tests, run INSIDE the container
with the test venv's Python (the container's broker listens on its own
loopback only): `probe.py list` prints the stream names as JSON,
`probe.py delete NAME` deletes one stream the way an operator would.
"""

from __future__ import annotations

import asyncio
import json
import sys

import nats


async def main(argv: list[str]) -> int:
    nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=2, allow_reconnect=False)
    try:
        if argv[:1] == ["list"]:
            msg = await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)
            print(json.dumps(sorted(json.loads(msg.data).get("streams") or [])))
            return 0
        if argv[:1] == ["delete"] and len(argv) == 2:
            msg = await nc.request(f"$JS.API.STREAM.DELETE.{argv[1]}", b"", timeout=5)
            print(msg.data.decode())
            return 0 if json.loads(msg.data).get("success") else 1
    finally:
        await nc.close()
    print("usage: probe.py list | delete NAME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
