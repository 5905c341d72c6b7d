"""Options shared by every command that talks to the broker, and the `pass_client` decorator that every
coordinator-facing command uses: commands receive a `ClientContext` whose FleetClient connects on first use, so
`--help` and argument errors never touch the broker. Failures end in `exit_codes.exit_code_for()`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mqfleet import defaults
from mqfleet.cli.exit_codes import exit_code_for, fail
from mqfleet.errors import BrokerError, MqfleetError

if TYPE_CHECKING:
    # Imported where used: `--help`, `--version` and a usage error need neither the MQTT client nor the wire types
    # (docs/BENCHMARKS.md, "CLI start-up").
    from mqfleet.client import FleetClient
    from mqfleet.mqtt.config import BrokerConfig
    from mqfleet.wire.codec import Wire, WireMessage
    from mqfleet.wire.topics import JsonValue

F = TypeVar("F", bound=Callable[..., Any])


def broker_options(func: F) -> F:
    """--broker URL (or MQFLEET_BROKER), and the TLS files for mqtts:// URLs."""
    options = [
        click.option("--broker", "broker_url", envvar=defaults.ENV_BROKER, default=defaults.BROKER_URL,
                     show_default=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT (env MQFLEET_BROKER)."),
        click.option("--ca", "broker_ca", envvar=defaults.ENV_CA, default=None, help="CA certificate (mqtts; env MQFLEET_CA)."),
        click.option("--cert", "broker_cert", envvar=defaults.ENV_CERT, default=None, help="Client certificate (env MQFLEET_CERT)."),
        click.option("--key", "broker_key", envvar=defaults.ENV_KEY, default=None, help="Client key (env MQFLEET_KEY)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def broker_config_from(options: Mapping[str, str | None], *, validate: bool = True) -> BrokerConfig:
    """A BrokerConfig from the values of broker_options (by option name: broker_url, broker_ca, ...), validated
    unless the caller reports the problems itself (`agent selftest`, as a failed check)."""
    from mqfleet.mqtt.config import BrokerConfig

    config = BrokerConfig(
        url=options.get("broker_url") or defaults.BROKER_URL,
        ca=options.get("broker_ca"),
        cert=options.get("broker_cert"),
        key=options.get("broker_key"),
    )
    if validate:
        config.validate()
    return config


@dataclass
class ClientContext:
    """What a command gets: its output mode and a FleetClient that connects when first used."""

    #: the values of broker_options by name (broker_url, broker_ca, broker_cert, broker_key)
    broker: dict[str, str | None]
    prefix: str
    timeout_s: float
    as_json: bool
    _client: FleetClient | None = field(default=None, repr=False)

    @property
    def broker_url(self) -> str:
        return str(self.broker.get("broker_url") or defaults.BROKER_URL)

    @property
    def client(self) -> FleetClient:
        if self._client is None:
            from mqfleet.client import FleetClient

            self._client = FleetClient(broker_config_from(self.broker), prefix=self.prefix, timeout_s=self.timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def emit_json(self, obj: Any) -> None:
        """Plain JSON on stdout; `--json` output never goes through rich."""
        click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def wire_of(message: WireMessage) -> Wire:
    """A typed reply's JSON for `--json`, keys in the order the coordinator sent them (sorted, as
    protocol.encode writes them), so the output is the same as when the CLI printed the reply as received."""
    return {k: _sorted(v) for k, v in sorted(message.to_wire().items())}


def _sorted(value: JsonValue) -> JsonValue:
    if isinstance(value, dict):
        return {k: _sorted(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _describe(error: MqfleetError, ctx: ClientContext) -> str:
    text = str(error)
    if isinstance(error, BrokerError) and ctx.broker_url not in text:
        # The operator must see which broker was tried, whatever layer raised.
        text = f"{text} (broker {ctx.broker_url})"
    return text


def pass_client(func: F) -> F:
    """Add --broker/--ca/--cert/--key, --prefix, --timeout and --json; pass a ClientContext as first argument."""

    @functools.wraps(func)
    def wrapper(*args: Any, prefix: str, timeout_s: float, as_json: bool, **kwargs: Any) -> Any:
        broker = {k: kwargs.pop(k) for k in ("broker_url", "broker_ca", "broker_cert", "broker_key")}
        ctx = ClientContext(broker=broker, prefix=prefix, timeout_s=timeout_s, as_json=as_json)
        try:
            return func(ctx, *args, **kwargs)
        except MqfleetError as e:
            fail(_describe(e, ctx), exit_code_for(e))
        finally:
            ctx.close()

    options = [
        click.option("--prefix", envvar=defaults.ENV_TOPIC_PREFIX, default=defaults.TOPIC_PREFIX, show_default=True,
                     help="Topic prefix (env MQFLEET_PREFIX)."),
        click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=defaults.REQUEST_TIMEOUT_S,
                     show_default=True, help="Seconds to wait for the broker and the coordinator."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables."),
    ]
    decorated: Callable[..., Any] = broker_options(wrapper)
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]
