"""`/metrics`, scraped over real HTTP after a real story (SQLite and PostgreSQL).

The story: an issue labelled, a pledge (applied), a refused goal (a reply sent), a redelivery
(duplicate), a forged signature (refused), a forge write that fails once (retried); then a
scrape, parsed with prometheus-client's own parser, whose numbers must be the story's. The
Grafana dashboard in deploy/ is checked against that scrape, so it cannot ask for a metric the
service does not have.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from bountybot.app import create_app
from bountybot.config import Settings
from bountybot.governor import Governor
from bountybot.payments.stripe_api import StripeGateway
from bountybot.resources import SETTINGS
from bountybot.service import RUNTIME
from bountybot.storage import tables as t
from bountybot.storage.engine import create_engine

from fakes.github import FakeGitHub
from fakes.stripe import FakeStripe, stripe_server  # noqa: F401
from github_harness import MAINTAINER, REPO, GitHubBot

METRICS_TOKEN = "metrics-Scrape-7f3a9c21e5"
DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
PER_MINUTE, PER_HOUR = 72, 450
STRIPE_WHSEC = "whsec_test_metrics0123456789"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def bot(db_url: str, github_server: FakeGitHub) -> AsyncIterator[GitHubBot]:
    # The governor's clock stands still: the budget left is the writes made, nothing expires.
    governor = Governor(per_minute=PER_MINUTE, per_hour=PER_HOUR, clock=lambda: 1000.0)
    bot = await GitHubBot.start(db_url, github_server, governor=governor,
                                sections={"server": {"metrics_token": METRICS_TOKEN}})
    try:
        yield bot
    finally:
        await bot.close()


async def scrape(bot: GitHubBot, token: str | None = METRICS_TOKEN) -> str:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = await bot.client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return await response.text()


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def names(text: str) -> set[str]:
    """Every series name the scrape offers, with the suffixes of its type, whether or not it
    has samples yet (a labelled counter nothing has counted is still described)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("_count", "_sum", "")}
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in suffixes.get(family.type, ("",))}


async def story(bot: GitHubBot) -> None:
    assert (await bot.label(1)).status == 202
    # The first comment the bot writes fails once on GitHub's side: it is tried again.
    bot.fake.fail_next("POST", r"/issues/1/comments$", 502)
    assert (await bot.comment("alice", "/pledge 20", delivery="d-pledge")).status == 202
    await bot.settle()
    data = json.loads((await bot.rows(t.Delivery))[-1].payload)
    assert (await bot.post("issue_comment", data, delivery="d-pledge")).status == 200
    forged = await bot.post("issue_comment", data, delivery="d-forged", signature="sha256=00")
    assert forged.status == 401
    assert (await bot.comment("mallory", "/goal 5")).status == 202  # not a maintainer
    await bot.settle()
    assert (await bot.client.get("/api/v1/statements/github/backers/alice")).status == 200
    assert (await bot.client.get("/Codertocat/Hello-World/alice")).status == 404


async def test_a_scrape_counts_the_story(bot: GitHubBot) -> None:
    await story(bot)
    text = await scrape(bot)
    found = samples(text)

    received = "bountybot_deliveries_received_total"
    assert value(found, received, forge="github", answer="stored") == 3
    assert value(found, received, forge="github", answer="duplicate") == 1
    assert value(found, received, forge="github", answer="refused") == 1
    assert value(found, "bountybot_deliveries_handled_total", forge="github") == 3
    assert value(found, "bountybot_deliveries_failed_total", forge="github") == 0
    assert value(found, "bountybot_commands_total", command="pledge", outcome="applied") == 1
    assert value(found, "bountybot_commands_total", command="goal", outcome="refused") == 1
    assert sum(v for (n, labels), v in found.items() if n == "bountybot_commands_total") == 2

    outcomes = "bountybot_outbox_outcomes_total"
    sent = {kind: value(found, outcomes, kind=kind, outcome="sent")
            for kind in ("summary", "reply", "reaction")}
    retried = sum(v for (n, labels), v in found.items()
                  if n == outcomes and ("outcome", "retry") in labels)
    writes = len(bot.fake.writes())
    assert sent["reply"] == 1 and sent["reaction"] == 1 and retried == 1
    # Every write started is counted, the failed one too; each summary sent is one write.
    assert value(found, "bountybot_forge_writes_total", forge="github") == writes
    assert sent["summary"] == writes - 3 >= 1
    assert value(found, "bountybot_forge_write_budget", key="github:token") == \
        PER_MINUTE - writes

    assert value(found, "bountybot_database_up") == 1
    assert value(found, "bountybot_deliveries_pending") == 0
    assert value(found, "bountybot_deliveries_oldest_due_seconds") == 0
    assert value(found, "bountybot_outbox_messages", state="pending") == 0
    assert value(found, "bountybot_outbox_messages", state="dead") == 0
    assert ("bountybot_db_pool_size", frozenset({("pool", "write")})) in found
    assert value(found, "bountybot_db_connections_in_use", pool="write") >= 0

    latency = "bountybot_http_request_duration_seconds_count"
    assert value(found, latency, route="/webhooks/github") == 5
    assert value(found, latency, route="/api/v1/statements/{forge}/backers/{login}") == 1
    assert value(found, latency, route="unmatched") == 1
    assert value(found, "bountybot_http_responses_total", route="/webhooks/github",
                 status="4xx") == 1


async def test_no_secret_user_or_repo_in_a_scrape(bot: GitHubBot) -> None:
    await story(bot)
    text = await scrape(bot)
    secrets = bot.app[SETTINGS].secrets()
    assert {"github.token", "github.webhook_secret", "server.metrics_token"} <= set(secrets)
    for secret in secrets.values():
        assert secret not in text
    for word in ("alice", "mallory", MAINTAINER, *REPO.split("/"), "d-pledge", "d-forged"):
        assert word.lower() not in text.lower(), word


async def test_the_metrics_token_is_asked_for(bot: GitHubBot) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-123456"},
                    {"Authorization": METRICS_TOKEN},
                    {"Authorization": f"Basic {METRICS_TOKEN}"}):
        response = await bot.client.get("/metrics", headers=headers)
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "bountybot_" not in await response.text()
    assert "bountybot_deliveries_received" in await scrape(bot)


async def test_without_a_token_metrics_are_open(db_url: str, github_server: FakeGitHub) -> None:
    bot = await GitHubBot.start(db_url, github_server)
    try:
        assert bot.app[SETTINGS].server.metrics_token is None
        found = samples(await scrape(bot, token=None))
        assert value(found, "bountybot_database_up") == 1
    finally:
        await bot.close()


async def test_payment_calls_by_outcome(db_url: str, github_server: FakeGitHub,
                                        stripe_server: FakeStripe) -> None:  # noqa: F811
    gateway = StripeGateway(stripe_server.api_key, api_base=stripe_server.url, timeout=0.5)
    bot = await GitHubBot.start(
        db_url, github_server, payments={"provider": "stripe"}, gateway=gateway,
        payment_loop=False,
        sections={"stripe": {"api_key": stripe_server.api_key, "webhook_secret": STRIPE_WHSEC,
                             "api_base": stripe_server.url},
                  "server": {"public_url": "https://bounties.example.org"}})
    try:
        await bot.label(1)
        await bot.comment("alice", "/pledge 50")
        await bot.settle()
        payments = bot.app[RUNTIME].payments
        assert payments is not None
        await payments.run_once()  # alice's pledge: its checkout session made at Stripe
        forged = await bot.client.post("/webhooks/stripe", data=b'{"id": "evt_1"}',
                                       headers={"Stripe-Signature": "t=1,v1=00"})
        assert forged.status == 401
        text = await scrape(bot, token=None)
        found = samples(text)
        calls = {(dict(labels)["kind"], dict(labels)["outcome"]): v
                 for (n, labels), v in found.items() if n == "bountybot_payment_calls_total"}
        assert calls == {("checkout", "done"): 1}
        assert len(stripe_server.sessions) == 1
        # Stripe's door is timed, but no forge delivery is counted for it.
        assert value(found, "bountybot_http_responses_total", route="/webhooks/stripe",
                     status="4xx") == 1
        assert not [n for (n, labels), v in found.items()
                    if n == "bountybot_deliveries_received_total" and ("forge", "stripe") in labels]
        secrets = bot.app[SETTINGS].secrets()
        assert {"stripe.api_key", "stripe.webhook_secret"} <= set(secrets)
        for secret in secrets.values():
            assert secret not in text
        assert "alice" not in text
    finally:
        await bot.close()
        gateway.close()


async def test_a_scrape_answers_when_the_database_does_not(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'absent' / 'bountybot.db'}"
    engine = create_engine(url)
    app = create_app(Settings.model_validate({"database": {"url": url}}), engine=engine,
                     features=[])
    try:
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/metrics")
            assert response.status == 200
            found = samples(await response.text())
    finally:
        await engine.dispose()
    assert value(found, "bountybot_database_up") == 0
    assert not [n for n, _ in found if n in ("bountybot_deliveries_pending",
                                             "bountybot_outbox_messages")]
    # What needs no database is still there.
    assert ("bountybot_db_pool_size", frozenset({("pool", "write")})) in found


def dashboard_expressions(node: Any) -> list[str]:
    """Every `expr` of the dashboard's panels and template variables."""
    if isinstance(node, dict):
        own = [node["expr"]] if isinstance(node.get("expr"), str) else []
        query = node.get("query")
        if isinstance(query, dict) and isinstance(query.get("query"), str):
            own.append(query["query"])
        return own + [e for child in node.values() for e in dashboard_expressions(child)]
    if isinstance(node, list):
        return [e for child in node for e in dashboard_expressions(child)]
    return []


async def test_the_dashboard_reads_only_metrics_that_exist(bot: GitHubBot) -> None:
    await story(bot)
    offered = names(await scrape(bot))
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    expressions = dashboard_expressions(dashboard["panels"])
    assert len(expressions) >= 10
    used = {name for e in expressions
            for name in re.findall(r"\b((?:bountybot|process)_[a-z_]+)", e)}
    assert used, "the dashboard reads no metric"
    assert used <= offered, sorted(used - offered)
    # Every panel reads the Prometheus data source given at import.
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
