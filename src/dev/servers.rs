//! The servers `warmer dev` and the test kit bring up when none answers: a private Redis and a
//! private RabbitMQ node, each on a free loopback port, with every file it writes in a
//! temporary directory of its own.
//!
//! A private server never outlives warmer, however warmer ends. Each runs under a small `sh`
//! guard in a process group of its own (a terminal's Ctrl-C reaches warmer, which stops it in
//! order); the guard holds a pipe from warmer and, when the pipe closes — which the kernel does
//! when warmer exits, is killed (`kill -9`) or crashes — sends the server SIGTERM, waits for it,
//! and removes its directory. Erlang's port mapper (`epmd`), which a RabbitMQ node starts when
//! none runs, is shared by every node of the machine and stays, as it does after any node.
//!
//! Debian's `rabbitmq-server` on the `PATH` is a wrapper that re-runs itself as the system's
//! node (as root): the real script beside it is run instead.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub use crate::config::DevServers as Mode;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    RabbitMq,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "Redis",
            Kind::RabbitMq => "RabbitMQ",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Kind::Redis => "redis-server",
            Kind::RabbitMq => "rabbitmq-server",
        }
    }

    /// How long it may take to answer after it starts.
    fn patience(self) -> Duration {
        match self {
            Kind::Redis => Duration::from_secs(15),
            Kind::RabbitMq => Duration::from_secs(120),
        }
    }
}

/// A server started here, stopped when [`Server::stop`] is called or this process ends.
pub struct Server {
    pub kind: Kind,
    /// Where clients reach it.
    pub url: String,
    /// Its directory (data, configuration, log), removed when it stops.
    pub dir: PathBuf,
    /// RabbitMQ: the node's name and the directory of its real scripts (for `rabbitmqctl`).
    node: Option<(String, PathBuf)>,
    guard: Child,
    /// Closing it stops the server (see the module's header).
    lifeline: Option<ChildStdin>,
}

/// The guard: runs the server in the background with its output in `server.log`, waits for
/// its stdin to close, then stops the server and removes the directory.
const GUARD: &str = r#"dir=$1; shift
"$@" >>"$dir/server.log" 2>&1 </dev/null &
child=$!
echo "$child" >"$dir/server.pid"
trap '' INT HUP
read -r _ || true
kill -TERM "$child" 2>/dev/null
wait "$child"
rm -rf "$dir"
"#;

impl Server {
    /// Starts a private `kind` and waits until it answers; the error names what failed and
    /// ends with the server's log.
    pub fn start(kind: Kind) -> anyhow::Result<Server> {
        let binary = find(kind.binary()).ok_or_else(|| missing(kind))?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let dir = std::env::temp_dir().join(format!("warmer-{}-{id}", kind.binary()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = free_port(kind)?;
        let mut command = Command::new("sh");
        command.arg("-c").arg(GUARD).arg("warmer-guard").arg(&dir);
        let (url, node) = match kind {
            Kind::Redis => {
                command
                    .arg(&binary)
                    .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                    .arg("--dir")
                    .arg(&dir);
                (format!("redis://127.0.0.1:{port}/0"), None)
            }
            Kind::RabbitMq => {
                let (script, node) = rabbitmq_command(&mut command, &binary, &dir, port, &id)?;
                // No credentials in the URL: AMQP's default (guest, which may log in from
                // loopback), and nothing that looks like a password in a log line.
                (format!("amqp://127.0.0.1:{port}/%2f"), Some((node, script)))
            }
        };
        use std::os::unix::process::CommandExt as _;
        let mut guard = command
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} under sh", binary.display()))?;
        let lifeline = guard.stdin.take();
        let mut server = Server {
            kind,
            url,
            dir,
            node,
            guard,
            lifeline,
        };
        if let Err(error) = server.await_answer(port) {
            let log = server.log_tail();
            server.stop();
            bail!("{error}; the end of its log:\n{log}");
        }
        Ok(server)
    }

    /// Polls until the server answers on `port` as its protocol does, it died, or its time
    /// ran out.
    fn await_answer(&mut self, port: u16) -> anyhow::Result<()> {
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while started.elapsed() < self.kind.patience() {
            if answers(self.kind, addr) {
                return Ok(());
            }
            if !self.running() {
                bail!("the private {} exited before it answered", self.kind.name());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "the private {} did not answer on port {port} within {}s",
            self.kind.name(),
            self.kind.patience().as_secs()
        )
    }

    /// Whether the server process (not its guard) is alive.
    fn running(&mut self) -> bool {
        if matches!(self.guard.try_wait(), Ok(Some(_))) {
            return false;
        }
        let pid = std::fs::read_to_string(self.dir.join("server.pid")).unwrap_or_default();
        match pid.trim().parse::<u32>() {
            Ok(pid) => Path::new(&format!("/proc/{pid}")).exists() || !cfg!(target_os = "linux"),
            Err(_) => true, // the guard has not written it yet
        }
    }

    /// The last 3,000 characters of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let start = log.len().saturating_sub(3_000);
        let start = (start..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log[start..].to_string()
    }

    /// `rabbitmqctl` for this node (RabbitMQ only): its real script with the node's name and
    /// cookie.
    pub fn rabbitmqctl(&self) -> Option<Command> {
        let (node, scripts) = self.node.as_ref()?;
        let mut command = Command::new(scripts.join("rabbitmqctl"));
        command
            .arg("-n")
            .arg(node)
            .env("HOME", self.dir.join("home"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
        Some(command)
    }

    /// Stops the server and waits (at most a minute) until it has exited and its directory is
    /// gone.
    pub fn stop(&mut self) {
        drop(self.lifeline.take());
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if !matches!(self.guard.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.guard.kill();
        let _ = self.guard.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.lifeline.is_some() {
            self.stop();
        }
    }
}

/// Sets `command` up to run a private RabbitMQ node; returns the directory of its real scripts
/// and the node's name.
fn rabbitmq_command(
    command: &mut Command,
    binary: &Path,
    dir: &Path,
    port: u16,
    id: &str,
) -> anyhow::Result<(PathBuf, String)> {
    let real = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    let scripts = real.parent().map(Path::to_path_buf).unwrap_or_default();
    let server = match real.file_name().and_then(|n| n.to_str()) {
        Some("rabbitmq-script-wrapper") => scripts.join("rabbitmq-server"),
        _ => real.clone(),
    };
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    let cookie = home.join(".erlang.cookie");
    std::fs::write(&cookie, format!("WARMERDEV{}", id.to_uppercase()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;
    let config = dir.join("rabbitmq.conf");
    std::fs::write(&config, format!("listeners.tcp.local = 127.0.0.1:{port}\n"))?;
    let plugins = dir.join("enabled_plugins");
    std::fs::write(&plugins, "[].\n")?;
    let node = format!("warmer-{id}@localhost");
    let dist_port = loop {
        let candidate = free_port(Kind::RabbitMq)?;
        if candidate != port {
            break candidate;
        }
    };
    command
        .arg(&server)
        .env("HOME", &home)
        .env("RABBITMQ_NODENAME", &node)
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_LOGS", "-")
        .env("RABBITMQ_PID_FILE", dir.join("pid"))
        .env("RABBITMQ_CONFIG_FILE", &config)
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    Ok((scripts, node))
}

/// Whether a `kind` server answers at `addr`: Redis says `+PONG` to `PING`; RabbitMQ answers
/// the AMQP 0-9-1 protocol header with a frame (its `connection.start`).
pub fn answers(kind: Kind, addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let (hello, expect): (&[u8], &[u8]) = match kind {
        Kind::Redis => (b"PING\r\n", b"+PONG"),
        Kind::RabbitMq => (b"AMQP\x00\x00\x09\x01", b"\x01\x00\x00"),
    };
    let mut answer = [0u8; 5];
    let Ok(()) = stream.write_all(hello) else {
        return false;
    };
    let mut read = 0;
    while read < expect.len() {
        match stream.read(&mut answer[read..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => read += n,
        }
    }
    answer.starts_with(expect)
}

/// The `host[:port]` of `url`, without its scheme, user info and path.
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    authority.rsplit('@').next().unwrap_or_default()
}

/// Whether something answers at `url`'s host and port as a `kind` server would.
pub fn url_answers(kind: Kind, url: &str) -> bool {
    let host_port = host_port(url);
    let default = match kind {
        Kind::Redis => 6379,
        Kind::RabbitMq => 5672,
    };
    let with_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:{default}")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| answers(kind, addr))
}

/// `binary` on the `PATH`, or in an `sbin` directory a user's `PATH` often lacks (Debian puts
/// `rabbitmq-server` in `/usr/sbin`).
fn find(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbins = ["/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(sbins)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// Why a server cannot be started here, with the command that installs it.
fn missing(kind: Kind) -> anyhow::Error {
    anyhow::anyhow!(
        "no {} for warmer dev: `{}` is not on the PATH to start a private one; install it with `{}` (or `scripts/setup`), or point {} at a running one",
        kind.name(),
        kind.binary(),
        install_hint(),
        match kind {
            Kind::Redis => "WARMER_REDIS_URL",
            Kind::RabbitMq => "WARMER_AMQP_URL",
        }
    )
}

/// The command that installs both servers on this platform.
pub fn install_hint() -> &'static str {
    if cfg!(target_os = "macos") {
        "brew install redis rabbitmq"
    } else if Path::new("/etc/debian_version").exists() {
        "sudo apt-get install -y redis-server rabbitmq-server"
    } else {
        "your package manager's redis and rabbitmq-server packages"
    }
}

/// A free loopback port; for RabbitMQ one its own tools do not take (35672–35682) and whose
/// default distribution port (+20000) exists.
fn free_port(kind: Kind) -> anyhow::Result<u16> {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        if kind == Kind::Redis || (!(35672..=35682).contains(&port) && port < 45535) {
            return Ok(port);
        }
    }
}

/// The servers `warmer dev` started, stopped by [`Servers::stop`] (or when warmer ends).
#[derive(Default)]
pub struct Servers {
    pub started: Vec<Server>,
}

impl Servers {
    /// Starts, as `mode` says, a private server for each of Redis and RabbitMQ that is not
    /// given explicitly (`given_*`: the variable that set its URL) — in `auto`, only one that
    /// does not answer at `*_url`. Returns the servers started; each one's URL replaces the
    /// default.
    pub fn bring_up(
        mode: Mode,
        redis: (&str, Option<&'static str>),
        amqp: (&str, Option<&'static str>),
    ) -> anyhow::Result<Servers> {
        let mut servers = Servers::default();
        for (kind, (url, given)) in [(Kind::Redis, redis), (Kind::RabbitMq, amqp)] {
            let start = match (mode, given) {
                (Mode::External, _) => false,
                (Mode::Private, Some(var)) => bail!(
                    "WARMER_DEV_SERVERS=private starts warmer's own {}, but {var} is set: unset one of them",
                    kind.name()
                ),
                (_, Some(_)) => false,
                (Mode::Private, None) => true,
                (Mode::Auto, None) => !url_answers(kind, url),
            };
            if start {
                servers.started.push(Server::start(kind)?);
            }
        }
        Ok(servers)
    }

    /// The URL of the private `kind`, if one was started.
    pub fn url(&self, kind: Kind) -> Option<&str> {
        self.started
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| s.url.as_str())
    }

    /// One line saying what was started, if anything was.
    pub fn summary(&self) -> Option<String> {
        if self.started.is_empty() {
            return None;
        }
        let each: Vec<String> = self
            .started
            .iter()
            .map(|s| format!("{} at {} (in {})", s.kind.name(), s.url, s.dir.display()))
            .collect();
        Some(format!(
            "started a private {}; stopped and removed when warmer dev exits",
            each.join(" and a private ")
        ))
    }

    /// Stops every server started, in reverse order.
    pub fn stop(mut self) {
        while let Some(mut server) = self.started.pop() {
            server.stop();
        }
    }
}
