#!/bin/sh
# Writes the password file from BUS_MQTT__USERNAME / BUS_MQTT__PASSWORD (deploy/mqtt.env, the
# same variables the services read), then runs Mosquitto.
set -eu
: "${BUS_MQTT__USERNAME:?set BUS_MQTT__USERNAME in deploy/mqtt.env}"
: "${BUS_MQTT__PASSWORD:?set BUS_MQTT__PASSWORD in deploy/mqtt.env}"
mkdir -p /mosquitto/config
cp /bus/mosquitto.conf /bus/acl /mosquitto/config/
mosquitto_passwd -b -c /mosquitto/config/passwd "$BUS_MQTT__USERNAME" "$BUS_MQTT__PASSWORD"
chmod 0700 /mosquitto/config/passwd /mosquitto/config/acl
# Mosquitto drops to its own user (uid 1883 in the image) and reads these files as that user.
if id mosquitto >/dev/null 2>&1; then
  chown mosquitto:mosquitto /mosquitto/config/passwd /mosquitto/config/acl
fi
exec mosquitto -c /mosquitto/config/mosquitto.conf
