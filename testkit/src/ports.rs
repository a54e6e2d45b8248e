//! Free local ports.

use std::net::TcpListener;

/// `N` distinct free local ports.
///
/// Every listener is held until all `N` are picked: releasing each at once would let the OS hand
/// the same port out twice. Another process can still take one between this call and its use,
/// since the dev server cannot be given bound sockets: `DevServer` notices the server exit and
/// starts it again on fresh ports.
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::free_ports;

    #[test]
    fn the_ports_handed_out_together_are_distinct() {
        let mut ports = free_ports::<8>().unwrap();
        ports.sort_unstable();
        assert!(ports.windows(2).all(|w| w[0] != w[1]), "{ports:?}");
        assert!(!ports.contains(&0));
    }
}
