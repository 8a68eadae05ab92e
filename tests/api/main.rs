//! warmer's integration tests, against the real Redis and RabbitMQ on this machine.
//!
//! One binary (builds are slow); each module is one capability. Every test gets its own AMQP
//! prefix and Redis namespace from `warmer_testkit::TestApp` and removes them when it ends.

mod apply;
mod autoscale;
mod check;
mod checkout;
mod cluster;
mod dead;
mod dev_servers;
mod faults;
mod http_api;
mod lifecycle;
mod logs;
mod metrics;
mod operator;
mod page;
mod reconcile;
mod refill;
mod scripts;
mod secrets;
mod security;
mod simulate;
mod sizing;
mod topology;
mod watchdog;
mod web;

/// The `warmer` binary running `process`, with nothing of the test's environment, stdout
/// discarded, killed if the test drops it.
pub fn warmer(process: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmer"));
    command
        .arg(process)
        .env_clear()
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Sends `request` and returns its answer's status, content type and body.
pub async fn answer_of(request: reqwest::RequestBuilder) -> (u16, String, String) {
    let response = warmer_testkit::within("an HTTP answer", request.send())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// A child process's stderr, read line by line; keeps every line read.
pub struct Stderr {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    pub read: Vec<String>,
}

impl Stderr {
    /// Takes the stderr of `child` (spawned with `Stdio::piped()`).
    pub fn of(child: &mut tokio::process::Child) -> Self {
        use tokio::io::AsyncBufReadExt;
        let stderr = child.stderr.take().expect("stderr piped");
        Stderr {
            lines: tokio::io::BufReader::new(stderr).lines(),
            read: Vec::new(),
        }
    }

    /// Reads until a line for which `found(line, lines before it)` holds; returns that line.
    pub async fn until(&mut self, what: &str, found: impl Fn(&str, &[String]) -> bool) -> String {
        self.until_within(warmer_testkit::PATIENCE, what, found)
            .await
    }

    /// [`Self::until`], waiting at most `patience`.
    pub async fn until_within(
        &mut self,
        patience: std::time::Duration,
        what: &str,
        found: impl Fn(&str, &[String]) -> bool,
    ) -> String {
        let read = async {
            loop {
                let line = self.lines.next_line().await.unwrap().expect("a log line");
                let hit = found(&line, &self.read);
                self.read.push(line.clone());
                if hit {
                    return line;
                }
            }
        };
        tokio::time::timeout(patience, read)
            .await
            .unwrap_or_else(|_| panic!("waited {patience:?} for {what}; read: {:?}", self.read))
    }

    /// Reads to the end (the process exited); returns every line read.
    pub async fn rest(mut self) -> Vec<String> {
        while let Some(line) = self.lines.next_line().await.unwrap() {
            self.read.push(line);
        }
        self.read
    }
}
