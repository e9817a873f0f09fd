#!/bin/sh
# Starts Prometheus on the committed prometheus.yml, adding a remote_write section when
# PROMETHEUS_REMOTE_WRITE_URL is set (Prometheus reads no environment variable there).
# The compose services and the local twin both start Prometheus through it.
#
#   start.sh PROMETHEUS_BINARY [FLAG...]     one flag is --config.file=FILE
#   start.sh --check                         only judge PROMETHEUS_REMOTE_WRITE_URL
#
# Unset or empty: Prometheus runs on FILE as it is, no remote_write. Set: FILE plus
#   remote_write: [{url: PROMETHEUS_REMOTE_WRITE_URL}]
# is written to PROMETHEUS_EFFECTIVE_DIR (default /etc/prometheus/effective, a tmpfs in
# compose) with a `rules` link to FILE's rules, and Prometheus reads that instead. The
# series it writes carry the external labels `cluster` and `replica` (prometheus.yml).
# A value that is not an http(s) URL stops here: one line, exit 2 (the URL may hold a
# password, so the line does not repeat it).
set -eu

url="${PROMETHEUS_REMOTE_WRITE_URL:-}"
case "$url" in
"") ;;
*[[:space:]\"\\]*)
  echo "PROMETHEUS_REMOTE_WRITE_URL: must not contain spaces, quotes or backslashes" >&2
  exit 2
  ;;
http://?* | https://?*) ;;
*)
  echo "PROMETHEUS_REMOTE_WRITE_URL: must be an http:// or https:// URL (the long-term store's write endpoint)" >&2
  exit 2
  ;;
esac
if [ "${1:-}" = --check ]; then exit 0; fi
if [ -z "$url" ]; then exec "$@"; fi

dir="${PROMETHEUS_EFFECTIVE_DIR:-/etc/prometheus/effective}"
mkdir -p "$dir"
config=""
for arg do
  shift
  case "$arg" in
  --config.file=*)
    config="${arg#--config.file=}"
    arg="--config.file=$dir/prometheus.yml"
    ;;
  esac
  set -- "$@" "$arg"
done
if [ -z "$config" ]; then
  echo "prometheus/start.sh: no --config.file=FILE among the flags" >&2
  exit 2
fi
{
  cat "$config"
  printf '\nremote_write:\n  - url: "%s"\n' "$url"
} >"$dir/prometheus.yml"
ln -sfn "$(dirname "$config")/rules" "$dir/rules"
exec "$@"
