"""The CLI's exit codes and the one map from an exception that ended a command to its code
(docs/CLI.md, "Exit codes").
"""

from __future__ import annotations

import click

from mqfleet.cli.render.terminal import clean
from mqfleet.errors import BrokerError, ConfigurationError, ManifestError, NotAuthorizedError, RemoteError

#: The exit codes of every command (docs/CLI.md, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
#: Remote error codes that mean the input the operator gave was invalid (exit 2, not 1).
INVALID_INPUT_CODES = frozenset({ManifestError.code})


def exit_code_for(error: BaseException) -> int:
    """The exit code of an exception that ended a command.

    A refusal from the coordinator is 1, except an invalid manifest (input the
    operator wrote) which is 2; an unusable configuration or an invalid manifest
    read here is 2; a broker or coordinator that does not answer is 3; anything
    else mqfleet raised is 1.
    """
    if isinstance(error, RemoteError):
        return EXIT_USAGE if error.code in INVALID_INPUT_CODES else EXIT_FAILED
    if isinstance(error, (ConfigurationError, ManifestError)):
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
