//! The node's session with the control plane, as the agent's other parts ask over it: the
//! secrets (`secrets.rs`) and the images the control plane holds (`cp_images.rs`). The
//! session loop (`agent.rs`) sets the connection when a session is admitted and clears it when
//! the session ends; a part that needs one may wait for the next.

use std::sync::Mutex;
use std::time::Duration;

use quinn::Connection;
use tokio::sync::watch;

/// The current session's connection, or none (offline).
#[derive(Debug)]
pub struct Session {
    conn: Mutex<Option<Connection>>,
    /// Bumped at each change, so waiters wake.
    changed: watch::Sender<u64>,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            conn: Mutex::new(None),
            changed: watch::channel(0).0,
        }
    }
}

impl Session {
    /// The session is up on `conn` (`Some`) or lost (`None`).
    pub fn set(&self, conn: Option<Connection>) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The connection of the session in progress, unless it is known to have ended (the
    /// session loop clears it a little after quinn knows).
    pub fn current(&self) -> Option<Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|c| c.close_reason().is_none())
    }

    /// [`Session::current`], waiting up to `timeout` for a session when there is none.
    pub async fn wait(&self, timeout: Duration) -> Option<Connection> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.current() {
                return Some(c);
            }
            // A connection that ended is cleared by the session loop: a change follows. The
            // poll bounds the wait should it not (quinn knows first).
            let poll = tokio::time::Instant::now() + Duration::from_millis(500);
            match tokio::time::timeout_at(deadline.min(poll), changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) if tokio::time::Instant::now() >= deadline => return self.current(),
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn with_no_session_a_wait_ends_at_its_timeout() {
        let s = Session::default();
        assert!(s.current().is_none());
        let started = tokio::time::Instant::now();
        assert!(s.wait(Duration::from_secs(3)).await.is_none());
        assert!(started.elapsed() >= Duration::from_secs(3));
        s.set(None);
        assert!(s.current().is_none());
    }
}
