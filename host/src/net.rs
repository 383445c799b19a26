//! The accept loop shared by the proxy and admin listeners: a leaf that
//! knows TCP and tokio, not what is served on the connections.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// The next connection on `listener`, or `None` once `stop` no longer says
/// [`Serving::serving`]. Accept errors (usually EMFILE) are logged and
/// retried after a short back-off instead of spinning.
pub(crate) async fn accept<T: Serving>(
    listener: &TcpListener,
    stop: &mut watch::Receiver<T>,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        if !stop.borrow_and_update().serving() {
            return None;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            changed = stop.changed() => if changed.is_err() { return None },
        }
    }
}

/// A stop signal as seen by an accept loop.
pub(crate) trait Serving {
    /// Whether listeners should keep accepting.
    fn serving(&self) -> bool;
}

impl Serving for bool {
    /// `true` means "stop".
    fn serving(&self) -> bool {
        !*self
    }
}

/// An address as text, as `Display` writes it; IPv4 (the common case) without
/// `fmt`, which costs more than the rest of a request's header work.
pub(crate) fn ip_text(ip: IpAddr) -> String {
    let mut s = String::with_capacity(21);
    push_ip(&mut s, ip);
    s
}

/// `ip:port`, as `SocketAddr`'s `Display` writes it, the same way.
pub(crate) fn addr_text(addr: SocketAddr) -> String {
    if addr.is_ipv6() {
        return addr.to_string();
    }
    let mut s = String::with_capacity(21);
    push_ip(&mut s, addr.ip());
    s.push(':');
    let port = addr.port();
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = port;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.extend(digits[i..].iter().map(|&b| char::from(b)));
    s
}

fn push_ip(s: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        s.push_str(&ip.to_string());
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if octet >= 100 {
            s.push((b'0' + octet / 100) as char);
        }
        if octet >= 10 {
            s.push((b'0' + octet / 10 % 10) as char);
        }
        s.push((b'0' + octet % 10) as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_as_display_does() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:40000",
            "10.20.30.40:8080",
            "255.255.255.255:65535",
            "1.100.9.99:1",
            "[::1]:8080",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(addr_text(addr), addr.to_string());
            assert_eq!(ip_text(addr.ip()), addr.ip().to_string());
        }
    }
}
