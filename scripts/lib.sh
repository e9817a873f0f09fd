# Shared by scripts/test and scripts/up: install what a fresh Debian machine lacks.

step() { printf '\n==> %s\n' "$*"; }

# ensure_debian_packages binary:package ...  installs the package of each missing binary.
ensure_debian_packages() {
  local missing=() pair bin pkg
  for pair in "$@"; do
    bin=${pair%%:*}; pkg=${pair#*:}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$pkg")
  done
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  step "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages start their services; the tests start their own on free ports.
  for svc in prometheus prometheus-alertmanager rabbitmq-server; do
    if printf '%s\n' "${missing[@]}" | grep -qx "$svc"; then
      service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
}

# ensure_venv: .venv with the package and its dev extra, reinstalled when pyproject changes.
ensure_venv() {
  local stamp=.venv/.installed-from
  if [ ! -x .venv/bin/python ]; then
    step "python3 -m venv .venv"
    python3 -m venv .venv
  fi
  if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
    step "pip install -e '.[dev]'"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    cp pyproject.toml "$stamp"
  fi
}
