"""Options shared by every command that talks to the broker."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from mqfleet import defaults
from mqfleet.mqtt import BrokerConfig

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


def broker_config_from(options: Mapping[str, str | None]) -> BrokerConfig:
    """A validated BrokerConfig from the values of broker_options (by option name: broker_url, broker_ca, ...)."""
    config = BrokerConfig(
        url=options.get("broker_url") or defaults.BROKER_URL,
        ca=options.get("broker_ca"),
        cert=options.get("broker_cert"),
        key=options.get("broker_key"),
    )
    config.validate()
    return config
