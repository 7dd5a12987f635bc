//! What both runtimes set on an accepted connection's socket.

use std::time::Duration;

use socket2::SockRef;

/// Sets up an accepted connection: no Nagle delay (replies are small and
/// each is awaited), and a send buffer of `max_backlog` bytes.
///
/// The engine bounds what a connection owes its peer to `max_backlog`
/// (`docs/SECURITY.md`, "Connections"), counting bytes as sent once the
/// kernel takes them. Left to autotuning, the kernel would take up to
/// several MiB per connection from a client that never reads, hiding the
/// stall from the engine (and its `write_timeout`) for that long. The
/// kernel doubles the value for its own bookkeeping.
pub fn configure(socket: SockRef<'_>, max_backlog: usize, read_timeout: Option<Duration>) -> std::io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    socket.set_send_buffer_size(max_backlog)?;
    if read_timeout.is_some() {
        socket.set_read_timeout(read_timeout)?;
    }
    Ok(())
}
