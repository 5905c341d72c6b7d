"""The deployment material: systemd units, the Linux install scripts (run into a temporary root), the Windows script.

The shell installers run for real with `--root`, which prefixes every path and never touches users or
systemd; the agent installer runs `mqfleet agent selftest` against the fixture's real broker and coordinator.
`pwsh` is not packaged for Debian, so the PowerShell script is checked statically and its task XML parsed.
"""

from __future__ import annotations

import configparser
import re
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mqfleet import defaults
from mqfleet.trust import certs
from tests.fixtures.common import require_real_part
from tests.fixtures.fleet import Fleet, manifest_text
from tests.fixtures.users import OTHER_USER

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
COORD_SH = ROOT / "coordinator" / "install-coordinator.sh"
AGENT_SH = ROOT / "agent" / "install-agent.sh"
AGENT_PS1 = ROOT / "agent" / "install-agent.ps1"
INSTALL_COMMON_SH = ROOT / "scripts" / "install-common.sh"
BROKER_SH = ROOT / "broker" / "install.sh"
COORD_UNIT = "etc/systemd/system/mqfleet-coordinator.service"
AGENT_UNIT = "etc/systemd/system/mqfleet-agent.service"
TASK_NS = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"


def run_script(script: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=timeout_s, check=False)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def env_values(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k: v.strip('"') for k, v in pairs}


def unit_sections(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def assert_unit_verifies(path: Path) -> None:
    """systemd-analyze verify when present: exit 0 and not one warning (unknown keys are only warnings)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unit = unit_sections(path)
        assert {"Unit", "Service", "Install"} <= set(unit.sections())
        return
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


# -- coordinator ---------------------------------------------------------------------------------------------


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(manifest_text())
    return path


@pytest.fixture(scope="module")
def coordinator_tls(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`--ca/--cert/--key` of a real coordinator certificate: it connects to the TLS listener as `coordinator`."""
    ca_dir = tmp_path_factory.mktemp("coordinator-ca")
    ca_cert, _ = certs.make_ca(ca_dir)
    cert, key = certs.issue_cert(ca_dir, cn="coordinator", role="coordinator")
    return ["--ca", str(ca_cert), "--cert", str(cert), "--key", str(key)]


_COORDINATOR_TLS: list[str] = []


@pytest.fixture(autouse=True)
def _coordinator_tls_for_installs(coordinator_tls: list[str]) -> None:
    _COORDINATOR_TLS[:] = coordinator_tls


def install_coordinator(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # The default broker is the TLS listener, which needs the coordinator's certificate.
    tls = [] if "--broker" in extra or "--uninstall" in extra else _COORDINATOR_TLS
    return run_script(COORD_SH, "--root", str(root), "--venv", str(VENV), *tls, *extra)


def test_coordinator_install_writes_a_verified_unit_a_0600_config_with_a_token_and_the_manifest(
    tmp_path: Path, manifest: Path
) -> None:
    root = tmp_path / "root"
    result = install_coordinator(root, "--manifest", str(manifest), "--store", "file:///var/lib/mqfleet/store")

    assert result.returncode == 0, result.stdout + result.stderr
    unit_path = root / COORD_UNIT
    assert_unit_verifies(unit_path)
    service = unit_sections(unit_path)["Service"]
    assert service["ExecStart"].startswith(f"{VENV}/bin/mqfleet coordinator --manifest /etc/mqfleet/fleet.toml")
    assert service["EnvironmentFile"] == "/etc/mqfleet/coordinator.env"
    assert service["User"] == "mqfleet" and service["StateDirectory"] == "mqfleet"
    assert service["ExecStart"].endswith("--log-file /var/log/mqfleet/coordinator.log")
    assert service["LogsDirectory"] == "mqfleet"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert int(service["LimitNOFILE"]) >= 8192  # issue 25 item 7: not the default 1,024
    assert "mosquitto.service" in unit_sections(unit_path)["Unit"]["After"]
    env_file = root / "etc/mqfleet/coordinator.env"
    assert mode_of(env_file) == 0o600
    values = env_values(env_file)
    assert re.fullmatch(r"[0-9a-f]{64}", values[defaults.ENV_OPERATOR_TOKEN])
    assert values[defaults.ENV_STORE] == "file:///var/lib/mqfleet/store"
    assert (root / "etc/mqfleet/fleet.toml").read_bytes() == manifest.read_bytes()
    assert (root / "var/lib/mqfleet").is_dir()


def test_coordinator_rerun_keeps_the_token_and_config_and_force_keeps_the_token_too(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "root"
    assert install_coordinator(root, "--manifest", str(manifest)).returncode == 0
    env_file = root / "etc/mqfleet/coordinator.env"
    first = env_file.read_text()

    again = install_coordinator(root, "--manifest", str(manifest), "--store", "s3://other/x")
    assert again.returncode == 0, again.stderr
    assert env_file.read_text() == first
    assert "kept" in again.stdout

    forced = install_coordinator(root, "--force", "--store", "s3://bucket/fleet", "--s3-endpoint", "minio:9000")
    assert forced.returncode == 0, forced.stderr
    values = env_values(env_file)
    assert values[defaults.ENV_OPERATOR_TOKEN] == env_values_from_text(first)[defaults.ENV_OPERATOR_TOKEN]
    assert values[defaults.ENV_STORE] == "s3://bucket/fleet" and values[defaults.ENV_S3_ENDPOINT] == "minio:9000"
    assert mode_of(env_file) == 0o600


def env_values_from_text(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {k: v.strip('"') for k, v in pairs}


def test_coordinator_given_token_is_written_and_an_invalid_manifest_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bad = tmp_path / "bad.toml"
    bad.write_text("[fleet]\nmax_attempts = 'three'\n")

    token_file = tmp_path / "token"
    token_file.write_text("sekrit-token\n")
    token_file.chmod(0o600)
    refused = install_coordinator(root, "--manifest", str(bad), "--token-file", str(token_file))
    assert refused.returncode != 0
    assert not (root / COORD_UNIT).exists()

    ok = install_coordinator(tmp_path / "root2", "--token-file", str(token_file))
    assert ok.returncode == 0, ok.stderr
    assert env_values(tmp_path / "root2/etc/mqfleet/coordinator.env")[defaults.ENV_OPERATOR_TOKEN] == "sekrit-token"


def test_coordinator_token_is_read_from_stdin_and_never_taken_from_the_command_line(tmp_path: Path) -> None:
    on_line = install_coordinator(tmp_path / "root", "--token", "sekrit-token")
    assert on_line.returncode != 0 and "--token-file" in on_line.stderr
    assert not (tmp_path / "root/etc/mqfleet/coordinator.env").exists()
    piped = subprocess.run(["bash", str(COORD_SH), "--root", str(tmp_path / "root2"), "--venv", str(VENV),
                            *_COORDINATOR_TLS, "--token-file", "-"],
                           input="from-stdin\n", capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert env_values(tmp_path / "root2/etc/mqfleet/coordinator.env")[defaults.ENV_OPERATOR_TOKEN] == "from-stdin"
    assert "[fleet]" in (tmp_path / "root2/etc/mqfleet/fleet.toml").read_text()


def test_coordinator_dry_run_prints_its_actions_and_creates_nothing(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "root"
    result = install_coordinator(root, "--manifest", str(manifest), "--dry-run")

    assert result.returncode == 0, result.stderr
    assert f"would write: {root}/etc/mqfleet/coordinator.env (mode 0600)" in result.stdout
    assert f"would write: {root}/{COORD_UNIT}" in result.stdout
    assert not root.exists()


def test_coordinator_uninstall_removes_unit_and_config_but_keeps_the_db_unless_purged(tmp_path: Path, manifest: Path) -> None:
    root = tmp_path / "root"
    assert install_coordinator(root, "--manifest", str(manifest)).returncode == 0
    db = root / "var/lib/mqfleet/coordinator.db"
    db.write_bytes(b"sqlite")

    removed = install_coordinator(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / COORD_UNIT).exists()
    assert not (root / "etc/mqfleet").exists()
    assert db.read_bytes() == b"sqlite"

    purged = install_coordinator(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "var/lib/mqfleet").exists()


# -- agent -----------------------------------------------------------------------------------------------------


@pytest.fixture
def host_tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A real fleet CA and an agent certificate for host `enrolled`, as `mqfleet broker issue` makes them."""
    ca_dir = tmp_path / "ca"
    ca_cert, _ = certs.make_ca(ca_dir)
    cert, key = certs.issue_cert(ca_dir, cn="enrolled", role="agent")
    return ca_cert, cert, key


def install_agent(root: Path, fleet: Fleet, tls: tuple[Path, Path, Path], *extra: str,
                  broker: str | None = None) -> subprocess.CompletedProcess[str]:
    ca, cert, key = tls
    return run_script(
        AGENT_SH, "--root", str(root), "--venv", str(VENV), "--broker", broker or fleet.broker_url,
        "--host-id", "enrolled", "--ca", str(ca), "--cert", str(cert), "--key", str(key), "--slots", "2",
        "--repo", str(ROOT), "--prefix", fleet.prefix, *extra,
    )


def test_agent_install_runs_the_selftest_against_the_fleet_and_writes_0600_config_and_keys(
    tmp_path: Path, fleet: Fleet, host_tls: tuple[Path, Path, Path]
) -> None:
    fleet.write_manifest(manifest_text())
    fleet.start_coordinator()
    root = tmp_path / "root"

    result = install_agent(root, fleet, host_tls)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout and "trainer run" in result.stdout
    unit_path = root / AGENT_UNIT
    assert_unit_verifies(unit_path)
    env_file = root / "etc/mqfleet/agent.env"
    assert mode_of(env_file) == 0o600
    values = env_values(env_file)
    assert values["MQFLEET_HOST_ID"] == "enrolled" and values["MQFLEET_SLOTS"] == "2"
    assert values[defaults.ENV_BROKER] == fleet.broker_url and values[defaults.ENV_TOPIC_PREFIX] == fleet.prefix
    assert values[defaults.ENV_KEY] == "/etc/mqfleet/tls/agent.key"
    for name, source in zip(("ca.crt", "agent.crt", "agent.key"), host_tls, strict=True):
        copied = root / "etc/mqfleet/tls" / name
        assert copied.read_bytes() == source.read_bytes()
        assert mode_of(copied) == 0o600
    assert mode_of(root / "etc/mqfleet/tls") == 0o700


def test_agent_install_runs_trainers_as_a_user_of_their_own_and_the_agent_as_root_with_bounded_capabilities(
    tmp_path: Path, fleet: Fleet, host_tls: tuple[Path, Path, Path], python_for_other_user: str
) -> None:
    fleet.write_manifest(manifest_text())
    fleet.start_coordinator()
    root = tmp_path / "root"
    venv = Path(python_for_other_user).parent.parent

    result = run_script(
        AGENT_SH, "--root", str(root), "--venv", str(venv), "--broker", fleet.broker_url, "--host-id", "enrolled",
        "--ca", str(host_tls[0]), "--cert", str(host_tls[1]), "--key", str(host_tls[2]), "--repo", str(ROOT),
        "--prefix", fleet.prefix, "--trainer-user", OTHER_USER, timeout_s=300)

    assert result.returncode == 0, result.stdout + result.stderr
    # the selftest trained as the trainer user, as the service's trainers will
    assert "trainer user" in result.stdout and f"as {OTHER_USER}" in result.stdout, result.stdout
    assert env_values(root / "etc/mqfleet/agent.env")["MQFLEET_TRAINER_USER"] == OTHER_USER
    dropin = unit_sections(root / (AGENT_UNIT + ".d") / "trainer-user.conf")["Service"]
    assert (dropin["User"], dropin["Group"], dropin["StateDirectoryMode"]) == ("root", "root", "0751")
    assert set(dropin["CapabilityBoundingSet"].split()) == {
        "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"}
    assert_unit_verifies(root / AGENT_UNIT)

    removed = run_script(AGENT_SH, "--root", str(root), "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / (AGENT_UNIT + ".d")).exists()


def test_agent_install_without_a_trainer_user_writes_no_drop_in_and_refuses_the_service_user_as_one(
    tmp_path: Path, fleet: Fleet, host_tls: tuple[Path, Path, Path]
) -> None:
    root = tmp_path / "root"
    plain = install_agent(root, fleet, host_tls, "--skip-selftest", "--no-trainer-user")
    assert plain.returncode == 0, plain.stderr
    assert env_values(root / "etc/mqfleet/agent.env")["MQFLEET_TRAINER_USER"] == ""
    assert not (root / (AGENT_UNIT + ".d") / "trainer-user.conf").exists()
    same = install_agent(tmp_path / "other", fleet, host_tls, "--skip-selftest", "--trainer-user", "mqfleet")
    assert same.returncode == 2 and "must differ from --user" in same.stderr


def test_agent_unit_lets_the_agent_hand_jobs_back_before_systemd_kills_anything(tmp_path: Path) -> None:
    service = unit_sections(ROOT / "agent" / "mqfleet-agent.service")["Service"]

    assert service["KillMode"] == "mixed"
    shutdown_s = defaults.SHUTDOWN_GRACE_S + defaults.KILL_GRACE_S + defaults.REQUEST_TIMEOUT_S
    assert float(service["TimeoutStopSec"]) > shutdown_s
    assert service["Restart"] == "on-failure"
    assert "${MQFLEET_SLOTS}" in service["ExecStart"] and "${MQFLEET_REPO}" in service["ExecStart"]


def test_agent_install_with_a_failing_selftest_exits_non_zero_and_says_the_service_was_not_enabled(
    tmp_path: Path, fleet: Fleet, host_tls: tuple[Path, Path, Path]
) -> None:
    result = install_agent(tmp_path / "root", fleet, host_tls, broker="mqtt://127.0.0.1:1")

    assert result.returncode != 0
    assert "broker not reachable at mqtt://127.0.0.1:1" in result.stdout
    assert "NOT enabled" in result.stderr


def test_agent_rerun_keeps_the_config_and_uninstall_removes_unit_config_and_keys(
    tmp_path: Path, fleet: Fleet, host_tls: tuple[Path, Path, Path]
) -> None:
    root = tmp_path / "root"
    assert install_agent(root, fleet, host_tls, "--skip-selftest").returncode == 0
    env_file = root / "etc/mqfleet/agent.env"
    first = env_file.read_text()

    again = install_agent(root, fleet, host_tls, "--skip-selftest", "--work-dir", "/srv/elsewhere")
    assert again.returncode == 0, again.stderr
    assert env_file.read_text() == first

    removed = run_script(AGENT_SH, "--root", str(root), "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / AGENT_UNIT).exists()
    assert not (root / "etc/mqfleet").exists()
    assert (root / "var/lib/mqfleet-agent").is_dir()


def test_agent_uninstall_on_the_coordinators_host_keeps_the_coordinators_certificate_and_the_ca(
    tmp_path: Path, fleet: Fleet, host_tls: tuple[Path, Path, Path], manifest: Path
) -> None:
    root = tmp_path / "root"
    assert install_coordinator(root, "--manifest", str(manifest)).returncode == 0
    assert install_agent(root, fleet, host_tls, "--skip-selftest").returncode == 0
    tls = root / "etc/mqfleet/tls"

    removed = run_script(AGENT_SH, "--root", str(root), "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (tls / "agent.crt").exists() and not (tls / "agent.key").exists()
    assert (tls / "coordinator.crt").is_file() and (tls / "coordinator.key").is_file() and (tls / "ca.crt").is_file()

    assert install_coordinator(root, "--uninstall").returncode == 0
    assert not tls.exists()


def test_agent_install_writes_the_owners_policy_file_once_and_the_unit_reads_it_and_opens_the_owners_switch(
    tmp_path: Path, fleet: Fleet, host_tls: tuple[Path, Path, Path]
) -> None:
    from mqfleet.agent.config_file import read_agent_file

    root = tmp_path / "root"
    assert install_agent(root, fleet, host_tls, "--skip-selftest", "--owner-group", "nogroup").returncode == 0
    policy_file = root / "etc/mqfleet/agent.toml"
    installed = read_agent_file(policy_file)
    assert installed.owner_group == "nogroup" and installed.policy.is_empty, "every setting ships commented out"
    policy_file.write_text(policy_file.read_text() + 'hours = ["22:00-07:00"]\n')  # the owner's own edit
    assert install_agent(root, fleet, host_tls, "--skip-selftest", "--force").returncode == 0
    assert read_agent_file(policy_file).policy.hours == ["22:00-07:00"], "a rerun, --force too, keeps the owner's file"
    service = unit_sections(root / AGENT_UNIT)["Service"]
    assert "--config /etc/mqfleet/agent.toml --owner-socket /run/mqfleet-agent/owner.sock" in service["ExecStart"]
    assert (service["RuntimeDirectory"], service["RuntimeDirectoryMode"]) == ("mqfleet-agent", "0755")


def test_agent_dry_run_prints_its_actions_and_creates_nothing(
    tmp_path: Path, fleet: Fleet, host_tls: tuple[Path, Path, Path]
) -> None:
    root = tmp_path / "root"
    result = install_agent(root, fleet, host_tls, "--dry-run")

    assert result.returncode == 0, result.stderr
    assert f"would write: {root}/etc/mqfleet/tls/agent.key (mode 0600)" in result.stdout
    assert "would run: mqfleet agent selftest" in result.stdout
    assert not root.exists()


def test_agent_install_refuses_mqtts_without_tls_files(tmp_path: Path) -> None:
    result = run_script(AGENT_SH, "--root", str(tmp_path / "root"), "--broker", "mqtts://pi:8883", "--host-id", "h")

    assert result.returncode == 2
    assert "--ca, --cert and --key" in result.stderr


@pytest.mark.parametrize("script", [COORD_SH, AGENT_SH, INSTALL_COMMON_SH, BROKER_SH],
                         ids=["coordinator", "agent", "common", "broker"])
def test_install_script_is_shellcheck_clean(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, "-x", "--severity=style", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_broker_install_stages_a_monitoring_account_once_and_an_acl_that_names_it(tmp_path: Path,
                                                                                  manifest: Path) -> None:
    has_group = subprocess.run(["getent", "group", "mosquitto"], capture_output=True, check=False).returncode == 0
    require_real_part(has_group, "the mosquitto package (its group)")
    ca = tmp_path / "ca"
    certs.make_ca(ca)
    certs.issue_cert(ca, cn="server", role=certs.CertRole.SERVER)
    stage = tmp_path / "stage"
    env = {"DESTDIR": str(stage), "MQFLEET": str(VENV / "bin" / "mqfleet"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(BROKER_SH), str(ca), str(manifest), "alice"], capture_output=True,
                              text=True, timeout=120, env=env, check=False)

    assert (done := install()).returncode == 0, done.stdout + done.stderr
    broker_dir, options = stage / "etc/mqfleet/broker", stage / "etc/mqfleet/monitor/mosquitto_sub"
    passwd = (broker_dir / "passwd").read_text()
    assert passwd.startswith("monitor:$7$") and mode_of(broker_dir / "passwd") == 0o640
    assert "-u monitor" in options.read_text() and mode_of(options) == 0o640
    assert "user monitor\n" in (broker_dir / "acl").read_text()
    assert "password_file /etc/mqfleet/broker/passwd" in (broker_dir / "mosquitto.conf").read_text()
    assert (done := install()).returncode == 0, done.stdout + done.stderr
    assert (broker_dir / "passwd").read_text() == passwd  # a rerun keeps the account and its password


# -- Windows ---------------------------------------------------------------------------------------------------


def ps1_text() -> str:
    return AGENT_PS1.read_text(encoding="utf-8")


def test_windows_script_takes_the_same_parameters_as_the_linux_one() -> None:
    param_block = re.search(r"\bparam\((.*?)\n\)", ps1_text(), re.S)
    assert param_block is not None
    names = set(re.findall(r"\$([A-Za-z]+)\s*(?:=|,|$)", param_block.group(1), re.M))
    assert {"Broker", "HostId", "Ca", "Cert", "Key", "Slots", "Repo", "Venv", "Uninstall", "DryRun"} <= names


def test_windows_script_has_balanced_braces_parentheses_and_here_strings() -> None:
    # Strings and comments hold none of these, so plain counts catch an unclosed block.
    text = ps1_text()
    assert text.count("{") == text.count("}")
    assert text.count("(") == text.count(")")
    assert len(re.findall(r'@"\s*$', text, re.M)) == len(re.findall(r'^"@', text, re.M)) == 1
    assert text.count("<#") == text.count("#>")


def test_windows_task_xml_template_parses_and_restarts_the_agent_from_the_venv_at_boot() -> None:
    template = re.search(r'@"\n(.*?)\n"@', ps1_text(), re.S)
    assert template is not None
    # Fill the PowerShell expansions the way the script does for SYSTEM on a host `win-gpu`.
    values = {"RestartInterval": "PT1M", "RestartCount": "999", "TaskName": "mqfleet-agent",
              "command": r"C:\mqfleet\.venv\Scripts\mqfleet.exe", "arguments": "agent --slots 1 --repo C:\\train",
              "workdir": r"C:\ProgramData\mqfleet", "logon": "<UserId>S-1-5-18</UserId><RunLevel>HighestAvailable</RunLevel>"}
    xml = re.sub(r"\$\([^()]*\)", "win-gpu", template.group(1))
    xml = re.sub(r"\$([A-Za-z]+)", lambda m: values[m.group(1)], xml)
    task = ET.fromstring(xml.encode("utf-16"))

    assert task.find(f"{TASK_NS}Triggers/{TASK_NS}BootTrigger") is not None
    restart = task.find(f"{TASK_NS}Settings/{TASK_NS}RestartOnFailure")
    assert restart is not None and restart.findtext(f"{TASK_NS}Count") == "999"
    assert restart.findtext(f"{TASK_NS}Interval") == "PT1M"
    assert task.findtext(f"{TASK_NS}Settings/{TASK_NS}ExecutionTimeLimit") == "PT0S"
    exec_ = task.find(f"{TASK_NS}Actions/{TASK_NS}Exec")
    assert exec_ is not None and exec_.findtext(f"{TASK_NS}Command", "").endswith(r"Scripts\mqfleet.exe")
    assert exec_.findtext(f"{TASK_NS}Arguments", "").startswith("agent --slots")
    assert task.findtext(f"{TASK_NS}Principals/{TASK_NS}Principal/{TASK_NS}UserId") == "S-1-5-18"


def test_windows_script_runs_the_selftest_before_registering_and_removes_the_task_on_uninstall() -> None:
    text = ps1_text()
    install = text[text.index("function Invoke-Install"):]
    assert install.index("selftest") < install.index("Register-ScheduledTask")
    assert "$LASTEXITCODE -ne 0" in install
    uninstall = text[text.index("function Invoke-Uninstall"):text.index("function Invoke-Install")]
    assert "Unregister-ScheduledTask" in uninstall
    assert "Write-Output (Get-TaskXml)" in text  # -DryRun prints the task definition


def test_coordinator_connects_over_tls_with_its_own_certificate_and_refuses_to_install_without_one(
    tmp_path: Path, coordinator_tls: list[str]
) -> None:
    root = tmp_path / "root"
    bare = run_script(COORD_SH, "--root", str(root), "--venv", str(VENV))
    assert bare.returncode != 0 and "--ca, --cert and --key" in bare.stderr
    assert not (root / "etc/mqfleet/coordinator.env").exists()
    assert install_coordinator(root).returncode == 0
    values = env_values(root / "etc/mqfleet/coordinator.env")
    assert values[defaults.ENV_BROKER] == "mqtts://localhost:8883"
    assert values[defaults.ENV_CERT] == "/etc/mqfleet/tls/coordinator.crt"
    assert mode_of(root / "etc/mqfleet/tls") == 0o700
    assert mode_of(root / "etc/mqfleet/tls/coordinator.key") == 0o600
    assert install_coordinator(root, "--uninstall").returncode == 0
    assert not (root / "etc/mqfleet/tls").exists()
