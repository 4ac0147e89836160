#!/usr/bin/env bash
# Vagrant provisioner 2 (after the reboot): install stord under /opt/stord and run it as a
# systemd service with the repository's unit file, exporting /srv/stord.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
case "$(uname -r)" in
    6.12*) ;;
    *) echo "stord.sh: running $(uname -r), not the stord kernel; the hook engine will be off" >&2 ;;
esac
apt-get install -y -q python3 python3-venv rsync clang llvm bpftool libbpf-dev gcc make
id stord >/dev/null 2>&1 || useradd --system --home /opt/stord --shell /usr/sbin/nologin stord
mkdir -p /opt/stord /etc/stord /srv/stord
rsync -a --delete --exclude .venv /stord/ /opt/stord/
make -C /opt/stord setup
install -m 644 /opt/stord/stord/server/stord.service /etc/systemd/system/stord.service
if [ ! -f /etc/stord/stord.toml ]; then
    cat > /etc/stord/stord.toml <<'TOML'
listen = "0.0.0.0:7411"
engine = "hook"
[exports]
data = "/srv/stord"
TOML
fi
chown -R stord:stord /opt/stord
chmod 640 /etc/stord/stord.toml && chgrp stord /etc/stord/stord.toml
systemctl daemon-reload
systemctl enable --now stord
systemctl --no-pager status stord || true
