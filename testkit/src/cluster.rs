//! A RabbitMQ cluster of three nodes on loopback, for one test: node names, ports, data
//! directories and an Erlang cookie of its own, so it runs beside the machine's RabbitMQ and
//! beside other tests' clusters. Any node can be killed (`kill -9`) and started again; the
//! cluster is stopped and its files removed when it is dropped.
//!
//! Debian's `rabbitmq-server` and `rabbitmqctl` on the `PATH` re-run themselves as the system's
//! node: the real scripts beside them are used instead.

use std::path::PathBuf;
use std::time::Duration;

/// One node of a [`Cluster`].
struct Node {
    /// `n<i>-<id>@localhost`.
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
}

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    nodes: Vec<Node>,
}

/// A free port that RabbitMQ's own tools do not use (its CLI tools take 35672–35682, and a
/// node's default distribution port is its AMQP port + 20000).
fn node_port() -> u16 {
    loop {
        let port = crate::free_port();
        if !(35672..=35682).contains(&port) && port < 45535 {
            return port;
        }
    }
}

impl Cluster {
    /// Starts three nodes and joins the second and third to the first (about 15 s here).
    pub async fn start() -> Cluster {
        let server = which("rabbitmq-server");
        let bin = std::fs::canonicalize(&server)
            .expect("rabbitmq-server on the PATH")
            .parent()
            .expect("its directory")
            .to_path_buf();
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let dir = std::env::temp_dir().join(format!("warmer-cluster-{id}"));
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("WARMERTESTCOOKIE{id}").to_uppercase()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
        // Six distinct ports: a port just freed can be handed out again.
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let port = node_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let nodes = (1..=3)
            .map(|i| Node {
                name: format!("n{i}-{id}@localhost"),
                port: ports[2 * i - 2],
                dist_port: ports[2 * i - 1],
                dir: dir.join(format!("n{i}")),
            })
            .collect();
        let cluster = Cluster { dir, bin, nodes };
        for i in 0..3 {
            cluster.launch(i);
        }
        for i in 0..3 {
            cluster.await_node(i).await;
        }
        for i in 1..3 {
            let first = cluster.nodes[0].name.clone();
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", &first],
                vec!["start_app"],
            ] {
                cluster.ctl(i, &args).await.expect("joining the cluster");
            }
        }
        cluster
    }

    /// Starts node `i` (detached).
    fn launch(&self, i: usize) {
        let node = &self.nodes[i];
        std::fs::create_dir_all(&node.dir).unwrap();
        let config = node.dir.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!("listeners.tcp.local = 127.0.0.1:{}\n", node.port),
        )
        .unwrap();
        let plugins = node.dir.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n").unwrap();
        let status = std::process::Command::new(self.bin.join("rabbitmq-server"))
            .arg("-detached")
            .env("HOME", self.dir.join("home"))
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("rabbitmq-server starts");
        assert!(
            status.success(),
            "rabbitmq-server -detached for {}",
            node.name
        );
    }

    /// Waits until node `i` has booted (asking again while it registers); a node not up after
    /// 45 s is launched once more (a detached start that died, as a loaded machine sees now
    /// and then); one not up after 90 s fails the test with the end of its log.
    async fn await_node(&self, i: usize) {
        let started = std::time::Instant::now();
        let mut relaunched = false;
        while self.ctl(i, &["await_startup"]).await.is_err() {
            if !relaunched && started.elapsed() > Duration::from_secs(45) {
                eprintln!(
                    "node {} not up after 45 s: launched again",
                    self.nodes[i].name
                );
                self.launch(i);
                relaunched = true;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "node {} did not start; the end of its log:\n{}",
                self.nodes[i].name,
                self.log_tail(i)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The last 3,000 characters of node `i`'s log files.
    fn log_tail(&self, i: usize) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.nodes[i].dir.join("log")) {
            for entry in entries.flatten() {
                if let Ok(log) = std::fs::read_to_string(entry.path()) {
                    text.push_str(&format!("== {}\n{log}", entry.path().display()));
                }
            }
        }
        let start = text.len().saturating_sub(3_000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// `rabbitmqctl -n <node i> <args>`: its stdout, or its stderr as the error.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let output = tokio::process::Command::new(self.bin.join("rabbitmqctl"))
            .arg("-n")
            .arg(&self.nodes[i].name)
            .args(args)
            .env("HOME", self.dir.join("home"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .map_err(|_| "rabbitmqctl timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Node `i`'s AMQP URL (guest may log in from loopback).
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[i].port)
    }

    /// Every node's URL, comma-separated: a `WARMER_AMQP_URL` naming the whole cluster.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's `host:port`, for a [`crate::Proxy`] in front of the cluster.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// Which node a `rabbitmqctl` answer names (`…<n2-id@localhost.…>` or `n2-id@localhost`).
    pub fn node_named_in(&self, text: &str) -> Option<usize> {
        self.nodes.iter().position(|n| text.contains(&n.name))
    }

    /// The node that leads quorum queue `queue`.
    pub async fn leader(&self, queue: &str) -> Option<usize> {
        let listed = self
            .any_ctl(&["list_queues", "name", "leader", "--no-table-headers"])
            .await?;
        listed
            .lines()
            .find(|line| line.split_whitespace().next() == Some(queue))
            .and_then(|line| self.node_named_in(line))
    }

    /// The node whose channels consume `queue` (the first consumer's).
    pub async fn consumers_node(&self, queue: &str) -> Option<usize> {
        let listed = self
            .any_ctl(&[
                "list_consumers",
                "queue_name",
                "channel_pid",
                "--no-table-headers",
            ])
            .await?;
        listed
            .lines()
            .find(|line| line.split_whitespace().next() == Some(queue))
            .and_then(|line| self.node_named_in(line))
    }

    /// `rabbitmqctl` on whichever node answers.
    async fn any_ctl(&self, args: &[&str]) -> Option<String> {
        for i in 0..self.nodes.len() {
            if let Ok(out) = self.ctl(i, args).await {
                return Some(out);
            }
        }
        None
    }

    /// Kills node `i` at once (SIGKILL: no goodbye to the others or to clients).
    pub fn kill(&self, i: usize) {
        let pid = std::fs::read_to_string(self.nodes[i].dir.join("pid")).expect("a pid file");
        let status = std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {}", self.nodes[i].name);
    }

    /// Starts node `i` again, and waits until it runs in the cluster.
    pub async fn restart(&self, i: usize) {
        let started = std::time::Instant::now();
        self.launch(i);
        self.await_node(i).await;
        if started.elapsed() > Duration::from_secs(20) {
            let log = std::fs::read_to_string(
                self.nodes[i]
                    .dir
                    .join("log")
                    .join(format!("{}.log", self.nodes[i].name)),
            )
            .unwrap_or_default();
            let waits: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("Waiting") || l.contains("waiting") || l.contains("error"))
                .take(20)
                .collect();
            eprintln!("node {i} took {:?} to start: {waits:#?}", started.elapsed());
        }
    }

    /// Waits until every member of quorum queue `queue` is online again.
    pub async fn wait_for_members(&self, queue: &str) {
        let started = std::time::Instant::now();
        let mut status = String::new();
        while started.elapsed() < crate::PATIENCE * 3 {
            status = self
                .any_ctl(&["list_queues", "name", "online", "--no-table-headers"])
                .await
                .unwrap_or_default();
            let online = status
                .lines()
                .find(|line| line.split_whitespace().next() == Some(queue))
                .map(|line| self.nodes.iter().filter(|n| line.contains(&n.name)).count());
            if online == Some(self.nodes.len()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("not every member of {queue} came back online: {status}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Ok(pid) = std::fs::read_to_string(node.dir.join("pid")) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid.trim()])
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `name` found on the `PATH`.
fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{name} on the PATH"))
}
