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
export ENVMGR_RUNTIME_ID="$(md envmgr-runtime)" ENVMGR_RUNTIME_OWNER="$(md envmgr-owner)"
export ENVMGR_STORAGE=gcs
exec /opt/envmgr/bin/python -m jupyter_server --ServerApp.ip=0.0.0.0 \
  --ServerApp.port="$(md envmgr-port)" --ServerApp.root_dir="$MNT" \
  --IdentityProvider.token="$(md envmgr-token)" \
  --ServerApp.base_url="/proxy/${ENVMGR_RUNTIME_ID}/" --ServerApp.allow_root=True \
  --ServerApp.jpserver_extensions=extensions.envmgr_ext=True \
  --ServerApp.contents_manager_class=extensions.envmgr_ext.contents.SyncContentsManager
