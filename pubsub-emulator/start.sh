#!/bin/sh
# The image's entry point: starts the emulator, waits until it answers, bootstraps the topics
# and subscriptions, then stays with the emulator.
set -eu
port="${PUBSUB_PORT:-8085}"
gcloud beta emulators pubsub start --host-port="0.0.0.0:$port" --project="${PUBSUB_PROJECT_ID:?}" &
emulator=$!
trap 'kill "$emulator"' TERM INT
export PUBSUB_EMULATOR_HOST="localhost:$port"
until curl -fsS "http://$PUBSUB_EMULATOR_HOST/" >/dev/null 2>&1; do
  kill -0 "$emulator" || exit 1
  sleep 1
done
/pubsub/bootstrap.sh /pubsub/resources.txt
touch /tmp/bootstrapped
wait "$emulator"
