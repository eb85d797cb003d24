#!/bin/sh
# Creates the topics and subscriptions listed in a resources file on a Pub/Sub emulator, with
# bus-gcp's name encoding. Idempotent: what exists already is left alone.
#
#   PUBSUB_EMULATOR_HOST=localhost:8085 PUBSUB_PROJECT_ID=autopatch ./bootstrap.sh [resources.txt]
#
# Runs in the emulator image (compose) and natively against an installed emulator.
set -eu

host="${PUBSUB_EMULATOR_HOST:?set PUBSUB_EMULATOR_HOST=HOST:PORT of the emulator}"
project="${PUBSUB_PROJECT_ID:?set PUBSUB_PROJECT_ID (the same as BUS_GCP__PROJECT)}"
resources="${1:-$(dirname "$0")/resources.txt}"
base="http://$host/v1/projects/$project"

# bus-gcp's encoding (bus-gcp/src/names.rs): `/` -> `+s`, `%` -> `+p`, padded to 3 with `+z`.
encode() {
  id=$(printf '%s' "$1" | sed -e 's/%/+p/g' -e 's#/#+s#g')
  while [ "${#id}" -lt 3 ]; do id="$id+z"; done
  printf '%s' "$id"
}

# PUT that treats 409 ALREADY_EXISTS as success.
put() {
  status=$(curl -sS -o /tmp/bootstrap.$$ -w '%{http_code}' -X PUT -H 'content-type: application/json' \
    --data "$2" "$base/$1") || { echo "bootstrap: cannot reach the emulator at $host" >&2; exit 1; }
  case "$status" in
    200) echo "created $1" ;;
    409) echo "exists  $1" ;;
    *) echo "bootstrap: PUT $1 failed with HTTP $status: $(cat /tmp/bootstrap.$$)" >&2; rm -f /tmp/bootstrap.$$; exit 1 ;;
  esac
  rm -f /tmp/bootstrap.$$
}

grep -v '^[[:space:]]*\(#\|$\)' "$resources" | while read -r kind a b c; do
  case "$kind" in
    topic)
      put "topics/$(encode "$a")" '{}'
      ;;
    subscription)
      [ -n "$b" ] || { echo "bootstrap: 'subscription $a' needs a topic" >&2; exit 1; }
      topic_id=$(encode "$b")
      put "topics/$topic_id" '{}'
      put "subscriptions/$(encode "$a")++$topic_id" \
        "{\"topic\": \"projects/$project/topics/$topic_id\", \"ackDeadlineSeconds\": ${c:-10}}"
      ;;
    *)
      echo "bootstrap: unknown line '$kind $a $b $c' in $resources (expected topic or subscription)" >&2
      exit 1
      ;;
  esac
done
