"""`mqfleet broker ...`: the CA, certificates, CRL, ACL, monitoring accounts and mosquitto.conf of the fleet's broker."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from mqfleet.cli import cli
from mqfleet.defaults import TOPIC_PREFIX
from mqfleet.errors import ManifestError, MqfleetError
from mqfleet.hostid import COORDINATOR_CN, MONITOR_USER
from mqfleet.trust import acl, certs, monitor_accounts, mosquitto_conf

logger = logging.getLogger(__name__)

BROKER_EPILOG = """\b
Enrol a host (on the CA machine, then copy ca.crt, gpu-box.crt and gpu-box.key to the host):
  mqfleet broker issue --dir /etc/mqfleet/ca --cn gpu-box --role agent
  mqfleet broker acl --manifest fleet.toml --operators alice --passwd /etc/mqfleet/broker/passwd \\
    --out /etc/mqfleet/broker/acl
  systemctl reload mosquitto
Revoke one: remove it from the manifest, re-render the ACL, then
  mqfleet broker revoke --dir /etc/mqfleet/ca /etc/mqfleet/ca/gpu-box.crt
  install -m 644 /etc/mqfleet/ca/crl.pem /etc/mqfleet/broker/crl.pem && systemctl reload mosquitto
Monitor public state on the broker host (the account install.sh made):
  XDG_CONFIG_HOME=/etc/mqfleet/monitor mosquitto_sub -v -t 'mqfleet/#'
"""

_dir_option = click.option(
    "--dir",
    "ca_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the CA (ca.crt, ca.key, crl.pem).",
)


@contextmanager
def _refusals() -> Iterator[None]:
    """mqfleet errors become click errors: invalid input exits 2, any other refusal 1."""
    try:
        yield
    except ManifestError as e:
        raise click.BadParameter(str(e), param_hint="--manifest") from None
    except MqfleetError as e:
        raise click.ClickException(str(e)) from None


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@cli.group("broker", epilog=BROKER_EPILOG)
def broker() -> None:
    """Broker security: the CA, client and server certificates, the CRL, the ACL, mosquitto.conf."""


@broker.command("ca")
@_dir_option
@click.option("--days", type=int, default=certs.CA_DAYS, show_default=True, help="Validity of the CA.")
@click.option("--force", is_flag=True, help="Replace an existing CA (every certificate it issued stops working).")
def ca_command(ca_dir: Path, days: int, force: bool) -> None:
    """Make the fleet's CA and its empty CRL."""
    with _refusals():
        cert, key = certs.make_ca(ca_dir, days=days, force=force)
    click.echo(
        f"CA certificate {cert}\nCA key         {key} (keep it off the fleet)\nCRL            {ca_dir / certs.CRL}"
    )


@broker.command("issue")
@_dir_option
@click.option("--cn", required=True, help="Host id for an agent, operator name, coordinator CN, broker name.")
@click.option("--role", required=True, type=click.Choice([r.value for r in certs.CertRole]))
@click.option(
    "--san", "sans", multiple=True, help="DNS:name or IP:address; repeat. Server default: localhost, 127.0.0.1, ::1."
)
@click.option(
    "--days", type=int, default=certs.LEAF_DAYS, show_default=True, help="Validity; <= 0 gives an expired one."
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Write here instead of --dir.")
def issue_command(ca_dir: Path, cn: str, role: str, sans: tuple[str, ...], days: int, out_dir: Path | None) -> None:
    """Issue a certificate signed by the CA (key written 0600)."""
    with _refusals():
        cert, key = certs.issue_cert(ca_dir, cn=cn, role=role, sans=sans, days=days, out_dir=out_dir)
    click.echo(f"certificate {cert}\nkey         {key}")


@broker.command("revoke")
@_dir_option
@click.argument("cert_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def revoke_command(ca_dir: Path, cert_file: Path) -> None:
    """Add a certificate to the CA's CRL; install crl.pem on the broker and reload it."""
    with _refusals():
        crl = certs.revoke_cert(ca_dir, cert_file)
    click.echo(f"CRL {crl}")


@broker.command("acl")
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Take agent hosts from this manifest's [[hosts]].",
)
@click.option("--hosts", default="", help="Comma-separated agent host ids, added to the manifest's.")
@click.option("--operators", default="", help="Comma-separated operator names (CN operator-NAME).")
@click.option("--coordinator", default=COORDINATOR_CN, show_default=True, help="The coordinator's CN.")
@click.option("--monitors", default=MONITOR_USER, show_default=True,
              help="Comma-separated monitoring accounts (monitor, monitor-NAME): public state only.")
@click.option("--passwd", "passwd_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Also every account of this password file (each must be a monitoring account).")
@click.option("--prefix", default=TOPIC_PREFIX, show_default=True, help="Topic prefix.")
@click.option(
    "--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ACL file; - for stdout."
)
def acl_command(
    manifest_path: Path | None, hosts: str, operators: str, coordinator: str, monitors: str,
    passwd_file: Path | None, prefix: str, out_file: Path,
) -> None:
    """Render the broker ACL: each listed host pinned to its own topics; unknown CNs get public read + queries."""
    with _refusals():
        host_ids = acl.hosts_in_manifest(manifest_path) if manifest_path else []
        host_ids += [h for h in _csv(hosts) if h not in host_ids]
        accounts = _csv(monitors) + (monitor_accounts.accounts_in(passwd_file) if passwd_file else [])
        text = acl.render_acl(host_ids, operators=_csv(operators), coordinator=coordinator, prefix=prefix,
                              monitors=accounts)
    _emit(out_file, text, acl.write_acl)
    if str(out_file) != "-":
        click.echo(f"ACL {out_file}: {len(host_ids)} host(s); reload mosquitto (SIGHUP) to apply it", err=True)


@broker.command("monitor")
@click.option("--passwd", "passwd_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The broker's password file (/etc/mqfleet/broker/passwd); other accounts in it are kept.")
@click.option("--options", "options_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the account's mosquitto_sub options (DIR/mosquitto_sub; use XDG_CONFIG_HOME=DIR).")
@click.option("--user", default=MONITOR_USER, show_default=True,
              help="Account name: monitor or monitor-NAME (list it in `broker acl --monitors`).")
@click.option("--port", "port_local", type=int, default=1883, show_default=True, help="The loopback listener's port.")
def monitor_command(passwd_file: Path, options_file: Path, user: str, port_local: int) -> None:
    """Give a monitoring account of the loopback listener a new random password.

    Its hash goes into --passwd and the password itself into a mosquitto_sub options file (0640), so
    `XDG_CONFIG_HOME=DIR mosquitto_sub -v -t 'mqfleet/#'` logs in with no password on a command line.
    The broker makes the account's user name its client id and its ACL gives public state only.
    """
    with _refusals():
        password = monitor_accounts.new_password()
        monitor_accounts.set_password(passwd_file, user, password)
        monitor_accounts.write_options(options_file, user=user, password=password, port=port_local)
    click.echo(f"account {user}: password file {passwd_file}, mosquitto_sub options {options_file}; "
               "reload mosquitto (SIGHUP) to apply", err=True)


@broker.command("render-conf")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory holding the certificates and ACL; mosquitto.conf is written there.",
)
@click.option("--port-tls", type=int, default=8883, show_default=True)
@click.option("--port-local", type=int, default=1883, show_default=True)
@click.option("--bind", default=None, help="Address of the TLS listener (default: all interfaces).")
@click.option(
    "--persistence",
    "persistence_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Persistence directory (default: the production one).",
)
@click.option("--no-persistence", is_flag=True, help="Keep nothing across restarts.")
@click.option("--user", default=None, help="Run-as user; root lets a throwaway broker read root-owned files.")
@click.option(
    "--template",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Config to render from (default: the repository's mosquitto.conf).",
)
def render_conf_command(
    out_dir: Path,
    port_tls: int,
    port_local: int,
    bind: str | None,
    persistence_dir: Path | None,
    no_persistence: bool,
    user: str | None,
    template: Path | None,
) -> None:
    """Render the production mosquitto.conf for files in --out, with these ports; for tests and demos."""
    with _refusals():
        text = mosquitto_conf.render_broker_conf(
            conf_dir=out_dir.resolve(),
            port_tls=port_tls,
            port_local=port_local,
            bind=bind,
            persistence_dir=persistence_dir,
            persistence=not no_persistence,
            user=user,
            template=template,
        )
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = out_dir / mosquitto_conf.CONF_FILE
    path.write_text(text, encoding="utf-8")
    click.echo(str(path))


def _emit(out_file: Path, text: str, write: Callable[[Path, str], object]) -> None:
    if str(out_file) == "-":
        click.echo(text, nl=False)
    else:
        write(out_file, text)
