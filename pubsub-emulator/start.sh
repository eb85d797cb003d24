#!/bin/sh
# The image's entry point: starts the emulator, waits until it answers, creates the topics and
# subscriptions of provision.toml with `bus provision`, then stays with the emulator.
set -eu
port="${PUBSUB_PORT:-8085}"
gcloud beta emulators pubsub start --host-port="0.0.0.0:$port" --project="${PUBSUB_PROJECT_ID:?}" &
emulator=$!
trap 'kill "$emulator"' TERM INT
until curl -fsS "http://localhost:$port/" >/dev/null 2>&1; do
  kill -0 "$emulator" || exit 1
  sleep 1
done
BUS_GCP__PROJECT="$PUBSUB_PROJECT_ID" BUS_GCP__ENDPOINT="http://localhost:$port" \
  bus --backend gcp provision /pubsub/provision.toml
touch /tmp/provisioned
wait "$emulator"
