#!/usr/bin/env bash
# The whole bus test suite: every crate, every backend, against real brokers where a backend
# needs one. Installs what it needs where it can (Debian/Ubuntu, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== bus test suite: $(date -u +%FT%TZ) on $(nproc) cores"
cargo --version

# Two cores: one test binary at a time, its tests two at a time.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"

# Real brokers: the MQTT tests start their own Mosquitto (never the system one on 1883), and
# make TLS certificates with openssl and password files with mosquitto_passwd; the Pub/Sub
# interop tests speak the emulator's REST API with curl.
missing=()
for tool in mosquitto mosquitto_passwd mosquitto_pub mosquitto_sub openssl curl docker-compose; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || [ -x "/usr/bin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing mosquitto, mosquitto-clients, openssl, curl and docker-compose (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients openssl curl docker-compose
  else
    echo "ERROR: the tests need ${missing[*]}:" >&2
    echo "       apt-get install -y mosquitto mosquitto-clients openssl curl docker-compose" >&2
    exit 1
  fi
fi

# Google's Pub/Sub emulator (Java 17+); not in Debian's archive, so it cannot be installed here.
if [ -z "${PUBSUB_EMULATOR_HOST:-}" ]; then
  emulator="${PUBSUB_EMULATOR_BIN:-/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator}"
  if [ ! -x "$emulator" ] && ! command -v gcloud >/dev/null; then
    echo "ERROR: the Pub/Sub tests need Google's emulator: apt-get install -y google-cloud-cli-pubsub-emulator" >&2
    echo "       (from Google's Cloud SDK apt repository) or gcloud components install pubsub-emulator;" >&2
    echo "       or set PUBSUB_EMULATOR_BIN, or PUBSUB_EMULATOR_HOST=HOST:PORT for a running emulator" >&2
    exit 1
  fi
fi

# The Python services' own libraries, for the interop tests: a virtualenv in .venv with paho,
# cloudevents and Google's Pub/Sub client.
if [ -z "${BUS_TEST_PYTHON:-}" ]; then
  if ! .venv/bin/python -c "import paho.mqtt, cloudevents.conversion, google.cloud.pubsub_v1" 2>/dev/null; then
    echo "== creating .venv with paho-mqtt 2.1, cloudevents and google-cloud-pubsub"
    if ! python3 -m venv .venv; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv .venv
      else
        echo "ERROR: the interop tests need python3-venv: apt-get install -y python3-venv" >&2
        exit 1
      fi
    fi
    .venv/bin/pip install -q "paho-mqtt==2.1.0" "cloudevents>=1.11,<2" "google-cloud-pubsub>=2.20,<3"
  fi
  export BUS_TEST_PYTHON="$PWD/.venv/bin/python"
fi

# Mosquitto builds for the broker matrix: BUS_TEST_MOSQUITTO=path:path names them; otherwise
# the sources in ../shared/brokers (2.0.20, the compose image's version, and 2.1.2, the
# newest) are built when present. The installed broker always runs the whole suite.
installed=$(command -v mosquitto || echo /usr/sbin/mosquitto)
# "version X.Y.Z" of a Mosquitto binary (`mosquitto -h` exits with status 3).
broker_version() { { "$1" -h 2>&1 || true; } | grep -o 'version [0-9.]*' | head -n1; }
brokers=()
if [ -n "${BUS_TEST_MOSQUITTO:-}" ]; then
  IFS=: read -r -a brokers <<<"$BUS_TEST_MOSQUITTO"
elif [ -f ../shared/brokers/build-mosquitto.sh ]; then
  # Mosquitto 2.1's tools need libedit's headers, which the build script does not install.
  if ! dpkg -s libedit-dev >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libedit-dev >/dev/null
  fi
  echo "== building the Mosquitto versions in ../shared/brokers"
  mapfile -t brokers < <(bash ../shared/brokers/build-mosquitto.sh)
fi
unset BUS_TEST_MOSQUITTO

echo "== quality gates: rustfmt, clippy, rustdoc"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet

echo "== the whole suite, MQTT on $(broker_version "$installed") ($installed)"
cargo test --workspace --all-features --no-fail-fast
# The facade without backend features: asking for mqtt/gcp must name the missing feature.
cargo test -p bus --no-default-features --test config

# Every MQTT test binary again on each other broker: bus-mqtt's own and the examples' MQTT
# end-to-end tests (named *mosquitto*).
covered=("$(broker_version "$installed") ($installed)")
for broker in "${brokers[@]}"; do
  [ "$broker" = "$installed" ] && continue
  version=$(broker_version "$broker")
  echo "== MQTT tests on Mosquitto $version ($broker)"
  BUS_TEST_MOSQUITTO="$broker" cargo test --all-features -p bus-mqtt --tests --no-fail-fast
  BUS_TEST_MOSQUITTO="$broker" cargo test --all-features -p bus-examples --tests --no-fail-fast -- mosquitto
  BUS_TEST_MOSQUITTO="$broker" cargo test --all-features -p bus-cli --test soak -- mqtt
  covered+=("$version ($broker)")
done
echo "== MQTT brokers covered: ${covered[*]}"
if [ ${#covered[@]} -lt 3 ]; then
  echo "   (only the installed broker: ../shared/brokers is not here; set BUS_TEST_MOSQUITTO=path:path to add others)"
fi
