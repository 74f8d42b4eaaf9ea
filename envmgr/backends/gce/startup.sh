#!/bin/bash
# envmgr runtime startup script (GCE metadata `startup-script`): mount the user's disk
# (formatting it only when it is new), then run jupyter-server with the envmgr extension.
set -euo pipefail
md() { curl -sf -H 'Metadata-Flavor: Google' "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }
DEV=/dev/disk/by-id/google-user-disk
MNT=/home/jupyter
mkdir -p "$MNT"
if ! blkid "$DEV" >/dev/null 2>&1; then
  mkfs.ext4 -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard "$DEV"   # new disk only
fi
mountpoint -q "$MNT" || mount -o discard,defaults "$DEV" "$MNT"
if [ ! -x /opt/envmgr/bin/jupyter-server ]; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv /opt/envmgr && /opt/envmgr/bin/pip install -q "$(md envmgr-package)"
fi
# The Jupyter configuration goes in a file (its tokens never on a command line); the
# envmgr_jupyter extension reaches the workspace only through the control plane's runtime API.
RID="$(md envmgr-runtime)"
CONF=/etc/envmgr-jupyter
mkdir -p "$CONF/jupyter_server_config.d" && chmod 700 "$CONF"
cat > "$CONF/jupyter_server_config.json" <<JSON
{"ServerApp": {"ip": "0.0.0.0", "port": $(md envmgr-port), "root_dir": "$MNT",
  "base_url": "/proxy/$RID/", "allow_root": true, "open_browser": false,
  "contents_manager_class": "envmgr_jupyter.contents.SyncContentsManager"},
 "IdentityProvider": {"token": "$(md envmgr-token)"},
 "EnvmgrJupyter": {"control_url": "$(md envmgr-control-url)",
                   "runtime_token": "$(md envmgr-runtime-token)"}}
JSON
echo '{"ServerApp": {"jpserver_extensions": {"envmgr_jupyter": true}}}' \
  > "$CONF/jupyter_server_config.d/envmgr_jupyter.json"
chmod 600 "$CONF"/jupyter_server_config.json
/opt/envmgr/bin/python -m envmgr_jupyter.labconfig "$CONF"   # JupyterLab: envmgr's extension
export JUPYTER_CONFIG_DIR="$CONF" ENVMGR_RUNTIME_ID="$RID"
exec /opt/envmgr/bin/python -m jupyter_server
