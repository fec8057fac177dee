//! The TCP settings of every server this crate runs (the API, the development
//! gateway, the offline provider, and the tests' and benchmarks' mocks).

use tokio::net::TcpListener;

/// `listener` with TCP_NODELAY on every accepted connection: an SSE event or a streamed
/// chunk goes out when it is written, not after the peer's delayed ACK (about 40 ms on
/// Linux), as Nagle's algorithm would have it for small writes.
pub fn nodelay(
    listener: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    })
}
