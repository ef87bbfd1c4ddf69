//! A UDP relay that holds every datagram for a fixed time each way: a slow link (satellite,
//! cellular) between hosts and the control plane, here where `tc netem` is not; it may drop a
//! share of them too (loss on the control plane's own link, [`DelayRelay::start_lossy`]), or
//! the ones a test picks ([`DelayRelay::start_filtered`]). Each client
//! address gets a socket of its own toward the upstream, so the upstream sees one peer per
//! client, as QUIC needs. Stopped (its threads joined) on drop.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which way a datagram goes through the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// From a client to the upstream.
    Up,
    /// From the upstream back to a client.
    Down,
}

/// What [`DelayRelay::start_filtered`] asks of each datagram, in the order they come due:
/// whether it goes on (else it is dropped silently).
pub type Keep = Box<dyn FnMut(Way, &[u8]) -> bool + Send>;

/// A datagram due to be sent.
struct Held {
    due: Instant,
    way: Way,
    from: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The relay (see the module).
#[derive(Debug)]
pub struct DelayRelay {
    /// Where clients send to.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// How often the relay's threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

impl DelayRelay {
    /// Relays datagrams sent to `listen` on to `upstream` and back, each held `delay` on its
    /// way (a round trip gains twice `delay`).
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        delay: Duration,
    ) -> std::io::Result<Self> {
        Self::start_lossy(listen, upstream, delay, 0, 0)
    }

    /// As [`DelayRelay::start`], and drops `loss_percent` % of the datagrams each way, each
    /// drawn at random from `seed`'s sequence (silently, as a link loses them).
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn start_lossy(
        listen: SocketAddr,
        upstream: SocketAddr,
        delay: Duration,
        loss_percent: u32,
        seed: u64,
    ) -> std::io::Result<Self> {
        let mut rng = crate::power::Rng::new(seed);
        let keep =
            move |_: Way, _: &[u8]| loss_percent == 0 || rng.below(100) >= u64::from(loss_percent);
        Self::start_filtered(listen, upstream, delay, Box::new(keep))
    }

    /// As [`DelayRelay::start`], and drops the datagrams `keep` says no to (it sees every
    /// datagram, either way, once it is due).
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn start_filtered(
        listen: SocketAddr,
        upstream: SocketAddr,
        delay: Duration,
        mut keep: Keep,
    ) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(listen)?);
        front.set_read_timeout(Some(POLL))?;
        let addr = front.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<Held>();
        // One sender: the delay is the same for every datagram, so they come due in the order
        // they arrived.
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(held) = rx.recv_timeout(POLL) else {
                        continue;
                    };
                    let now = Instant::now();
                    if held.due > now {
                        std::thread::sleep(held.due - now);
                    }
                    if !keep(held.way, &held.bytes) {
                        continue;
                    }
                    let _ = held.from.send_to(&held.bytes, held.to);
                }
            })
        };
        let receiver = {
            let (stop, threads, front) = (stop.clone(), threads.clone(), front.clone());
            std::thread::spawn(move || {
                let mut toward: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, client)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    let up = match toward.get(&client) {
                        Some(s) => s.clone(),
                        None => {
                            let Ok(s) = UdpSocket::bind(("0.0.0.0", 0)).map(Arc::new) else {
                                continue;
                            };
                            let _ = s.set_read_timeout(Some(POLL));
                            let back = {
                                let (stop, s, front, tx) =
                                    (stop.clone(), s.clone(), front.clone(), tx.clone());
                                std::thread::spawn(move || {
                                    let mut buf = vec![0u8; 65_536];
                                    while !stop.load(Ordering::Relaxed) {
                                        if let Ok((n, _)) = s.recv_from(&mut buf) {
                                            let _ = tx.send(Held {
                                                due: Instant::now() + delay,
                                                way: Way::Down,
                                                from: front.clone(),
                                                to: client,
                                                bytes: buf[..n].to_vec(),
                                            });
                                        }
                                    }
                                })
                            };
                            threads.lock().unwrap_or_else(|p| p.into_inner()).push(back);
                            toward.insert(client, s.clone());
                            s
                        }
                    };
                    let _ = tx.send(Held {
                        due: Instant::now() + delay,
                        way: Way::Up,
                        from: up,
                        to: upstream,
                        bytes: buf[..n].to_vec(),
                    });
                }
            })
        };
        threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([sender, receiver]);
        Ok(Self {
            addr,
            stop,
            threads,
        })
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_through_the_relay_takes_twice_its_delay() {
        let echo = UdpSocket::bind("127.0.0.1:0").expect("echo");
        let echo_addr = echo.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            let (n, from) = echo.recv_from(&mut buf).expect("ping");
            echo.send_to(&buf[..n], from).expect("pong");
        });
        let relay = DelayRelay::start(
            "127.0.0.1:0".parse().expect("addr"),
            echo_addr,
            Duration::from_millis(150),
        )
        .expect("relay");
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let sent = Instant::now();
        client.send_to(b"ping", relay.addr).expect("send");
        let mut buf = [0u8; 16];
        let (n, _) = client.recv_from(&mut buf).expect("answer");
        assert_eq!(&buf[..n], b"ping");
        assert!(
            sent.elapsed() >= Duration::from_millis(300),
            "{:?}",
            sent.elapsed()
        );
        server.join().expect("echo");
    }
}
