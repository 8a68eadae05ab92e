//! Servers around the app under test: a proxy that cuts it off, a Redis of a test's own, and
//! the HTTP transport of the stand-ins.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::within;

/// A TCP proxy in front of a server: [`Proxy::cut`] drops every connection and refuses new
/// ones (the server "goes away" for whoever uses the proxy), [`Proxy::restore`] brings it back.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    /// Connections refused while cut.
    refused: Arc<AtomicUsize>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &'static str) -> Proxy {
        Self::start_any(vec![upstream.to_string()]).await
    }

    /// A proxy that sends each new connection to the first of `upstreams` that accepts it, as a
    /// cloud broker's load balancer does in front of a cluster's nodes.
    pub async fn start_any(upstreams: Vec<String>) -> Proxy {
        let upstreams = Arc::new(upstreams);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicUsize::new(0));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (up, refused, connections) = (up.clone(), refused.clone(), connections.clone());
            let upstreams = upstreams.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue; // dropped: connection refused by reset
                    }
                    let upstreams = upstreams.clone();
                    let relay = tokio::spawn(async move {
                        for upstream in upstreams.iter() {
                            if let Ok(mut server) = TcpStream::connect(upstream.as_str()).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                                return;
                            }
                        }
                    });
                    connections.lock().unwrap().push(relay);
                }
            }
        });
        Proxy {
            port,
            up,
            refused,
            connections,
            accept,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for relay in self.connections.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// How many connections were refused while cut: each is an attempt to reach the server.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A Redis server of one test's own, on a free port, killed when dropped: for faults that
/// would disturb other tests on the shared server (a stall, a short idle `timeout`).
pub struct PrivateRedis {
    pub port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    /// Starts `redis-server` with `args` added to a memory-only configuration.
    pub async fn start(args: &[&str]) -> PrivateRedis {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        within("the private Redis to listen", async {
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        PrivateRedis { port, child }
    }

    /// A Redis that speaks only TLS, with the server certificate of `certificates`.
    pub async fn start_tls(certificates: &crate::tls::Certificates) -> PrivateRedis {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let (cert, key, ca) = (
            path(&certificates.cert),
            path(&certificates.key),
            path(&certificates.ca),
        );
        let port = crate::free_port().to_string();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ];
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        let port: u16 = port.parse().unwrap();
        within("the TLS Redis to listen", async {
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        PrivateRedis { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn stall(&self) {
        self.signal("STOP");
    }

    /// Lets a stalled server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves HTTP/1 on `listener` with `handler` until the returned task is aborted: the transport
/// of the stand-ins for external APIs.
pub fn serve_http<H, F>(listener: TcpListener, handler: H) -> tokio::task::JoinHandle<()>
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<http_body_util::Full<hyper::body::Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, std::convert::Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A RabbitMQ user of one test's, made with `rabbitmqctl` on the shared server with the given
/// permissions on `/`, deleted when dropped.
pub struct BrokerUser {
    pub name: String,
    pub password: String,
}

impl BrokerUser {
    /// A user with `permissions` (see [`warmer::permissions`]).
    pub async fn create(permissions: &warmer::Permissions) -> BrokerUser {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let user = BrokerUser {
            name: format!("warmer-test-{}", &id[..12]),
            password: format!("pw-{}", &id[12..]),
        };
        for args in [
            vec!["add_user", &user.name, &user.password],
            vec![
                "set_permissions",
                "-p",
                "/",
                &user.name,
                &permissions.configure,
                &permissions.write,
                &permissions.read,
            ],
        ] {
            let status = tokio::process::Command::from(crate::rabbitmqctl())
                .args(&args)
                .stdout(std::process::Stdio::null())
                .status()
                .await
                .expect("rabbitmqctl, to add a RabbitMQ user");
            assert!(status.success(), "rabbitmqctl {args:?}");
        }
        user
    }

    /// Its AMQP URL on the shared server.
    pub fn url(&self) -> String {
        format!(
            "amqp://{}:{}@{}/%2f",
            self.name,
            self.password,
            crate::amqp_addr()
        )
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = crate::rabbitmqctl()
            .args(["delete_user", &self.name])
            .stdout(std::process::Stdio::null())
            .status();
    }
}
