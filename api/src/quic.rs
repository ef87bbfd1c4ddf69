//! An agent's side of the QUIC session's start, shared by `nodeagent` and the fleet
//! simulator (feature `quic`): its client settings, and the wait for the answer to its hello
//! with what it does when the control plane lost its last handshake flight.

use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;

use crate::session::{handshake_confirm_within, IDLE_TIMEOUT, KEEP_ALIVE};
use crate::{read_frame, FrameError, HelloReply};

/// The connection-level receive window an agent offers (RFC 9000 §4.1: `MAX_DATA`), in
/// bytes: far above what its streams' own windows (quinn's 1.25 MB each, 100 streams) can have
/// unread at once, so it never limits a transfer; finite, so that [`nudge`] can raise it.
pub const RECEIVE_WINDOW: u32 = u32::MAX >> 1;

/// The highest initial round-trip estimate [`initial_rtt`] takes: a first Initial lost is
/// then sent again within 6 s (three estimates).
pub const MAX_INITIAL_RTT: Duration = Duration::from_secs(2);

/// quinn's default initial round-trip estimate (RFC 9002 §6.2.2's 333 ms), the least
/// [`initial_rtt`] takes.
pub const DEFAULT_INITIAL_RTT: Duration = Duration::from_millis(333);

/// The least time after the hello before [`hello_reply`] nudges: on a fast path quinn's own
/// probe timeout is as quick, and a control plane busy admitting a fleet answers later than
/// two round trips without anything lost.
pub const NUDGE_AFTER: Duration = Duration::from_millis(100);

/// The initial round-trip estimate of a dial whose path's round-trip time is known from the
/// last session (RFC 9002 §6.2.2: a resumed connection over the same network may start from
/// the previous connection's smoothed RTT): `known`, but never below [`DEFAULT_INITIAL_RTT`]
/// (a control plane slow to answer Initials under load would otherwise be sent them again
/// every few milliseconds) nor above [`MAX_INITIAL_RTT`]. On a 1 s path the default sends the
/// first Initial again just before its answer comes, and that needless probe doubles every
/// later probe timeout of the handshake (RFC 9002 §6.2.1: acknowledgments in Initial packets
/// do not reset it).
pub fn initial_rtt(known: Duration) -> Duration {
    known.clamp(DEFAULT_INITIAL_RTT, MAX_INITIAL_RTT)
}

/// An agent's QUIC client settings over `tls`: keep-alives every [`KEEP_ALIVE`], an idle
/// timeout of [`IDLE_TIMEOUT`], a receive window of [`RECEIVE_WINDOW`], and the first round-trip
/// estimate from `known_rtt`, the last session's, when there is one ([`initial_rtt`]).
///
/// # Errors
/// When `tls` offers no cipher suite QUIC can use (TLS 1.3 with an initial suite, RFC 9001 §5.3).
pub fn client_config(
    tls: rustls::ClientConfig,
    known_rtt: Option<Duration>,
) -> Result<quinn::ClientConfig, quinn::crypto::rustls::NoInitialCipherSuite> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    let idle_ms = u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(idle_ms).into()));
    transport.receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
    if let Some(rtt) = known_rtt {
        transport.initial_rtt(initial_rtt(rtt));
    }
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Has `conn` send one small ack-eliciting packet now (a `MAX_DATA` frame: its receive window
/// raised by a byte, RFC 9000 §19.9). Its acknowledgment has every older packet still
/// unacknowledged declared lost at once and sent again (RFC 9002 §6.1: by packet or time
/// threshold), rather than at the application data's probe timeout, which the handshake's
/// probes may have backed off to several round trips.
pub fn nudge(conn: &Connection) {
    tracing::debug!("the hello unanswered after the handshake's confirmation: nudging");
    conn.set_receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW + 1));
}

/// Why no answer to the hello came.
#[derive(Debug)]
pub enum HelloLost {
    /// The control plane did not confirm the handshake within the wait (the connection is
    /// closed).
    Unconfirmed(Duration),
    /// The stream ended, or its frame did not decode.
    Frame(FrameError),
}

/// The answer to the hello on `recv`, read while the control plane has confirmed the
/// handshake of `conn` or [`handshake_confirm_within`] the path's round-trip time (`known_rtt`,
/// the last session's, else the handshake's estimate) has not yet passed since it was done on
/// this side. A connection it did not confirm by then is closed: the control plane has not
/// got the agent's last handshake flight, and a new dial comes through sooner than that
/// flight sent again at the probe timeout (see
/// [`HANDSHAKE_CONFIRM_WITHIN`](crate::session::HANDSHAKE_CONFIRM_WITHIN)).
///
/// The hello (`written` at that instant) goes out with that flight. A control plane that lost
/// the flight drops the hello too (it keeps no 1-RTT packet that came before the handshake's
/// end), and once it confirms the handshake sent again, the hello is unanswered: two round
/// trips ([`NUDGE_AFTER`] at least) after it was written, the connection is [`nudge`]d once,
/// so that the hello is sent again a round trip later instead of at its backed-off probe
/// timeout (on a 1 s path with the flight lost once: the session 10 s after the dial, not 15).
pub async fn hello_reply(
    conn: &Connection,
    recv: &mut quinn::RecvStream,
    known_rtt: Option<Duration>,
    written: tokio::time::Instant,
) -> Result<HelloReply, HelloLost> {
    let within = handshake_confirm_within(known_rtt.unwrap_or_else(|| conn.rtt()));
    let mut unconfirmed_until = Some(tokio::time::Instant::now() + within);
    let mut nudged = false;
    let read = read_frame::<_, HelloReply>(recv);
    tokio::pin!(read);
    loop {
        // Looked at a few times a round trip (quinn tells no event for the confirmation).
        let look = (conn.rtt() / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        tokio::select! {
            biased;
            r = &mut read => return r.map_err(HelloLost::Frame),
            () = tokio::time::sleep(look), if !nudged || unconfirmed_until.is_some() => {}
        }
        if conn.stats().frame_rx.handshake_done > 0 {
            unconfirmed_until = None;
            if !nudged && written.elapsed() >= conn.rtt().saturating_mul(2).max(NUDGE_AFTER) {
                nudge(conn);
                nudged = true;
            }
        } else if unconfirmed_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
            conn.close(quinn::VarInt::from_u32(0), b"handshake not confirmed");
            return Err(HelloLost::Unconfirmed(within));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redial_starts_from_the_last_round_trip_time_within_bounds() {
        let ms = Duration::from_millis;
        // A LAN's estimate is below quinn's default: the default stands.
        assert_eq!(initial_rtt(ms(1)), DEFAULT_INITIAL_RTT);
        // A satellite link's is taken as it is.
        assert_eq!(initial_rtt(ms(1_000)), ms(1_000));
        // A round trip stretched by an overloaded control plane does not hold the first
        // Initial's retransmission back for long.
        assert_eq!(initial_rtt(Duration::from_secs(30)), MAX_INITIAL_RTT);
    }

    #[test]
    fn the_client_settings_build_from_an_agents_tls() {
        // A TLS 1.3 client (as `flotilla_certs::tls` builds) takes QUIC's settings.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        assert!(client_config(tls.clone(), None).is_ok());
        assert!(client_config(tls, Some(Duration::from_secs(1))).is_ok());
    }
}
