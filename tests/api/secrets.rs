//! No secret reaches the logs, whatever `RUST_LOG` says: every process at `trace`, with
//! credentials in both URLs, a passphrase, tokens and a service account key.

use std::process::Stdio;

use redis::AsyncCommands;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::lifecycle::terminate;
use warmer_testkit::compute::{self, ComputeStandIn};
use warmer_testkit::*;

/// A RabbitMQ user (made with `rabbitmqctl`) and a Redis ACL user, removed on drop.
struct Users {
    amqp_user: String,
    redis_user: String,
}

impl Users {
    async fn create(id: &str, amqp_password: &str, redis_password: &str) -> Users {
        let amqp_user = format!("warmer-test-{id}");
        for args in [
            vec!["add_user", &amqp_user, amqp_password],
            vec!["set_permissions", "-p", "/", &amqp_user, ".*", ".*", ".*"],
        ] {
            let status = tokio::process::Command::from(rabbitmqctl())
                .args(&args)
                .stdout(Stdio::null())
                .status()
                .await
                .expect("rabbitmqctl, to add a RabbitMQ user with a password");
            assert!(status.success(), "rabbitmqctl {args:?}");
        }
        let redis_user = format!("warmer-test-{id}");
        let mut redis = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", &redis_user, "on", &format!(">{redis_password}")][..])
            .arg(&["~*", "&*", "+@all"][..])
            .query_async(&mut redis)
            .await
            .unwrap();
        Users {
            amqp_user,
            redis_user,
        }
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        let _ = rabbitmqctl()
            .args(["delete_user", &self.amqp_user])
            .stdout(Stdio::null())
            .status();
        if let Ok(mut redis) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) {
            let _: Result<(), _> = redis::cmd("ACL")
                .arg(&["DELUSER", &self.redis_user][..])
                .query(&mut redis);
        }
    }
}

/// `warmer <args>` at `RUST_LOG=trace`, its stderr collected.
struct Traced {
    child: Child,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
}

impl Traced {
    fn start(app: &TestApp, args: &[&str]) -> Traced {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warmer"))
            .args(args)
            .env_clear()
            .envs(&app.env)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("warmer binary");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut log = Vec::new();
            let _ = pipe.read_to_end(&mut log).await;
            log
        });
        Traced { child, stderr }
    }

    /// Waits for a command to exit and returns its log.
    async fn finish(mut self) -> String {
        within("a command", self.child.wait()).await.unwrap();
        String::from_utf8_lossy(&self.stderr.await.unwrap()).into_owned()
    }

    /// Stops a process with SIGTERM and returns its log.
    async fn stop(mut self) -> String {
        assert!(terminate(&mut self.child).await.success());
        String::from_utf8_lossy(&self.stderr.await.unwrap()).into_owned()
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let amqp_password = format!("amqp-pw@{id}");
    let redis_password = format!("redis-pw-{id}");
    let users = Users::create(id, &amqp_password, &redis_password).await;
    let gce = ComputeStandIn::start(std::time::Duration::ZERO).await;
    let keyfile = gce.keyfile_json();
    let amqp_url = format!(
        "amqp://{}:{}@{}/%2f",
        users.amqp_user,
        amqp_password.replace('@', "%40"),
        amqp_addr()
    );
    let redis_url = format!(
        "redis://{}:{redis_password}@{}/0",
        users.redis_user,
        redis_addr()
    );
    let passphrase = format!("passphrase-{id}");
    let auth_token = format!("auth-token-{id}");
    let hirefire_token = format!("hirefire-{id}");
    let heroku_token = format!("heroku-{id}");
    let compute_url = gce.compute_url();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    drop(listener);
    let app = TestApp::builder()
        .amqp_url(&amqp_url)
        .redis_url(&redis_url)
        .envs(&[
            ("WARMER_PROVIDER", "gce"),
            ("WARMER_GOOGLE_CLOUD_PROJECT", compute::PROJECT),
            ("WARMER_GOOGLE_CLOUD_REGION", compute::REGION),
            ("WARMER_GOOGLE_COMPUTE_URL", &compute_url),
            ("WARMER_GOOGLE_CLOUD_KEYFILE_JSON", &keyfile),
            ("WARMER_SSH_KEY_PASSPHRASE", &passphrase),
            ("WARMER_AUTH_TOKENS", &auth_token),
            ("HIREFIRE_TOKEN", &hirefire_token),
            ("HEROKU_API_TOKEN", &heroku_token),
            ("WARMER_RECONCILE_INTERVAL", "1s"),
            ("PORT", &port),
        ])
        .start()
        .await;
    app.seed(POOL, 1, &[]).await;

    let processes: Vec<Traced> = ["checkout", "refill", "reconcile", "web"]
        .iter()
        .map(|process| Traced::start(&app, &[process]))
        .collect();
    app.wait_for_consumers(1).await;
    app.wait_for_queue_consumers(&app.names.refill_queue(), 1)
        .await;
    let mut logs = vec![Traced::start(&app, &["fill", POOL]).finish().await];
    eventually("a VM booted on the stand-in", || async {
        !app.pool_vms(POOL).await.is_empty()
    })
    .await;
    let request = [
        "request",
        "--image",
        "travis-ci-garnet-trusty-1503417006",
        "--machine-type",
        "n1-standard-2",
    ];
    logs.push(Traced::start(&app, &request).finish().await);
    let hirefire = format!("http://127.0.0.1:{port}/hirefire/{hirefire_token}/info");
    let answer = within("HireFire", reqwest::get(&hirefire)).await.unwrap();
    assert!(answer.status().is_success());
    let handed: std::collections::HashMap<String, String> =
        app.redis.clone().hgetall(app.names.leases()).await.unwrap();
    assert_eq!(handed.len(), 1, "the request was served");
    for process in processes {
        logs.push(process.stop().await);
    }

    let key: serde_json::Value = serde_json::from_str(&keyfile).unwrap();
    let private_key = key["private_key"].as_str().unwrap();
    let secrets = [
        amqp_password.as_str(),
        &amqp_password.replace('@', "%40"),
        &redis_password,
        &passphrase,
        &auth_token,
        &hirefire_token,
        &heroku_token,
        compute::TOKEN,
        &private_key[40..80],
        "PRIVATE KEY",
    ];
    let log = logs.join("\n");
    assert!(log.contains("TRACE"), "the processes logged at trace level");
    for secret in secrets {
        let bytes: Vec<String> = secret.bytes().map(|b| b.to_string()).collect();
        for form in [secret.to_string(), bytes.join(", ")] {
            let at = log.find(&form);
            assert!(
                at.is_none(),
                "{secret:?} reached the logs as {form:?}: …{}…",
                at.and_then(|at| log.get(at.saturating_sub(200)..(at + 200).min(log.len())))
                    .unwrap_or_default()
            );
        }
    }
}
