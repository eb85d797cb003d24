//! A TCP proxy for fault tests: clients connect to it instead of the broker, and
//! [`FaultProxy::cut`] drops every connection through it at once (as a network failure would),
//! while new connections keep working.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The proxy; it stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    connections: Arc<Mutex<CancellationToken>>,
    cuts: AtomicUsize,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target`. Runs on
    /// the current tokio runtime.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let address = listener.local_addr().expect("proxy address");
        let connections = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        tokio::spawn({
            let (connections, stop) = (connections.clone(), stop.clone());
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
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = cut.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        }
                        // Dropping both sockets here is the "network failure".
                    });
                }
            }
        });
        FaultProxy {
            address,
            connections,
            cuts: AtomicUsize::new(0),
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

    /// How many times [`cut`](Self::cut) was called.
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
