//! Loopback ports for the servers tests start.

/// A loopback port nothing listens on now, below the kernel's ephemeral range: a port from
/// that range (what binding port 0 gives) may be handed to another `:0` bind or to an
/// outgoing connection before the test binds it, as a cluster node's route port once was.
/// Each call in a process moves on from the last, so two callers never get the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_from = u32::from(ephemeral_ports_from()).max(LOWEST + 1_000);
    let span = ephemeral_from - LOWEST;
    // Processes (test binaries) start at different places, so they rarely meet either.
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = (LOWEST + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOWEST} and {ephemeral_from}")
}

/// The first port the kernel hands out for a `:0` bind or an outgoing connection.
fn ephemeral_ports_from() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(port < ephemeral_ports_from(), "{port}");
            // A process another test spawns holds a copy of free_port's probe socket until
            // its exec closes it, so the port may take a moment to come free.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            while let Err(error) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                assert!(std::time::Instant::now() < deadline, "{port}: {error}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}
