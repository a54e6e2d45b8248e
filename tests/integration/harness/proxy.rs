//! A TCP proxy on port 0 in front of a server, to take the server away for real: once stopped,
//! its port refuses connections (the kernel answers with a reset) and the connections it relayed
//! are closed, as when a database server goes down.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Relays every connection to `upstream` until [`stop`](Self::stop) (or drop).
pub struct TcpProxy {
    /// `host:port` to connect to instead of the server.
    pub address: String,
    stop: oneshot::Sender<()>,
    relaying: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: String) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let address = listener.local_addr().expect("local address").to_string();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let relaying = tokio::spawn(async move {
            let mut relays = JoinSet::new();
            loop {
                let (mut client, _) = tokio::select! {
                    // Stopped, or the proxy dropped.
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                let upstream = upstream.clone();
                relays.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                // Forget relays that ended.
                while relays.try_join_next().is_some() {}
            }
            drop(listener);
            relays.shutdown().await;
        });
        TcpProxy {
            address,
            stop,
            relaying,
        }
    }

    /// Close the port and every relayed connection; returns once both are closed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.relaying.await.expect("the proxy task");
    }
}
