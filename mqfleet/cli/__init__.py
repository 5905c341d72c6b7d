"""The `mqfleet` command: one click group; each area registers its commands from its own module."""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

HELP_EPILOG = """\b
Examples:
  mqfleet validate fleet.toml
  mqfleet coordinator --manifest fleet.toml --db fleet.db --store file:///var/lib/mqfleet/artifacts
  mqfleet agent --host-id gpu-box --slots 2
  mqfleet jobs --status pending
  mqfleet show gbt-realistic
  mqfleet demo
"""


@click.group(epilog=HELP_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mqfleet")
def cli() -> None:
    """Spread ML training jobs over a fleet of hosts through an MQTT v5 broker."""


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting, so tests can call it."""
    from mqfleet.cli import commands  # noqa: F401  (registers every command on `cli`)

    try:
        # Without standalone mode click returns (not raises) the code of click.exceptions.Exit.
        rc = cli.main(args=argv, prog_name="mqfleet", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_FAILED
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.UsageError as e:
        e.show()
        return EXIT_USAGE
    except click.ClickException as e:
        e.show()
        return EXIT_FAILED
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_FAILED
    return rc if isinstance(rc, int) else EXIT_OK
