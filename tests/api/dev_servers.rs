//! `warmer dev` on a machine without servers: it starts a private Redis and RabbitMQ, hands out
//! a VM through them, and leaves no server behind however it ends.

use std::process::Stdio;
use std::time::Duration;

use crate::Stderr;
use warmer_testkit::*;

/// `warmer dev` told to start its own servers (the machine's are running: `private` is how a
/// test gets the path a fresh machine takes), its web server on a free port.
fn dev(path: &str) -> tokio::process::Command {
    let mut command = crate::warmer("dev");
    command
        .env("PATH", path)
        .env("WARMER_DEV_SERVERS", "private")
        .env("WARMER_LOCAL_BOOT_DELAY", "100ms")
        .env("PORT", "0")
        .env("RUST_LOG", "info")
        .env("TMPDIR", std::env::temp_dir())
        .stderr(Stdio::piped());
    command
}

/// The private servers' URLs and directories, from the line that says what was started.
struct Started {
    redis: String,
    amqp: String,
    dirs: Vec<String>,
}

async fn started(stderr: &mut Stderr) -> Started {
    // A private RabbitMQ takes a few seconds to boot, more on a loaded machine.
    let line = stderr
        .until_within(
            Duration::from_secs(90),
            "the line naming the private servers",
            |line, _| line.contains("started a private Redis at"),
        )
        .await;
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |word: &str| {
        let i = words.iter().position(|w| *w == word).unwrap();
        words[i + 2].to_string()
    };
    let dirs = words
        .iter()
        .filter(|w| w.starts_with("(/") || w.starts_with("/"))
        .map(|w| {
            w.trim_matches(|c| c == '(' || c == ')' || c == ';')
                .to_string()
        })
        .collect();
    Started {
        redis: after("Redis"),
        amqp: after("RabbitMQ"),
        dirs,
    }
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let output = std::process::Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -eo"))
        .map(String::from)
        .collect()
}

/// Waits until no process is left of `started` and its directories are gone.
async fn nothing_left_of(started: &Started) {
    let redis_port = started
        .redis
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/0")
        .to_string();
    let left = || {
        let mut left = processes_naming(&format!("127.0.0.1:{redis_port}"));
        for dir in &started.dirs {
            left.extend(processes_naming(dir));
            if std::path::Path::new(dir).exists() {
                left.push(format!("the directory {dir}"));
            }
        }
        left
    };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !left().is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "left behind: {:?}",
            left()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `warmer request` for the example pool through `amqp` (it needs no Redis): its reply.
async fn request_a_vm(amqp: &str) -> serde_json::Value {
    let output = crate::warmer("request")
        .args([
            "--image",
            "warmer-example-image",
            "--machine-type",
            "n1-standard-1",
        ])
        .args(["--timeout", "20s"])
        .env("WARMER_AMQP_URL", amqp)
        .env("WARMER_AMQP_PREFIX", "warmer-dev")
        .env("WARMER_REDIS_NAMESPACE", "warmer-dev")
        .stdout(Stdio::piped())
        .output()
        .await
        .unwrap();
    let reply = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{reply} {stderr}");
    serde_json::from_str(&reply).unwrap()
}

#[tokio::test]
async fn warmer_dev_starts_private_servers_hands_out_a_vm_and_leaves_nothing_after_sigterm() {
    let path = std::env::var("PATH").unwrap();
    let mut child = dev(&path).spawn().unwrap();
    let mut stderr = Stderr::of(&mut child);
    let started = started(&mut stderr).await;
    assert_eq!(started.dirs.len(), 2, "{:?}", stderr.read);
    assert!(!started.redis.ends_with(":6379/0") && !started.amqp.contains(":5672/"));
    stderr
        .until("the example pool to fill", |line, _| {
            line.contains("VM ready")
        })
        .await;

    let reply = request_a_vm(&started.amqp).await;
    assert!(reply["ip"].is_string(), "{reply}");

    crate::lifecycle::signal(&child, "TERM");
    let status = within("warmer dev to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}: {:?}", stderr.rest().await);
    nothing_left_of(&started).await;
}

#[tokio::test]
async fn a_killed_warmer_dev_leaves_no_server_behind() {
    let path = std::env::var("PATH").unwrap();
    let mut child = dev(&path).spawn().unwrap();
    let mut stderr = Stderr::of(&mut child);
    let started = started(&mut stderr).await;

    crate::lifecycle::signal(&child, "KILL");
    let _ = child.wait().await;

    // The servers' guards see warmer's end of their pipe close, stop them and remove their files.
    nothing_left_of(&started).await;
}

#[tokio::test]
async fn without_the_servers_on_the_path_warmer_dev_exits_2_with_the_command_that_installs_them() {
    // A PATH with the shell and nothing else.
    let dir = std::env::temp_dir().join(format!("warmer-path-{}", fresh_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink("/bin/sh", dir.join("sh")).unwrap();
    let output = dev(dir.to_str().unwrap()).output().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no Redis for warmer dev: `redis-server` is not on the PATH")
            && stderr.contains(warmer::dev::servers::install_hint()),
        "{stderr}"
    );
}
