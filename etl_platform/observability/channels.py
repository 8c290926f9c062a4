"""Alert messages and the channels that carry them: a generic JSON webhook, Slack (incoming
webhook, Slack's message format) and e-mail over SMTP.

No Dagster here: the alerts sensor (`automation/alerts.py`) decides what to send, this module
renders and delivers. URLs and credentials come from environment variables only: a `Target`
names the variable, never its value, so targets can be kept in a sensor cursor.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from etl_platform.config import secrets
from etl_platform.config.settings import ALERT_SLACK_ENV, ALERT_SMTP_URL_ENV, ALERT_WEBHOOK_ENV, AlertSettings
from etl_platform.security.redaction import excerpt, redact_text

TIMEOUT_S = 5.0
FAILURE, RESOLVED = "failure", "resolved"


class DeliveryError(Exception):
    """A channel did not take the alert; the message names the channel, never its URL."""


def run_url(run_id: str) -> str:
    return f"{AlertSettings.from_env().ui_url}/runs/{run_id}"


@dataclass(frozen=True)
class Alert:
    """One message: a (tenant, sources) failure chain opened, or resolved."""

    kind: str  # failure | resolved
    tenant: str
    sources: tuple[str, ...]  # '*': the tenant as a whole (e.g. its normalization)
    partitions: tuple[str, ...]  # '<day>|<tenant>' keys, or a range 'start...end'
    run_id: str
    run_url: str
    error_class: str | None = None
    error_kind: str | None = None  # permanent | transient
    message: str | None = None  # redacted
    http_status: int | None = None
    attempt: int | None = None
    note: str | None = None  # why now (e.g. "retries exhausted")
    at: str = ""  # ISO time of the run's end

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.tenant}:{','.join(self.sources)}:{self.run_id}"

    def title(self) -> str:
        sources = ", ".join(self.sources)
        if self.kind == RESOLVED:
            return f"[etl-platform] RESOLVED: tenant {self.tenant}, source {sources}"
        return f"[etl-platform] FAILED: tenant {self.tenant}, source {sources} ({self.error_class})"

    def lines(self) -> list[str]:
        out = [f"tenant: {self.tenant}", f"source(s): {', '.join(self.sources)}"]
        if self.partitions:
            out.append(f"partition(s): {', '.join(self.partitions)}")
        if self.kind == FAILURE:
            status = f" (HTTP {self.http_status})" if self.http_status else ""
            out.append(f"error: {self.error_class}{status}, {self.error_kind}")
            out.append(f"message: {self.message}")
            if self.attempt:
                out.append(f"attempt: {self.attempt}")
        else:
            out.append("succeeded again")
        if self.note:
            out.append(f"note: {self.note}")
        out.append(f"run: {self.run_url}")
        return out

    def text(self) -> str:
        return "\n".join([self.title(), *self.lines()])

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "sources": list(self.sources), "partitions": list(self.partitions),
                "id": self.id, "title": self.title(), "text": self.text()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "sources": tuple(known["sources"]), "partitions": tuple(known["partitions"])})

    def slack(self) -> dict[str, Any]:
        """Slack's incoming-webhook payload: `text` (notifications) and blocks."""
        emoji = ":white_check_mark:" if self.kind == RESOLVED else ":rotating_light:"
        body = "\n".join(f"*{line.split(': ', 1)[0]}*: {line.split(': ', 1)[1]}" if ": " in line else line
                         for line in self.lines()[:-1])
        return {
            "text": f"{emoji} {self.title()}",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": excerpt(self.title(), 150)}},
                {"type": "section", "text": {"type": "mrkdwn", "text": excerpt(body, 2900)}},
                {"type": "section", "text": {"type": "mrkdwn", "text": f"<{self.run_url}|Open the run in Dagster>"}},
            ],
        }


@dataclass(frozen=True)
class Target:
    """Where to deliver: a channel type and the variable holding its URL (and for e-mail the
    recipients). `key` identifies it in the sensor's cursor."""

    type: str  # webhook | slack | email
    url_env: str  # webhook/slack URL, or the SMTP server URL for e-mail
    to: tuple[str, ...] = field(default=())
    scope: str = "platform"  # platform | tenant:<id>

    @property
    def key(self) -> str:
        return f"{self.scope}:{self.type}:{self.url_env}:{','.join(self.to)}"

    def describe(self) -> str:
        return f"{self.type} channel ({self.scope}, {self.url_env})"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "to": list(self.to)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        return cls(data["type"], data["url_env"], tuple(data.get("to") or ()), data.get("scope", "platform"))


def platform_targets() -> list[Target]:
    """The platform-wide default channels (every tenant's alerts, unless the tenant opts out):
    those whose variable is set."""
    out = []
    if secrets.value(ALERT_WEBHOOK_ENV):
        out.append(Target("webhook", ALERT_WEBHOOK_ENV))
    if secrets.value(ALERT_SLACK_ENV):
        out.append(Target("slack", ALERT_SLACK_ENV))
    recipients = AlertSettings.from_env().email_to
    if recipients:
        out.append(Target("email", ALERT_SMTP_URL_ENV, recipients))
    return out


def tenant_targets(tenant: Any) -> list[Target]:
    """A tenant's channels (its `alerts:` in the tenants file) plus the platform's defaults."""
    alerts = getattr(tenant, "alerts", None)
    scope = f"tenant:{tenant.id}"
    out: list[Target] = []
    for channel in getattr(alerts, "channels", []):
        if channel.type == "webhook":
            out.append(Target("webhook", channel.url_env, scope=scope))
        elif channel.type == "slack":
            out.append(Target("slack", channel.webhook_url_env, scope=scope))
        else:
            out.append(Target("email", channel.smtp_url_env or ALERT_SMTP_URL_ENV, tuple(channel.to), scope=scope))
    if alerts is None or alerts.platform_default:
        out.extend(platform_targets())
    return unique(out)


def _secret(env_name: str) -> str:
    value = secrets.value(env_name)
    if not value:
        raise DeliveryError(f"environment variable {env_name} is not set")
    return value


def _post(target: Target, payload: dict[str, Any], timeout_s: float) -> None:
    url = _secret(target.url_env)
    try:
        response = requests.post(url, json=payload, timeout=timeout_s)
    except requests.RequestException as exc:  # its text carries the URL (a secret): the type only
        raise DeliveryError(f"{target.describe()}: {type(exc).__name__}") from None
    if response.status_code >= 300:
        raise DeliveryError(f"{target.describe()}: HTTP {response.status_code}")


def _send_email(target: Target, alert: Alert, timeout_s: float) -> None:
    url = _secret(target.url_env)
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtp+starttls", "smtps") or not parts.hostname:
        raise DeliveryError(f"{target.describe()}: expected smtp://, smtp+starttls:// or smtps://host[:port]")
    message = EmailMessage()
    message["Subject"] = alert.title()
    message["From"] = AlertSettings.from_env().email_from
    message["To"] = ", ".join(target.to)
    message.set_content(alert.text() + "\n")
    try:
        if parts.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                parts.hostname, parts.port or 465, timeout=timeout_s, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(parts.hostname, parts.port or 25, timeout=timeout_s)
        with client:
            if parts.scheme == "smtp+starttls":
                client.starttls(context=ssl.create_default_context())
            if parts.username:
                client.login(unquote(parts.username), unquote(parts.password or ""))
            client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        secrets = [url, unquote(parts.password or "")]
        raise DeliveryError(f"{target.describe()}: {type(exc).__name__}: {redact_text(str(exc), secrets)}") from None


def deliver(target: Target, alert: Alert, timeout_s: float = TIMEOUT_S) -> None:
    """Send one alert through one channel; DeliveryError when the channel did not take it."""
    if target.type == "webhook":
        _post(target, {"event": alert.kind, **alert.to_json()}, timeout_s)
    elif target.type == "slack":
        _post(target, alert.slack(), timeout_s)
    elif target.type == "email":
        _send_email(target, alert, timeout_s)
    else:
        raise DeliveryError(f"unknown channel type {target.type!r}")


def unique(targets: Iterable[Target]) -> list[Target]:
    """One target per destination (a tenant naming the platform's variable gets it once)."""
    seen: dict[tuple, Target] = {}
    for target in targets:
        seen.setdefault((target.type, target.url_env, target.to), target)
    return list(seen.values())
