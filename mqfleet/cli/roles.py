"""`mqfleet coordinator` and `mqfleet agent`: the two long-running roles."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mqfleet import defaults
from mqfleet.cli import cli
from mqfleet.cli.exit_codes import EXIT_OK, EXIT_USAGE, exit_code_for, fail
from mqfleet.cli.options import broker_config_from, broker_options
from mqfleet.errors import BrokerUnavailableError, ConfigurationError, MqfleetError, StoreError
from mqfleet.logs import setup_logging

if TYPE_CHECKING:
    from mqfleet.coordinator.service import Coordinator
    from mqfleet.web.server import WebServer

logger = logging.getLogger(__name__)


def _on_stop_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT (and SIGBREAK on Windows) ask the role to stop cleanly."""

    def handler(signum: int, frame: object) -> None:
        logger.info("received signal %d; stopping", signum)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if sys.platform == "win32":
        signal.signal(signal.SIGBREAK, handler)  # type: ignore[attr-defined]


def _setup_logging(verbose: int, log_file: Path | None) -> None:
    try:
        setup_logging(verbose, log_file=log_file)
    except OSError as e:
        fail(f"--log-file {log_file}: cannot write there ({e.strerror or e}); pick a writable path", EXIT_USAGE)


def _env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not name.replace("_", "a").isalnum():
            fail(f"--trainer-env {pair!r}: expected NAME=VALUE", EXIT_USAGE)
        env[name] = value
    return env


def _start_web(coordinator: Coordinator, host: str, port: int, max_streams: int) -> WebServer:
    """The web dashboard over this coordinator (imported only here: without --web-port it costs nothing)."""
    try:
        from mqfleet.web.server import WebServer
        from mqfleet.web.source import FleetSource
    except ImportError as e:
        raise ConfigurationError(f"--web-port needs the web extra ({e.name} is missing): pip install 'mqfleet[web]'") from e
    web = WebServer(FleetSource(coordinator), host=host, port=port, max_streams=max_streams)
    web.start()
    click.echo(f"web dashboard: {web.url}", err=True)
    return web


@cli.command("coordinator")
@click.option("--manifest", "manifest_path", required=True, type=click.Path(path_type=Path), help="Manifest TOML file.")
@click.option("--db", "db", required=True, metavar="PATH|URL",
              help="SQLite database file, or postgresql://USER@HOST[:PORT]/DB; several coordinators may share one "
                   "PostgreSQL database. Keep its password out of the URL (ps shows it): --db-password-file, "
                   "PGPASSFILE or MQFLEET_DB_PASSWORD.")
@click.option("--db-password-file", "db_password_file", envvar=defaults.ENV_DB_PASSWORD_FILE, default=None,
              type=click.Path(path_type=Path, dir_okay=False),
              help="File whose first line is the PostgreSQL password (env MQFLEET_DB_PASSWORD_FILE).")
@click.option("--migrate-from", "migrate_from", default=None, metavar="sqlite:PATH",
              help="Before serving, copy a stopped fleet's SQLite state into the (empty) PostgreSQL --db.")
@click.option("--client-id", "client_id", default="coordinator", show_default=True,
              help="MQTT client id; each coordinator sharing a database needs its own.")
@click.option("--store", "store_url", envvar=defaults.ENV_STORE, default="", help="file:///PATH or s3://BUCKET/PREFIX.")
@click.option("--prefix", envvar=defaults.ENV_TOPIC_PREFIX, default=defaults.TOPIC_PREFIX, show_default=True)
@click.option("--sweep-interval", "sweep_interval_s", type=float, default=defaults.SWEEP_INTERVAL_S, show_default=True)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (off unless given).")
@click.option("--metrics-host", default=defaults.METRICS_HOST, show_default=True,
              help="Address the metrics endpoint binds to (0.0.0.0 for every interface).")
@click.option("--web-port", type=click.IntRange(0, 65535), default=None,
              help="Serve the web dashboard at http://HOST:PORT/ (off unless given; needs mqfleet[web]).")
@click.option("--web-host", default=defaults.WEB_HOST, show_default=True,
              help="Address the dashboard binds to; off loopback put it behind a TLS reverse proxy (docs/OPERATIONS.md).")
@click.option("--web-max-streams", type=click.IntRange(1, 100_000), default=defaults.WEB_MAX_STREAMS, show_default=True,
              help="Live event streams the dashboard keeps open at most; past it a stream is refused (503).")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write this process's log to PATH, rotated at 10 MiB (5 old files kept).")
@click.option("-v", "--verbose", count=True)
@broker_options
def coordinator_cmd(
    manifest_path: Path,
    db: str,
    db_password_file: Path | None,
    migrate_from: str | None,
    client_id: str,
    store_url: str,
    prefix: str,
    sweep_interval_s: float,
    metrics_port: int | None,
    metrics_host: str,
    web_port: int | None,
    web_host: str,
    web_max_streams: int,
    log_file: Path | None,
    verbose: int,
    **broker: str | None,
) -> None:
    """Run the coordinator: grants leases, sweeps expired ones, verifies artifacts."""
    from mqfleet.coordinator.core import CoordinatorConfig
    from mqfleet.coordinator.service import Coordinator
    from mqfleet.coordinator.sql.postgres import PgStateFile, is_postgres_url

    _setup_logging(verbose, log_file)
    token = os.environ.get(defaults.ENV_OPERATOR_TOKEN, "")
    if not token:
        logger.warning("%s is not set: operator verbs (cancel, requeue, reload, drain) are refused", defaults.ENV_OPERATOR_TOKEN)
    try:
        on_postgres = is_postgres_url(db)
        if migrate_from and not on_postgres:
            raise ConfigurationError("--migrate-from copies into PostgreSQL: give --db postgresql://USER@HOST/DB")
        db_path = Path("." if on_postgres else db)
        config = CoordinatorConfig(
            manifest_path=manifest_path,
            db_path=db_path,
            db_url=db if on_postgres else "",
            db_password_file=db_password_file,
            client_id=client_id,
            broker=broker_config_from(broker),
            store_url=store_url,
            operator_token=token,
            prefix=prefix,
            sweep_interval_s=sweep_interval_s,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        if not on_postgres:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        coordinator = Coordinator(config)
        if migrate_from:
            from mqfleet.coordinator.sql.migrate import migrate_from_sqlite, parse_source

            assert isinstance(coordinator.state, PgStateFile)
            counts = migrate_from_sqlite(parse_source(migrate_from), coordinator.state)
            click.echo("migrated: " + ", ".join(f"{table} {n}" for table, n in counts.items()), err=True)
    except MqfleetError as e:  # a bad flag, the store, the state database going away while the schema was made
        fail(f"artifact store: {e}" if isinstance(e, StoreError) else str(e), exit_code_for(e))
    _on_stop_signals(coordinator.request_stop)
    try:
        coordinator.start()
    except MqfleetError as e:  # the metrics port taken, an invalid manifest, no broker
        fail(str(e), exit_code_for(e))
    web = None
    if web_port is not None:
        try:
            web = _start_web(coordinator, web_host, web_port, web_max_streams)
        except ConfigurationError as e:  # the port is taken, or mqfleet[web] is not installed
            coordinator.stop()
            fail(str(e), exit_code_for(e))
    try:
        coordinator.run_forever()
    finally:
        if web is not None:
            web.stop()  # first: its pages read the coordinator's state
        coordinator.stop()
    raise click.exceptions.Exit(EXIT_OK)


#: Modules of the `agent` subcommands, imported only when one runs: `agent pause` must start fast and load none
#: of the agent (the owner types it on a machine they are using).
AGENT_SUBCOMMANDS = {"selftest": "selftest", "pause": "owner", "resume": "owner"}


class AgentGroup(click.Group):
    """The `agent` group: its subcommands register themselves when their module is first imported."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in AGENT_SUBCOMMANDS:
            importlib.import_module(f"mqfleet.cli.{AGENT_SUBCOMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in set(AGENT_SUBCOMMANDS.values()):
            importlib.import_module(f"mqfleet.cli.{module}")
        return super().list_commands(ctx)


@cli.group("agent", cls=AgentGroup, invoke_without_command=True)
@click.option("--host-id", envvar=defaults.ENV_HOST_ID, default=None, help="This host's id (default: the hostname).")
@click.option("--slots", type=int, envvar=defaults.ENV_SLOTS, default=1, show_default=True, help="Concurrent jobs on this host.")
@click.option("--work-dir", type=click.Path(path_type=Path), envvar=defaults.ENV_WORK_DIR, default=None, help="Where jobs run (default ~/.mqfleet/work).")
@click.option("--repo", type=click.Path(path_type=Path), envvar=defaults.ENV_REPO, default=None, help="Training repo root: the trainers' cwd (default: .).")
@click.option("--label", "labels", multiple=True, help="A label for this host (repeatable).")
@click.option("--prefix", envvar=defaults.ENV_TOPIC_PREFIX, default=defaults.TOPIC_PREFIX, show_default=True)
@click.option("--shutdown-grace", "shutdown_grace_s", type=float, default=defaults.SHUTDOWN_GRACE_S, show_default=True)
@click.option("--kill-grace", "kill_grace_s", type=float, default=defaults.KILL_GRACE_S, show_default=True)
@click.option("--heartbeat", "heartbeat_s", type=float, default=defaults.HEARTBEAT_S, show_default=True)
@click.option("--keepalive", "keepalive_s", type=int, default=defaults.KEEPALIVE_S, show_default=True)
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False), default=None, envvar=defaults.ENV_LOG_FILE,
              help="Also write this process's log to PATH, rotated at 10 MiB (5 old files kept).")
@click.option("--trainer-env", "trainer_env", multiple=True, metavar="NAME=VALUE",
              help="Give trainers this variable (repeatable); of the agent's own environment they see only "
                   "PATH, HOME, PYTHONPATH, LANG/LC_*, TMPDIR, CUDA_*/NVIDIA_* and a few more (docs/SECURITY.md).")
@click.option("--trainer-user", "trainer_user", envvar=defaults.ENV_TRAINER_USER, default="", metavar="NAME",
              help="Run trainers as this user (Linux; the agent runs as root): they cannot read the agent's key file, "
                   "environment or memory (docs/SECURITY.md).")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), envvar=defaults.ENV_AGENT_CONFIG,
              default=None, help="The owner's agent.toml: hours, when_busy, on_yield, nice, ionice, max_memory_gib, "
                                 "owner_group (examples/agent.toml); flags below win over it.")
@click.option("--hours", "hours", multiple=True, metavar="WINDOW",
              help='Take work only in this window of local time (repeatable): "22:00-07:00", "sat 00:00-sun 23:59".')
@click.option("--timezone", default=None, help="IANA zone the hours are in (default: the host's).")
@click.option("--on-yield", "on_yield", type=click.Choice(["checkpoint", "finish", "kill"]), default=None,
              help="What running jobs do when the host is taken back (default checkpoint).")
@click.option("--when-busy-cpu", "busy_cpu", type=float, default=None, metavar="PERCENT",
              help="Yield while processes outside the fleet use more than this share of the CPU.")
@click.option("--when-busy-gpu", "busy_gpu", type=float, default=None, metavar="PERCENT",
              help="Yield while processes outside the fleet use more than this share of a GPU.")
@click.option("--nice", type=int, default=None, help="Trainers' CPU niceness, 0-19 (default 10).")
@click.option("--ionice", default=None, metavar="CLASS", help='Trainers\' I/O priority: "best-effort:7" (default), "idle", "none".')
@click.option("--max-memory-gib", "max_memory_gib", type=float, default=None,
              help="Most memory one trainer's process tree may use on this host.")
@click.option("--owner-group", "owner_group", default=None, metavar="GROUP",
              help="Members of this group may pause this agent (`mqfleet agent pause`).")
@click.option("--owner-socket", "owner_socket", type=click.Path(path_type=Path), default=None,
              help="Where the owner's switch listens (default WORK_DIR/owner.sock).")
@click.option("-v", "--verbose", count=True)
@broker_options
@click.pass_context
def agent_cmd(
    ctx: click.Context,
    /,
    host_id: str | None,
    slots: int,
    work_dir: Path | None,
    repo: Path | None,
    labels: tuple[str, ...],
    prefix: str,
    shutdown_grace_s: float,
    kill_grace_s: float,
    heartbeat_s: float,
    keepalive_s: int,
    log_file: Path | None,
    trainer_env: tuple[str, ...],
    trainer_user: str,
    config_file: Path | None,
    hours: tuple[str, ...],
    timezone: str | None,
    on_yield: str | None,
    busy_cpu: float | None,
    busy_gpu: float | None,
    nice: int | None,
    ionice: str | None,
    max_memory_gib: float | None,
    owner_group: str | None,
    owner_socket: Path | None,
    verbose: int,
    **broker: str | None,
) -> None:
    """Run an agent: advert this host, claim jobs, run trainers, upload artifacts."""
    host_id = host_id or socket.gethostname()
    ctx.obj = {"host_id": host_id, "broker": broker, "prefix": prefix, "repo": repo, "slots": slots,
               "trainer_user": trainer_user, "work_dir": work_dir, "owner_socket": owner_socket}
    if ctx.invoked_subcommand is not None:
        return
    from mqfleet.agent.config_file import AgentFile, read_agent_file
    from mqfleet.agent.daemon import Agent, AgentConfig
    from mqfleet.wire.owner import OwnerPolicy, WhenBusy

    _setup_logging(verbose, log_file)
    try:
        from_file = read_agent_file(config_file) if config_file is not None else AgentFile()
        busy = WhenBusy(cpu_percent=busy_cpu, gpu_percent=busy_gpu) if busy_cpu is not None or busy_gpu is not None else None
        flags = OwnerPolicy(hours=list(hours) or None, timezone=timezone, when_busy=busy, on_yield=on_yield, nice=nice,
                            ionice=ionice, max_memory_gib=max_memory_gib)
        socket_path = owner_socket or (Path(from_file.owner_socket) if from_file.owner_socket else None)
        config = AgentConfig(
            host_id=host_id,
            broker=broker_config_from(broker),
            work_dir=(work_dir or Path.home() / ".mqfleet" / "work" / host_id).resolve(),
            repo=(repo or Path.cwd()).resolve(),
            slots=slots,
            labels=labels,
            prefix=prefix,
            shutdown_grace_s=shutdown_grace_s,
            kill_grace_s=kill_grace_s,
            heartbeat_s=heartbeat_s,
            keepalive_s=keepalive_s,
            extra_env=_env_pairs(trainer_env),
            trainer_user=trainer_user,
            owner_policy=flags.over(from_file.policy),
            owner_group=owner_group or from_file.owner_group or "",
            owner_socket=socket_path,
        )
        agent = Agent(config)
    except ConfigurationError as e:
        fail(str(e), exit_code_for(e))
    _on_stop_signals(agent.stop)
    try:
        agent.start()
    except (ConfigurationError, BrokerUnavailableError) as e:  # e.g. a work dir the trainer user cannot reach
        fail(str(e), exit_code_for(e))
    raise click.exceptions.Exit(agent.run())


@cli.command("demo")
@click.option("--dir", "work_dir", type=click.Path(path_type=Path), default=Path(".demo"), show_default=True,
              help="Where the demo keeps its broker, store, database and logs (wiped first).")
@click.option("--timeout", "timeout_s", type=float, default=900.0, show_default=True)
@click.option("--plain", is_flag=True, help="A plain loopback broker instead of mutual TLS with generated certificates.")
@click.option("--web-port", type=click.IntRange(0, 65535), default=None,
              help="Port of the coordinator's web dashboard on 127.0.0.1 (default 8080, or a free one when taken).")
@click.option("-v", "--verbose", count=True)
def demo_cmd(work_dir: Path, timeout_s: float, plain: bool, web_port: int | None, verbose: int) -> None:
    """Run the whole fleet on this machine with real training, then show the results."""
    from mqfleet.local.demo import run_demo

    setup_logging(verbose - 1)
    raise click.exceptions.Exit(run_demo(work_dir=work_dir.resolve(), timeout_s=timeout_s, tls=not plain,
                                         web_port=web_port))
