"""The `mqfleet` command: one click group; each area registers its commands from its own module."""

from __future__ import annotations

import importlib

import click

from mqfleet import __version__
from mqfleet.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE

HELP_EPILOG = """\b
Examples:
  mqfleet validate fleet.toml
  mqfleet coordinator --manifest fleet.toml --db fleet.db --store file:///var/lib/mqfleet/artifacts
  mqfleet agent --host-id gpu-box --slots 2
  mqfleet jobs --status pending
  mqfleet show gbt-realistic
  mqfleet demo
"""


#: Which modules define each command. A command's modules are imported only when it runs, so the
#: agent does not load the S3 SDK or the certificate tooling it never uses (its idle RSS counts).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "coordinator": ("roles",),
    "agent": ("roles",),  # its subcommands' modules: cli/roles.py AGENT_SUBCOMMANDS
    "demo": ("roles",),
    **{name: ("manifest",) for name in ("validate", "manifest")},
    "capability": ("capability",),
    **{name: ("jobs",) for name in ("jobs", "show", "cancel", "requeue", "logs")},
    **{name: ("fleet",) for name in ("status", "workers", "drain", "undrain", "reload", "health", "watch")},
    "artifacts": ("artifacts",),
    "fetch": ("fetch",),
    "broker": ("broker",),
    "compare": ("reports",),
    "gc": ("reports",),
}


class LazyGroup(click.Group):
    """A group whose commands register themselves when their module is first imported."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in COMMAND_MODULES.get(cmd_name, ()):
            importlib.import_module(f"mqfleet.cli.{module}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for modules in COMMAND_MODULES.values():
            for module in modules:
                importlib.import_module(f"mqfleet.cli.{module}")
        return super().list_commands(ctx)


@click.group(cls=LazyGroup, epilog=HELP_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
# The version as the package states it: asking importlib.metadata instead costs every `--version` 20 ms.
@click.version_option(__version__, package_name="mqfleet")
def cli() -> None:
    """Spread ML training jobs over a fleet of hosts through an MQTT v5 broker."""


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting, so tests can call it."""
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
