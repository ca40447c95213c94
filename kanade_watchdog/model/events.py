"""The daemon's event vocabulary: what it logs, and the journal MESSAGE_ID of each.

Pure table. Every INFO-or-louder line the daemon writes is one of these, so
an operator can filter on `KANADE_ACTION=` or `MESSAGE_ID=` (see README).
The IDs are fixed forever: dashboards and alerts depend on them.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    BLOCKED = "blocked"
    FAILED = "failed"
    RECOVERED = "recovered"
    NEWER_SPEC = "newer_spec"
    BROKER_LOST = "broker_lost"
    BROKER_BACK = "broker_back"
    WAITING = "waiting"
    READY = "ready"
    RELOADED = "reloaded"
    RELOAD_FAILED = "reload_failed"
    STOPPING = "stopping"
    STARTED = "started"


MESSAGE_IDS: dict[Event, str] = {
    Event.CREATED: "2494662d55f9457b90cc4b68b085a3ca",
    Event.UPDATED: "54e88ae21d884d3aa79c63bf2e514317",
    Event.BLOCKED: "95a5a22a1d634d5a88fad22ac4647c80",
    Event.FAILED: "e1892a0b32fb4e7da8d991b9d0f72b5b",
    Event.RECOVERED: "373b0be913564b2fb0104eb49bd49ca2",
    Event.NEWER_SPEC: "85600db4da3445508d47dc18f844beca",
    Event.BROKER_LOST: "7e4491d7f2c947ad938a00b7a89a0c03",
    Event.BROKER_BACK: "c641e0653d5e45ebae50dd37f9a20dd2",
    Event.WAITING: "f06b1ab3b2a04490b287f6af68615c25",
    Event.READY: "7b005770598742bfbd5a8041ee288b05",
    Event.RELOADED: "f0ed4a4084fc4067b65dd36bb8d9a6b2",
    Event.RELOAD_FAILED: "4e9be2aa9ad94f4185c446100d2c139d",
    Event.STOPPING: "fb7779d660e24042aaf152f80bbbe3d9",
    Event.STARTED: "a754acde8e514f0f967c300386378446",
}


class Trigger(StrEnum):
    """Why a resource was looked at (KANADE_TRIGGER)."""

    STARTUP = "startup"
    RESYNC = "resync"
    RECONNECT = "reconnect"
    ADVISORY = "advisory"
    RELOAD = "reload"
    RETRY = "retry"
    VERIFY = "verify"  # looked at again shortly after a write of ours
