"""Secrets never appear in output, logs or alerts: `config show`, CLI errors, store errors, structlog lines.

The secrets: the webhook URL (its path is the token), passwords and tokens inside storage.url / nats.url,
storage.password. Nothing here contacts anything but closed ports on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from marketprism_dagster.cli import _register_all, app
from marketprism_dagster.config import load_config
from marketprism_dagster.logs import configure_logging, mask_url, redact
from marketprism_dagster.nats_server import free_port
from marketprism_dagster.storage.base import StoreUnavailable
from marketprism_dagster.storage.server import ServerStore
from sensors.webhook import alert_payload, send_alert

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_TOKEN = "T0AAA/B0BBB/XwebhookSECRET42"
CH_PASSWORD = "chPASSWORDsecret"
NATS_PASSWORD = "natsPASSWORDsecret"
STORE_PASSWORD = "storePASSWORDsecret"
SECRETS = (WEBHOOK_TOKEN, "XwebhookSECRET42", CH_PASSWORD, NATS_PASSWORD, STORE_PASSWORD)


@pytest.fixture
def secret_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        "MARKETPRISM_CONFIG": str(REPO / "config" / "marketprism.yaml"),
        "MARKETPRISM__DATA_DIR": str(tmp_path / "data"),
        "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/services/{WEBHOOK_TOKEN}",
        "CLICKHOUSE_URL": f"http://reader:{CH_PASSWORD}@127.0.0.1:{free_port()}",
        "CLICKHOUSE_PASSWORD": STORE_PASSWORD,
        "MARKETPRISM_NATS_URL": f"nats://alice:{NATS_PASSWORD}@127.0.0.1:{free_port()}",
        "MARKETPRISM__NATS__EMBEDDED": "false",
    }
    yield env
    structlog.reset_defaults()


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secret(s) {leaked} in: {text}"


def run_cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    _register_all()
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output  # stdout and stderr interleaved


def test_config_show_masks_the_webhook_and_credentials_inside_urls(secret_env):
    code, out = run_cli(secret_env, "config", "show", "--format", "json")
    assert code == 0, out
    assert_no_secret(out)
    rows = {r["key"]: r for r in map(json.loads, out.splitlines()[1:])}
    assert rows["alerts.webhook_url"]["value"] == f"{secret_env['ALERT_WEBHOOK_URL'].split('/services')[0]}/****"
    assert rows["alerts.webhook_url"]["source"] == "env:ALERT_WEBHOOK_URL"
    assert rows["storage.url"]["value"].startswith("http://reader:****@127.0.0.1:")
    assert rows["nats.url"]["value"].startswith("nats://alice:****@127.0.0.1:")
    assert rows["storage.password"]["value"] == "****"


def test_cli_errors_name_the_unreachable_server_without_its_credentials(secret_env):
    code, out = run_cli(secret_env, "init")  # NATS does not answer and embedded is off
    assert code == 2 and "NATS at nats://alice:****@127.0.0.1:" in out and "does not answer" in out, out
    assert_no_secret(out)
    env = {**secret_env, "MARKETPRISM__STORAGE__BACKEND": "clickhouse"}
    code, out = run_cli(env, "query", "SELECT 1")
    assert code == 2 and "ClickHouse server at http://reader:****@127.0.0.1:" in out, out
    assert_no_secret(out)


def test_store_errors_never_embed_the_url_password():
    url = f"http://reader:{CH_PASSWORD}@127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable) as err:
        ServerStore(url, "reader", STORE_PASSWORD)
    assert "did not answer" in str(err.value) and "reader:****@127.0.0.1" in str(err.value)
    assert_no_secret(str(err.value))


def test_log_lines_and_alert_failures_never_carry_the_webhook_or_a_url_password(secret_env, capsys):
    settings = load_config(env=secret_env).settings  # registers the secrets of the effective settings
    configure_logging("INFO", "json")
    log = structlog.get_logger("test")
    # a webhook that refuses the connection: the alert's line and the failure's line, both masked
    assert not send_alert(settings.alerts.webhook_url, alert_payload("check_failed", "hot/trade recent_window"))
    log.warning("collector.nats_connect_failed", url=settings.nats.url, error=f"cannot reach {settings.nats.url}")
    log.error("anything", detail=f"password={STORE_PASSWORD}", nested={"u": settings.storage.url})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [e["event"] for e in lines] == ["alert", "alert.post_failed", "collector.nats_connect_failed", "anything"]
    assert_no_secret(json.dumps(lines))
    assert lines[1]["url"] == mask_url(settings.alerts.webhook_url) and lines[1]["url"].endswith("/****")
    assert lines[2]["url"].startswith("nats://alice:****@127.0.0.1:")
    assert lines[3]["detail"] == "password=****"


def test_mask_url_keeps_host_and_port_and_hides_credentials_paths_and_tokens():
    assert mask_url("http://127.0.0.1:8123") == "http://127.0.0.1:8123"
    assert mask_url("nats://alice:pw@10.0.0.1:4222") == "nats://alice:****@10.0.0.1:4222"
    assert mask_url("nats://s3cr3ttoken@10.0.0.1:4222") == "nats://****@10.0.0.1:4222"
    assert mask_url("https://hooks.slack.com/services/T0/B0/X") == "https://hooks.slack.com/****"
    assert mask_url("https://h.example/x?token=abc") == "https://h.example/****"
    assert mask_url("not a url") == "****"
    assert redact("connect nats://u:p4ss@h:1 failed") == "connect nats://u:****@h:1 failed"
