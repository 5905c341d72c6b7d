"""The `pass_client` decorator that every coordinator-facing command uses, and the one exception-to-exit-code map.

Commands receive a `ClientContext` whose FleetClient connects on first use, so
`--help` and argument errors never touch the broker. Every failure a command
does not handle itself ends in `exit_code_for()`, which keeps the exit codes of
the whole CLI in one place (see docs/CLI.md, "Exit codes").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from mqfleet import defaults
from mqfleet.cli import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE
from mqfleet.cli.options import broker_config_from, broker_options
from mqfleet.cli.terminal import clean
from mqfleet.client import FleetClient
from mqfleet.errors import BrokerError, ConfigurationError, MqfleetError, NotAuthorizedError, RemoteError
from mqfleet.protocol import JsonValue
from mqfleet.wire import Wire, WireMessage

F = TypeVar("F", bound=Callable[..., Any])

#: Remote error codes that mean the input the operator gave was invalid (exit 2, not 1).
INVALID_INPUT_CODES = frozenset({"invalid_manifest"})


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


def exit_code_for(error: BaseException) -> int:
    """The exit code of an exception that ended a command.

    A refusal from the coordinator is 1, except an invalid manifest (input the
    operator wrote) which is 2; an unusable configuration is 2; a broker or
    coordinator that does not answer is 3; anything else mqfleet raised is 1.
    """
    if isinstance(error, RemoteError):
        return EXIT_USAGE if error.code in INVALID_INPUT_CODES else EXIT_FAILED
    if isinstance(error, ConfigurationError):
        return EXIT_USAGE
    if isinstance(error, NotAuthorizedError):  # reached, but this identity may not send that verb
        return EXIT_FAILED
    if isinstance(error, BrokerError):
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def fail(message: str, code: int) -> None:
    """Print `error: message` on stderr and end the command with `code`."""
    click.echo(f"error: {clean(message, newlines=True)}", err=True)
    raise click.exceptions.Exit(code)


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
