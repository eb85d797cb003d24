//! A TCP proxy for fault tests: clients connect to it instead of the broker, and
//! [`FaultProxy::cut`] drops every connection through it at once (as a network failure would),
//! while new connections keep working. [`FaultProxy::start_cutting_after_unsubscribe`] drops
//! each MQTT connection on its own, right after its first UNSUBSCRIBE reached the broker: a
//! client that vanishes half-way through unsubscribing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The proxy; it stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    connections: Arc<Mutex<CancellationToken>>,
    cuts: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target`. Runs on
    /// the current tokio runtime.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        FaultProxy::listen(target, None).await
    }

    /// Like [`start`](Self::start), for MQTT: once a connection has sent its first
    /// UNSUBSCRIBE, nothing more it sends is forwarded, and it is dropped 200 ms later (the
    /// broker has handled that UNSUBSCRIBE by then, and no other). Counted in
    /// [`cuts`](Self::cuts).
    pub async fn start_cutting_after_unsubscribe(target: SocketAddr) -> FaultProxy {
        FaultProxy::listen(target, Some(MQTT_UNSUBSCRIBE)).await
    }

    async fn listen(target: SocketAddr, cut_after: Option<u8>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let address = listener.local_addr().expect("proxy address");
        let connections = Arc::new(Mutex::new(CancellationToken::new()));
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        tokio::spawn({
            let (connections, cuts, stop) = (connections.clone(), cuts.clone(), stop.clone());
            async move {
                loop {
                    let accepted = tokio::select! {
                        _ = stop.cancelled() => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((mut inbound, _)) = accepted else {
                        continue;
                    };
                    let cut = connections.lock().expect("proxy lock").clone();
                    let cuts = cuts.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        match cut_after {
                            None => {
                                tokio::select! {
                                    _ = cut.cancelled() => {}
                                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                }
                            }
                            Some(kind) => {
                                tokio::select! {
                                    _ = cut.cancelled() => {}
                                    cut_short = forward_until(&mut inbound, &mut outbound, kind) => {
                                        if cut_short {
                                            cuts.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                }
                            }
                        }
                        // Dropping both sockets here is the "network failure".
                    });
                }
            }
        });
        FaultProxy {
            address,
            connections,
            cuts,
            stop,
        }
    }

    /// Where clients should connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Drops every connection open through the proxy now.
    pub fn cut(&self) {
        let old = std::mem::replace(
            &mut *self.connections.lock().expect("proxy lock"),
            CancellationToken::new(),
        );
        old.cancel();
        self.cuts.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times [`cut`](Self::cut) was called, and how many connections a
    /// [`start_cutting_after_unsubscribe`](Self::start_cutting_after_unsubscribe) proxy dropped.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.connections.lock().expect("proxy lock").cancel();
    }
}

/// The MQTT packet type of UNSUBSCRIBE (the high nibble of a packet's first byte).
const MQTT_UNSUBSCRIBE: u8 = 10;

/// Forwards both ways, packet by packet from the client, until the client has sent a packet of
/// type `kind`; then forwards only the broker's side for 200 ms. Returns whether it stopped for
/// that packet (not because either side closed).
async fn forward_until(inbound: &mut TcpStream, outbound: &mut TcpStream, kind: u8) -> bool {
    let (mut client_read, mut client_write) = inbound.split();
    let (mut broker_read, mut broker_write) = outbound.split();
    let to_client = tokio::io::copy(&mut broker_read, &mut client_write);
    tokio::pin!(to_client);
    let to_broker = async {
        let mut pending = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let read = client_read.read(&mut chunk).await?;
            if read == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            pending.extend_from_slice(&chunk[..read]);
            while let Some(length) = mqtt_packet_length(&pending) {
                let packet: Vec<u8> = pending.drain(..length).collect();
                broker_write.write_all(&packet).await?;
                if packet[0] >> 4 == kind {
                    return Ok(true);
                }
            }
        }
    };
    tokio::select! {
        _ = &mut to_client => false,
        sent = to_broker => {
            if !matches!(sent, Ok(true)) {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), &mut to_client).await;
            true
        }
    }
}

/// The length of the MQTT packet at the start of `buffer` (fixed header included), once all
/// of it is there.
fn mqtt_packet_length(buffer: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for (i, byte) in buffer.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 1 + (i + 1) + remaining;
            return (buffer.len() >= total).then_some(total);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::mqtt_packet_length;

    #[test]
    fn mqtt_packets_are_measured_once_complete() {
        assert_eq!(mqtt_packet_length(&[0xa2]), None);
        assert_eq!(mqtt_packet_length(&[0xe0, 0x00]), Some(2));
        assert_eq!(mqtt_packet_length(&[0xa2, 0x03, 1, 2]), None);
        assert_eq!(mqtt_packet_length(&[0xa2, 0x03, 1, 2, 3, 9]), Some(5));
        // 321 = 0xc1 0x02 as a variable byte integer.
        let mut long = vec![0x30, 0xc1, 0x02];
        long.resize(3 + 321, 0);
        assert_eq!(mqtt_packet_length(&long), Some(324));
        assert_eq!(mqtt_packet_length(&long[..323]), None);
    }
}
