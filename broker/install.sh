#!/usr/bin/env bash
# Install mqfleet's broker config on the broker host (the Pi), as root:
#   broker/install.sh CA_DIR MANIFEST [OPERATORS]
# CA_DIR holds ca.crt, crl.pem, server.crt and server.key (`mqfleet broker ca` / `issue --role server`);
# MANIFEST is the fleet manifest whose [[hosts]] become the ACL; OPERATORS is "alice,bob".
# Rerun it after enrolling or revoking a host: it re-renders the ACL and reloads mosquitto.
# The first run also makes the loopback listener's monitoring account `monitor` (its password in
# /etc/mqfleet/monitor/mosquitto_sub, readable by the group mqfleet-monitor); reruns keep it.
# DESTDIR stages the files elsewhere and skips systemd (for a dry run or a package build).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,7p' "$0" >&2
    exit 2
fi
ca_dir=$1
manifest=$2
operators=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
mqfleet=${MQFLEET:-mqfleet}
dest=${DESTDIR:-}
conf_dir=$dest/etc/mqfleet/broker
monitor_dir=$dest/etc/mqfleet/monitor
monitor_group="mqfleet-monitor"
dropin_dir=$dest/etc/systemd/system/mosquitto.service.d

# Mosquitto starts as root and reads these files after dropping to the mosquitto user, so they are
# group-readable by mosquitto and by nobody else. The CA key is never copied here.
getent group mosquitto >/dev/null || { echo "the mosquitto package is not installed" >&2; exit 1; }
install -d -o root -g mosquitto -m 0750 "$conf_dir"
install -o root -g mosquitto -m 0644 "$here/../mosquitto.conf" "$conf_dir/mosquitto.conf"
install -o root -g mosquitto -m 0644 "$ca_dir/ca.crt" "$conf_dir/ca.crt"
install -o root -g mosquitto -m 0644 "$ca_dir/crl.pem" "$conf_dir/crl.pem"
install -o root -g mosquitto -m 0644 "$ca_dir/server.crt" "$conf_dir/server.crt"
install -o root -g mosquitto -m 0640 "$ca_dir/server.key" "$conf_dir/server.key"
# Monitoring: no anonymous clients (they could take the fleet's client ids), so `mosquitto_sub` logs in
# as `monitor`, whose password only root and the group mqfleet-monitor can read (usermod -aG it).
if [[ ! -e $conf_dir/passwd ]]; then
    "$mqfleet" broker monitor --passwd "$conf_dir/passwd" --options "$monitor_dir/mosquitto_sub"
fi
chown root:mosquitto "$conf_dir/passwd"
chmod 0640 "$conf_dir/passwd"
"$mqfleet" broker acl --manifest "$manifest" --operators "$operators" --passwd "$conf_dir/passwd" \
    --out "$conf_dir/acl"
chown root:mosquitto "$conf_dir/acl"
if [[ -z $dest && -e $monitor_dir/mosquitto_sub ]]; then
    getent group "$monitor_group" >/dev/null || groupadd --system "$monitor_group"
    chown root:"$monitor_group" "$monitor_dir" "$monitor_dir/mosquitto_sub"
    chmod 0750 "$monitor_dir"
    chmod 0640 "$monitor_dir/mosquitto_sub"
fi
install -d -m 0755 "$dropin_dir"
install -m 0644 "$here/mosquitto.service.d/mqfleet.conf" "$dropin_dir/mqfleet.conf"

if [[ -n $dest ]]; then
    echo "staged under $dest; systemd left alone"
    exit 0
fi
systemctl daemon-reload
if systemctl is-active --quiet mosquitto; then
    # a reload keeps every connection and rereads the ACL and the CRL (2.0.11); a changed
    # listener, port or drop-in needs `systemctl restart mosquitto` instead.
    systemctl reload mosquitto
else
    systemctl enable --now mosquitto
fi
systemctl --no-pager --lines=5 status mosquitto
