//! TLS for `mqtts://` URLs.

use bus_core::{Error, Result};
use rumqttc::Transport;

use crate::config::MqttConfig;
use crate::BACKEND;

fn read(key: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::config(
            BACKEND,
            format!(
                "{key} = {:?} cannot be read: {e}; point it at a PEM file",
                path.display()
            ),
        )
    })
}

/// The rumqttc transport for the configured certificates: the CA file if given (else the
/// platform's default roots), plus the client certificate and key for mutual TLS.
pub(crate) fn transport(config: &MqttConfig) -> Result<Transport> {
    let client_auth = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => Some((
            read("mqtt.client_cert_file", cert)?,
            read("mqtt.client_key_file", key)?,
        )),
        _ => None,
    };
    match &config.ca_file {
        Some(ca) => Ok(Transport::tls(read("mqtt.ca_file", ca)?, client_auth, None)),
        None if client_auth.is_none() => Ok(Transport::tls_with_default_config()),
        None => Err(Error::config(
            BACKEND,
            "mqtt.client_cert_file needs mqtt.ca_file as well (the CA that signed the broker's certificate)",
        )),
    }
}
