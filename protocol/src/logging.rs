//! How Tern's binaries log: `tracing` to stderr, filtered by `TERN_LOG`
//! (an `EnvFilter` directive such as `debug` or `info,quinn=warn`), with
//! colours only on a terminal so scripts and log collectors get plain text.
//! Behind the `logging` feature, so the library users of this crate do not
//! pull in a subscriber.

/// The environment variable that sets the log filter.
pub const LOG_ENV: &str = "TERN_LOG";

/// Install the global subscriber; `default` is the filter when `TERN_LOG`
/// is unset or unparsable. Call once, first thing in `main`.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
