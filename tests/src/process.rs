//! The workspace's binaries as child processes, for every test that runs
//! them as a user or an operator would: a `tern-relay run` that prints its
//! URL, can be SIGKILLed and restarted on the same port and data, and dies
//! with the test ([`RelayProcess`]); `tern` commands run to the end within a
//! deadline ([`tern`], [`ok`], [`tern_cmd`]); and any other invocation of
//! either binary ([`relay_cmd`], [`run_bounded`]).
//!
//! Every child starts from the same environment: each variable in
//! [`TERN_ENV`] (everything the binaries read) and any other `TERN_*` is
//! removed, so a developer's shell settings never change what a test sees.
//!
//! The binaries are found by [`binary`]: first brought up to date (one
//! `cargo build` of both, once per test process, when cargo runs the test),
//! then the path cargo gives this test run (`CARGO_BIN_EXE_<name>`, set for
//! the package that defines the binary) or else the one next to this test's
//! executable, where cargo puts every binary of the workspace.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tern_protocol::url::RelayUrl;

/// The longest one process step may take: a relay printing its URL, a
/// `tern` command finishing, a relay exiting after SIGTERM.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// Every environment variable `tern-relay` and `tern` read. Each child has
/// them removed (and any other `TERN_*`, in case one is added without this
/// list); a unit test below fails when a binary reads one not listed here.
pub const TERN_ENV: &[&str] = &[
    // tern-relay run / url
    "TERN_RELAY_LISTEN",
    "TERN_RELAY_DATA",
    "TERN_RELAY_CONFIG",
    "TERN_RELAY_PUBLIC_HOST",
    "TERN_RELAY_FLEET",
    "TERN_RELAY_STORE",
    "TERN_RELAY_REDIS",
    // tern
    "TERN_HOME",
    "TERN_SEND_SPACING_MS",
    "TERN_PASSPHRASE",
    "TERN_NEW_PASSPHRASE",
    "TERN_INVITE_EXPIRES_DAYS",
    "TERN_RECOVERY_PHRASE",
    "TERN_LINK_CONFIRM",
    // both: the tracing filter
    "TERN_LOG",
];

/// A restart whose process exits before printing its URL (the killed
/// predecessor's database lock or socket still held) is tried again this
/// often at most.
const RESTART_ATTEMPTS: usize = 50;

/// Variables cargo sets for the package whose test runs (besides
/// `CARGO_PKG_*` and `CARGO_BIN_EXE_*`), kept from the nested build.
const PER_PACKAGE_ENV: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
];

/// Lines of a relay's stderr kept for failure reports.
const STDERR_TAIL: usize = 20;

/// A binary of the workspace that tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `tern-relay`, of the package `tern-relay`.
    Relay,
    /// `tern`, of the package `tern-cli`.
    Tern,
}

impl Binary {
    /// The executable's name (without `EXE_SUFFIX`).
    pub fn name(self) -> &'static str {
        match self {
            Binary::Relay => "tern-relay",
            Binary::Tern => "tern",
        }
    }

    /// The package that builds it.
    pub fn package(self) -> &'static str {
        match self {
            Binary::Relay => "tern-relay",
            Binary::Tern => "tern-cli",
        }
    }
}

/// The path of `bin`, built and up to date; panics saying how to build it
/// if it cannot be found.
pub fn binary(bin: Binary) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/TEST-HASH -> target/<profile>/
    let deps = exe.parent().expect("the test executable's directory");
    let profile_dir = if deps.file_name() == Some(OsStr::new("deps")) {
        deps.parent().expect("the profile directory")
    } else {
        deps
    };
    build_once(profile_dir);
    // Another relay build to run the same tests against (an older one, to
    // show what a change fixed).
    if bin == Binary::Relay {
        if let Some(path) = std::env::var_os("TERN_TESTS_RELAY_BIN") {
            return PathBuf::from(path);
        }
    }
    // Cargo sets this (at run time too) for the tests of the package that
    // defines the binary.
    if let Some(path) = std::env::var_os(format!("CARGO_BIN_EXE_{}", bin.name())) {
        let path = PathBuf::from(path);
        if path.exists() {
            return path;
        }
    }
    let path = profile_dir.join(format!("{}{}", bin.name(), std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p {} --bin {})",
        path.display(),
        bin.package(),
        bin.name()
    );
    path
}

/// Build both binaries into `profile_dir` once per test process, when run
/// by cargo (which says where it is in `CARGO`), so neither is stale. Cargo
/// releases its build lock before it runs tests, so this does not wait on
/// the outer build; when everything is fresh it takes about a second. The
/// command is the same from every test package: another package selection
/// would unify dependency features differently and compile a second copy
/// of everything.
fn build_once(profile_dir: &Path) {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let Some(cargo) = std::env::var_os("CARGO") else {
            return; // run outside cargo: use what is there
        };
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // What cargo set for this test package only. Left in, it reaches
        // build scripts that track it (ring's tracks CARGO_MANIFEST_DIR),
        // and every build from a shell would then rebuild everything.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_EXE_")
                || PER_PACKAGE_ENV.contains(&name.as_ref())
            {
                cmd.env_remove(name.as_ref());
            }
        }
        match profile_dir.file_name().and_then(OsStr::to_str) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        for bin in [Binary::Relay, Binary::Tern] {
            cmd.args(["-p", bin.package(), "--bin", bin.name()]);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Remove every variable the binaries read (and any other `TERN_*`) from
/// `cmd`'s environment.
pub fn clear_tern_env(cmd: &mut Command) -> &mut Command {
    for name in TERN_ENV {
        cmd.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TERN_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `tern-relay` with a clean environment and no stdin; add the arguments.
pub fn relay_cmd() -> Command {
    let mut cmd = Command::new(binary(Binary::Relay));
    clear_tern_env(&mut cmd).stdin(Stdio::null());
    cmd
}

/// `tern --home HOME ARGS...` with a clean environment, no stdin, and
/// stdout and stderr piped.
pub fn tern_cmd(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary(Binary::Tern));
    cmd.arg("--home").arg(home).args(args);
    clear_tern_env(&mut cmd)
        // No pauses between authentication and sends: these tests look at
        // delivery, not timing (tests/tests/unlinkable.rs does).
        .env("TERN_SEND_SPACING_MS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run `cmd` to the end with stdout and stderr captured; SIGKILL it and
/// panic if it takes longer than [`PROCESS_DEADLINE`].
pub fn run_bounded(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PROCESS_DEADLINE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // The child moved into the waiting thread; kill it by pid.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not finish within {PROCESS_DEADLINE:?}");
        }
    }
}

/// Run `tern --home HOME ARGS...` to the end within [`PROCESS_DEADLINE`].
pub fn tern(home: &Path, args: &[&str]) -> Output {
    run_bounded(&mut tern_cmd(home, args))
}

/// Run `tern`, insist it succeeded, return its stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = tern(home, args);
    assert!(
        out.status.success(),
        "tern {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The messages `tern recv --json` prints for `home`, as (from, text).
pub fn received(home: &Path) -> Vec<(String, String)> {
    ok(home, &["recv", "--json"])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "message")
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (field("from"), field("text"))
        })
        .collect()
}

/// The last lines a relay wrote to stderr (its logs).
type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// Ctrl-C to `child`, as a person stops it; it must exit cleanly.
pub fn interrupt(child: &mut Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A loopback UDP port nothing listens on now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The certificate fingerprint a relay URL pins (`?fp=`).
pub fn url_fingerprint(url: &str) -> String {
    url.split_once("?fp=").unwrap().1.to_string()
}

/// JSON lines a `tern ... --json` command printed, parsed.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// A new account `name` at `relay_url` in `dir/name`; its home.
pub fn init_account(dir: &Path, relay_url: &str, name: &str) -> PathBuf {
    let home = dir.join(name);
    ok(&home, &["init", "--relay", relay_url, "--name", name]);
    home
}

/// `tern recv --json`, parsed.
pub fn recv_json(home: &Path) -> Vec<serde_json::Value> {
    json_lines(&ok(home, &["recv", "--json"]))
}

/// `inviter` and `acceptor` become contacts (the acceptor names the
/// inviter `inviter_name`); the inviter has received the hello.
pub fn befriend_homes(inviter: &Path, inviter_name: &str, acceptor: &Path) {
    let code = ok(inviter, &["invite"]);
    ok(acceptor, &["accept", code.trim(), "--name", inviter_name]);
    let got = recv_json(inviter);
    assert!(
        got.iter().any(|e| e["type"] == "contact"),
        "no introduction: {got:?}"
    );
}

/// Alice at the relay `alice_relay` and Bob at `bob_relay` (homes `alice`
/// and `bob` under `dir`), Bob having accepted Alice's invite; Alice has
/// not received his hello yet.
pub fn alice_and_bob(dir: &Path, alice_relay: &str, bob_relay: &str) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("alice"), dir.join("bob"));
    ok(&a, &["init", "--relay", alice_relay, "--name", "alice"]);
    ok(&b, &["init", "--relay", bob_relay, "--name", "bob"]);
    let code = ok(&a, &["invite"]);
    ok(&b, &["accept", code.trim(), "--name", "alice"]);
    (a, b)
}

/// A `tern-relay run` child process on `127.0.0.1`, killed (SIGKILL) and
/// reaped when dropped so a failing test leaves nothing behind. It can be
/// killed and restarted on the same port and data directory, as clients
/// keep the URL (with its port) they registered with.
pub struct RelayProcess {
    child: Child,
    url: String,
    port: u16,
    data: PathBuf,
    /// Arguments after `run --listen ... --data ...` (`--store redis ...`),
    /// kept for restarts.
    extra: Vec<String>,
    stderr: StderrTail,
    /// The data directory when the relay owns it; dropped after the child
    /// is killed (fields drop after `Drop::drop`).
    _temp: Option<TempDir>,
}

/// Why one start gave no URL: the process exited, and its last stderr.
struct Exited(String);

impl RelayProcess {
    /// Start a relay with its data in a new temp directory (removed on drop)
    /// on a port the system picks; waits for its URL.
    pub fn start() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let mut relay = Self::start_in(temp.path());
        relay._temp = Some(temp);
        relay
    }

    /// Start a relay with its data in `data` (created if missing) on a port
    /// the system picks; waits for its URL and panics with its stderr if it
    /// exits first.
    pub fn start_in(data: &Path) -> Self {
        Self::start_with(data, &[])
    }

    /// Start a relay as [`Self::start_in`] does, with `extra` arguments to
    /// `run` (kept for restarts): `--store redis --redis URL` makes it one
    /// relay of a fleet on a Redis Cluster.
    pub fn start_with(data: &Path, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(data, 0, &extra).unwrap_or_else(|Exited(why)| {
            panic!(
                "tern-relay run --data {} {extra:?} failed: {why}",
                data.display()
            )
        })
    }

    /// Start a relay with its data in `data` on `port`: a relay that comes
    /// back on another address of its fleet. A start that exits before its
    /// URL (a killed predecessor's database lock not yet released) is
    /// retried, boundedly.
    pub fn start_on(data: &Path, port: u16) -> Self {
        let mut failures = Vec::new();
        for _ in 0..RESTART_ATTEMPTS {
            match Self::launch(data, port, &[]) {
                Ok(relay) => return relay,
                Err(Exited(why)) => {
                    failures.push(why);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        panic!("tern-relay did not start on port {port}: {failures:?}");
    }

    /// Start a relay of a fleet: its data (TLS identity) in `data`, its
    /// mailboxes in the Redis Cluster at `seeds`, writes acknowledged once
    /// `replicas` replicas hold them.
    pub fn start_on_redis(data: &Path, seeds: &str, replicas: u32) -> Self {
        Self::start_on_redis_at(data, 0, seeds, replicas)
    }

    /// [`Self::start_on_redis`] on `port` (0: one the system picks), for a
    /// fleet URL written before its relays start.
    pub fn start_on_redis_at(data: &Path, port: u16, seeds: &str, replicas: u32) -> Self {
        std::fs::create_dir_all(data).unwrap();
        let config = data.join("relay.toml");
        std::fs::write(
            &config,
            format!("store = \"redis\"\n[redis]\nreplicas = {replicas}\n"),
        )
        .unwrap();
        let config = config.to_str().unwrap().to_string();
        let extra: Vec<String> = ["--config", &config, "--store", "redis", "--redis", seeds]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Self::launch(data, port, &extra).unwrap_or_else(|Exited(why)| {
            panic!(
                "tern-relay run --data {} {extra:?} failed: {why}",
                data.display()
            )
        })
    }

    fn launch(data: &Path, port: u16, extra: &[String]) -> Result<Self, Exited> {
        let mut cmd = relay_cmd();
        cmd.args(["run", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .args(extra);
        Self::launch_cmd(cmd, data, port, extra)
    }

    /// Start a relay with `cmd` (a `tern-relay run ...` line, perhaps
    /// wrapped, e.g. in `ip netns exec`) and its data in `data`; waits for
    /// its URL. Not restartable with [`Self::restart`] (that starts a plain
    /// loopback relay).
    pub fn start_cmd(cmd: Command, data: &Path) -> Self {
        Self::launch_cmd(cmd, data, 0, &[])
            .unwrap_or_else(|Exited(why)| panic!("tern-relay failed: {why}"))
    }

    /// Run `cmd`; `extra` is what [`Self::restart`] passes again.
    fn launch_cmd(
        mut cmd: Command,
        data: &Path,
        port: u16,
        extra: &[String],
    ) -> Result<Self, Exited> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning tern-relay: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, urls) = mpsc::channel();
        // Reads to the end, so the relay never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("relay url: ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_done = keep_tail(child.stderr.take().unwrap(), Arc::clone(&stderr));
        let mut relay = Self {
            child,
            url: String::new(),
            port,
            data: data.to_path_buf(),
            extra: extra.to_vec(),
            stderr,
            _temp: None,
        };
        match urls.recv_timeout(PROCESS_DEADLINE) {
            Ok(url) => {
                relay.port = port_of(&url);
                relay.url = url;
                Ok(relay)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "tern-relay printed no URL within {PROCESS_DEADLINE:?}; stderr: {:?}",
                relay.stderr_tail()
            ),
            // Stdout closed without a URL: the process is exiting.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = relay.child.wait().unwrap();
                let _ = stderr_done.recv_timeout(Duration::from_secs(5));
                Err(Exited(format!(
                    "{status}: {}",
                    relay.stderr_tail().join(" | ")
                )))
            }
        }
    }

    /// The URL it printed (`tern://127.0.0.1:PORT?fp=HEX`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL, parsed.
    pub fn relay_url(&self) -> RelayUrl {
        self.url.parse().unwrap()
    }

    /// The UDP port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines it wrote to stderr.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr.lock().unwrap().iter().cloned().collect()
    }

    /// SIGKILL it and reap it, so its database lock and socket are gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill(); // an error only means it has exited
        let _ = self.child.wait();
    }

    /// Start it again on the same port and data, killing it first if it
    /// runs. Insists the URL is unchanged. A start that exits before its
    /// URL (a killed predecessor's lock or socket not yet released) is
    /// retried, boundedly; returns why those attempts failed.
    pub fn restart(&mut self) -> Vec<String> {
        self.kill();
        let mut failures = Vec::new();
        for _ in 0..RESTART_ATTEMPTS {
            match Self::launch(&self.data, self.port, &self.extra) {
                Ok(mut next) => {
                    assert_eq!(
                        next.url, self.url,
                        "the relay came back with another URL (same port and data)"
                    );
                    // Swap processes; the old (reaped) one drops with `next`.
                    std::mem::swap(&mut self.child, &mut next.child);
                    std::mem::swap(&mut self.stderr, &mut next.stderr);
                    return failures;
                }
                Err(Exited(why)) => {
                    failures.push(why);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        panic!("the relay did not restart in {RESTART_ATTEMPTS} attempts: {failures:?}");
    }

    /// SIGTERM it (a clean shutdown that flushes the store) and wait for it
    /// to exit; panics after [`PROCESS_DEADLINE`].
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid}: {status}");
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not exit within {PROCESS_DEADLINE:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Keep the last [`STDERR_TAIL`] lines of `stderr` in `tail`, reading to
/// the end; the returned channel says when it ended.
fn keep_tail(stderr: ChildStderr, tail: StderrTail) -> mpsc::Receiver<()> {
    let (done, ended) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut t = tail.lock().unwrap();
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
        let _ = done.send(());
    });
    ended
}

/// The port of a printed relay URL.
fn port_of(url: &str) -> u16 {
    let parsed: RelayUrl = url
        .parse()
        .unwrap_or_else(|e| panic!("the relay printed {url:?}: {e}"));
    parsed.first().port
}

#[cfg(test)]
mod tests {
    use super::TERN_ENV;
    use std::path::Path;

    /// Every `"TERN_..."` string literal in the binaries' sources.
    fn tern_literals(dir: &Path, found: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                tern_literals(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("\"TERN_") {
                    let name: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    found.push((name, path.display().to_string()));
                }
            }
        }
    }

    #[test]
    fn every_variable_the_binaries_read_is_cleared() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = Vec::new();
        // protocol/src: the binaries' shared log set-up reads TERN_LOG there.
        for crate_dir in ["relay/src", "cli-client/src", "protocol/src"] {
            tern_literals(&root.join(crate_dir), &mut found);
        }
        assert!(
            found.iter().any(|(n, _)| n == "TERN_LOG"),
            "the scan found nothing: {found:?}"
        );
        let missing: Vec<_> = found
            .iter()
            .filter(|(n, _)| !TERN_ENV.contains(&n.as_str()))
            .collect();
        assert!(missing.is_empty(), "add to TERN_ENV: {missing:?}");
    }
}
