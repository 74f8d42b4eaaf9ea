# -- shared by the runtime and job startup scripts (the backend puts it in both) -------------
MD=http://metadata.google.internal/computeMetadata/v1/instance/attributes
md() { curl -sf --retry 5 -H 'Metadata-Flavor: Google' "$MD/$1"; }

# envmgr's runtime package, exactly the control plane's version: the requirements file its
# metadata names, checked against the SHA-256 beside it, then every wheel checked by pip
# against the hashes in that file (--require-hashes). Skipped when already installed.
envmgr_install() {
  local want url req
  want="$(md envmgr-package-sha256)"
  url="$(md envmgr-package-url)"
  [ "$(cat /opt/envmgr/.package-sha256 2>/dev/null)" = "$want" ] && return 0
  if ! python3 -c 'import ensurepip' 2>/dev/null || [ "$#" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "$@" >/dev/null
  fi
  req="$(mktemp)"
  curl -sf --retry 5 -o "$req" "$url"
  if ! echo "$want  $req" | sha256sum -c --quiet -; then
    echo "envmgr: $url is not the file the control plane named; not installing" >&2
    exit 1
  fi
  rm -rf /opt/envmgr
  python3 -m venv /opt/envmgr
  /opt/envmgr/bin/pip install -q --no-input --disable-pip-version-check --require-hashes \
    --only-binary :all: -r "$req"
  echo "$want" > /opt/envmgr/.package-sha256
  rm -f "$req"
}
