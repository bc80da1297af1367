#!/usr/bin/env bash
# The Debian packages the test suite uses, installed when missing. `make test` runs this before any test.
#
#   prometheus               promtool checks and unit-tests the alert rules; the end-to-end tests run a real
#                            Prometheus against a worker
#   prometheus-alertmanager  amtool checks the Alertmanager configuration
#   chromium, chromium-driver  the pages' tests open them in headless Chromium (Selenium drives it)
#
# As root, or with password-less sudo, it installs what is missing with apt-get (running `apt-get update` once
# when the first attempt fails). Otherwise it prints one sentence naming the missing packages and the command
# that installs them, and exits 2 before any test runs.
set -uo pipefail

# package:command-that-shows-it-is-installed
PACKAGES=(
  prometheus:promtool
  prometheus-alertmanager:amtool
  chromium:chromium
  chromium-driver:chromedriver
)

missing=()
join() { local IFS=,; echo "$*" | sed 's/,/, /g'; }
for entry in "${PACKAGES[@]}"; do
  command -v "${entry#*:}" >/dev/null 2>&1 || missing+=("${entry%%:*}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    sudo="sudo -n"
  else
    echo "make test: the tests need the Debian packages $(join "${missing[@]}"), which are not installed; install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 2
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "make test: the tests need the Debian packages $(join "${missing[@]}"), and this machine has no apt-get to install them." >&2
  exit 2
fi

export DEBIAN_FRONTEND=noninteractive
echo "make test: installing $(join "${missing[@]}") with apt-get" >&2
install() { $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
if ! install; then
  $sudo apt-get update -q >/dev/null && install || {
    echo "make test: apt-get could not install $(join "${missing[@]}"); see the messages above." >&2
    exit 2
  }
fi
for entry in "${PACKAGES[@]}"; do
  if ! command -v "${entry#*:}" >/dev/null 2>&1; then
    echo "make test: ${entry%%:*} was installed but ${entry#*:} is not on PATH." >&2
    exit 2
  fi
done
