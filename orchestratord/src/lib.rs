//! The control plane's core as a library: [`cluster`] executes every command that changes the
//! cluster — operators' requests, what agents say, timer ticks — one at a time, each in one
//! store transaction. The `orchestratord` binary wraps it in adapters (HTTPS for operators,
//! QUIC for agents, timers); benchmarks and tests drive it directly.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod udp;
