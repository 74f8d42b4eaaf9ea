#!/bin/bash
# envmgr runtime startup script (GCE metadata `startup-script`; google-startup-scripts runs
# it as root at every boot). It only prepares the VM and starts Jupyter's own systemd unit:
# the unprivileged `jupyter` user, the user disk at its home (formatted only when it has no
# filesystem), envmgr's runtime package (hash-checked), the tokens (redeemed once with the
# boot ticket, kept root-only on the boot disk; none is in the metadata).
set -euo pipefail
# @install@
DEV=/dev/disk/by-id/google-user-disk
HOME_DIR=/home/jupyter
CONF=/etc/envmgr-jupyter
UNIT=/etc/systemd/system/envmgr-jupyter.service
JUPYTER_UID=2000   # the same on every VM: the disk's files keep their owner across runtimes
# A spare of the pool has no runtime yet: it installs now (the slow part, done before
# anyone waits) and polls its metadata until a claim names the runtime and attaches the
# user's disk; from there on it boots as any runtime does (and so at every later boot).
md_now() { curl -sf -H 'Metadata-Flavor: Google' "$MD/$1" || true; }
RID="$(md_now envmgr-runtime)"
if [ -z "$RID" ]; then
  envmgr_install
  echo "envmgr: a spare, waiting for a claim" >&2
  until [ -n "$RID" ]; do sleep 1; RID="$(md_now envmgr-runtime)"; done
fi

getent group jupyter >/dev/null || groupadd -g "$JUPYTER_UID" jupyter
id jupyter >/dev/null 2>&1 || useradd -u "$JUPYTER_UID" -g jupyter -M -d "$HOME_DIR" \
  -s /bin/bash jupyter

# The user disk: formatted only if blkid finds no signature at all (exit 2). A filesystem
# (0) is kept; anything else (an unreadable device, an ambiguous probe) stops the boot.
for _ in $(seq 120); do [ -e "$DEV" ] && break; sleep 1; done
[ -e "$DEV" ] || { echo "envmgr: $DEV never appeared" >&2; exit 1; }
set +e; blkid -p "$DEV" >/dev/null 2>&1; probe=$?; set -e
case "$probe" in
  0) ;;
  2) mkfs.ext4 -q -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard "$DEV" ;;
  *) echo "envmgr: blkid -p $DEV exited $probe; refusing to format it" >&2; exit 1 ;;
esac
mkdir -p "$HOME_DIR"
mountpoint -q "$HOME_DIR" || mount -o discard,defaults "$DEV" "$HOME_DIR"
chown jupyter:jupyter "$HOME_DIR"

envmgr_install

# The tokens: the boot ticket is good once; the answer stays root-only on the boot disk,
# so a restart or a resume needs no ticket. The ticket goes to curl in a file, never as
# an argument (a command line is readable by every process on the VM).
mkdir -p "$CONF" && chmod 755 "$CONF"
if [ ! -s "$CONF/credentials.json" ]; then
  ( umask 077
    printf 'Authorization: Bearer %s\n' "$(md envmgr-boot-ticket)" > "$CONF/boot-header"
    curl -sf --retry 5 -X POST -H @"$CONF/boot-header" -o "$CONF/credentials.json.tmp" \
      "$(md envmgr-control-url)/runtime-api/v1/boot"
    mv "$CONF/credentials.json.tmp" "$CONF/credentials.json"
    rm -f "$CONF/boot-header" )
fi
ENVMGR_PORT="$(md envmgr-port)" ENVMGR_RID="$RID" \
  ENVMGR_LOCK_RENEW="$(md envmgr-lock-renew-seconds || echo 60)" \
  ENVMGR_LOCK_IDLE="$(md envmgr-lock-idle-seconds || echo 3600)" \
  ENVMGR_CONTROL="$(md envmgr-control-url)" /opt/envmgr/bin/python - "$CONF" <<'PY'
import json, os, pathlib, pwd, sys
from envmgr_jupyter import labconfig
conf = pathlib.Path(sys.argv[1])
creds = json.loads((conf / "credentials.json").read_text())
rid, user = os.environ["ENVMGR_RID"], pwd.getpwnam("jupyter")
config = {"ServerApp": {"ip": "0.0.0.0", "port": int(os.environ["ENVMGR_PORT"]),
                        "port_retries": 0, "root_dir": "/home/jupyter",
                        "base_url": f"/proxy/{rid}/", "open_browser": False,
                        "contents_manager_class": "envmgr_jupyter.contents.SyncContentsManager"},
          "IdentityProvider": {"token": creds["jupyter_token"]},
          "EnvmgrJupyter": {"control_url": os.environ["ENVMGR_CONTROL"],
                            "runtime_token": creds["runtime_token"],
                            "lock_renew_seconds": float(os.environ["ENVMGR_LOCK_RENEW"]),
                            "lock_idle_seconds": float(os.environ["ENVMGR_LOCK_IDLE"])},
          # What Jupyter writes itself lives on the user's disk, never in root's folder.
          "LabApp": {"user_settings_dir": "/home/jupyter/.jupyter/lab/user-settings",
                     "workspaces_dir": "/home/jupyter/.jupyter/lab/workspaces"}}
# Made anew at every boot, root's and read-only to jupyter: root never writes through a
# path the jupyter user controls (a link planted there would aim root's writes elsewhere).
labconfig.write_folder(conf / "jupyter", config, user.pw_gid)
PY
cat > "$UNIT" <<UNITFILE
[Unit]
Description=envmgr runtime $RID: jupyter-server as jupyter
After=network-online.target
Wants=network-online.target

[Service]
User=jupyter
Group=jupyter
WorkingDirectory=$HOME_DIR
Environment=HOME=$HOME_DIR JUPYTER_CONFIG_DIR=$CONF/jupyter PATH=/opt/envmgr/bin:/usr/bin:/bin
ExecStart=/opt/envmgr/bin/python -m jupyter_server
Restart=always
RestartSec=2
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
UNITFILE
systemctl daemon-reload
systemctl enable envmgr-jupyter.service
systemctl restart envmgr-jupyter.service
