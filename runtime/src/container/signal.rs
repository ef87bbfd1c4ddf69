//! Signals by name or number as Docker reads them (`docker kill -s`, an image's `StopSignal`;
//! moby's `signal.ParseSignal`): `SIGUSR1`, `USR1`, `usr1` and `10` are the same signal.

use rustix::process::Signal;

/// Text that names no signal the runtime can send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal '{0}' (a name such as TERM or SIGUSR1, or a number such as 15; real-time signals are not supported)")]
pub struct UnknownSignal(pub String);

/// Linux's signals by the name after `SIG`, and the aliases Docker accepts.
const NAMES: &[(&str, Signal)] = &[
    ("HUP", Signal::HUP),
    ("INT", Signal::INT),
    ("QUIT", Signal::QUIT),
    ("ILL", Signal::ILL),
    ("TRAP", Signal::TRAP),
    ("ABRT", Signal::ABORT),
    ("IOT", Signal::ABORT),
    ("BUS", Signal::BUS),
    ("FPE", Signal::FPE),
    ("KILL", Signal::KILL),
    ("USR1", Signal::USR1),
    ("SEGV", Signal::SEGV),
    ("USR2", Signal::USR2),
    ("PIPE", Signal::PIPE),
    ("ALRM", Signal::ALARM),
    ("TERM", Signal::TERM),
    ("STKFLT", Signal::STKFLT),
    ("CHLD", Signal::CHILD),
    ("CONT", Signal::CONT),
    ("STOP", Signal::STOP),
    ("TSTP", Signal::TSTP),
    ("TTIN", Signal::TTIN),
    ("TTOU", Signal::TTOU),
    ("URG", Signal::URG),
    ("XCPU", Signal::XCPU),
    ("XFSZ", Signal::XFSZ),
    ("VTALRM", Signal::VTALARM),
    ("PROF", Signal::PROF),
    ("WINCH", Signal::WINCH),
    ("IO", Signal::IO),
    ("POLL", Signal::IO),
    ("PWR", Signal::POWER),
    ("SYS", Signal::SYS),
];

/// The signal `text` names: a name with or without `SIG`, in any case, or a number.
pub fn parse_signal(text: &str) -> Result<Signal, UnknownSignal> {
    let unknown = || UnknownSignal(text.to_string());
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::from_named_raw(n).ok_or_else(unknown);
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(unknown)
}

/// `SIG<NAME>` of `signal`, for messages (its number when it has no name here).
pub fn signal_name(signal: Signal) -> String {
    NAMES
        .iter()
        .find(|(_, s)| *s == signal)
        .map_or_else(|| signal.as_raw().to_string(), |(n, _)| format!("SIG{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_read_as_docker_reads_them() {
        for text in ["SIGUSR1", "USR1", "usr1", "SigUsr1", "10", " 10 "] {
            assert_eq!(parse_signal(text), Ok(Signal::USR1), "{text}");
        }
        assert_eq!(
            parse_signal("SIGRTMIN"),
            Err(UnknownSignal("SIGRTMIN".into()))
        );
        for bad in [
            "",
            "0",
            "-1",
            "65",
            "34",
            "SIG",
            "TERMINATE",
            "SIGSIGTERM",
            "9x",
        ] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_signal("SIGQUIT"), Ok(Signal::QUIT));
        assert_eq!(parse_signal("15"), Ok(Signal::TERM));
        assert_eq!(signal_name(Signal::USR1), "SIGUSR1");
        assert_eq!(signal_name(Signal::TERM), "SIGTERM");
        // every name reads back as itself
        for (n, s) in NAMES {
            assert_eq!(parse_signal(&format!("SIG{n}")), Ok(*s));
        }
    }
}
