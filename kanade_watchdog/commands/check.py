"""`kanade-watchdog check`: the monitoring plugin's one status line (or JSON).

Apart from the other one-shot commands so that `plan` imports neither the
check report nor the cluster facts; the consumers' modules are imported only
when the file declares consumers (`oneshot.consumer_plan`).
"""

from __future__ import annotations

import time

from kanade_watchdog.commands.oneshot import Output, consumer_plan, observe, utcnow
from kanade_watchdog.core.cluster import cluster_facts
from kanade_watchdog.core.plan import plan
from kanade_watchdog.core.serverinfo import needs_newer_text
from kanade_watchdog.core.undeclared import undeclared
from kanade_watchdog.model.errors import BrokerError
from kanade_watchdog.model.settings import Config
from kanade_watchdog.report import check


async def check_command(config: Config) -> check.CheckReport:
    started = time.perf_counter()
    try:
        broker, observed = await observe(config)
    except BrokerError as exc:
        return check.check_failure("CRITICAL", [check.broker_problem(exc)])
    server = broker.server
    try:
        consumer_decisions = await consumer_plan(broker, config, set(observed))
    except BrokerError as exc:
        return check.check_failure("CRITICAL", [check.broker_problem(exc)])
    finally:
        await broker.nc.close()
    decisions = plan(config.resources, observed, utcnow(), server=server)
    facts = cluster_facts(config.resources, observed)
    extra = undeclared(set(config.by_stream()), observed, config.ignore)
    return check.check_report(
        decisions,
        facts,
        seconds=time.perf_counter() - started,
        undeclared=extra,
        needs_newer=needs_newer_text(decisions, server),
        consumers=[(d.action, d.consumer.name) for d in consumer_decisions],
    )


def check_output(report: check.CheckReport, *, as_json: bool, path: str) -> Output:
    if as_json:
        return Output(report.code, [report.json(config=path)], raw=True)
    return Output(report.code, [report.line()])
