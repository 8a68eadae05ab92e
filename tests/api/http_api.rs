//! travis-ci/warmer's HTTP API on `warmer web`: what an unchanged travis worker and
//! travis-ci/warmer's operators send and expect, and warmer's guarantees over it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warmer_testkit::*;

const TOKEN: &str = "the-http-api-token-of-the-test";
const IMAGE: &str = "travis-ci-garnet-trusty-1503417006";
const MACHINE_TYPE: &str = "n1-standard-2";

/// What the travis worker decodes (`backend/gce.go`, `warmerResponse`).
#[derive(Debug, Deserialize)]
struct WarmerResponse {
    name: String,
    zone: String,
    ip: String,
    #[serde(default)]
    public_ip: Option<String>,
    ssh_private_key: String,
}

/// The travis worker's `warmerRequestInstance`, step for step: its body built from the disk's
/// `sourceImage` and the instance's `machineType` as it holds them (full URLs), basic auth from
/// the user info of `WARMER_URL`, a client with its 5 s `WARMER_TIMEOUT`, and anything but 200
/// taken as "no warm VM".
struct Worker {
    url: reqwest::Url,
    client: reqwest::Client,
}

impl Worker {
    fn new(warmer_url: &str) -> Self {
        Worker {
            url: warmer_url.parse().unwrap(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    async fn request_instance(&self, public_ip: bool) -> Result<WarmerResponse, u16> {
        let body = json!({
            "site": "org",
            "zone": "us-central1-c",
            "image_name": format!("https://www.googleapis.com/compute/v1/projects/p/global/images/{IMAGE}"),
            "machine_type": format!("https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-c/machineTypes/{MACHINE_TYPE}"),
            "public_ip": public_ip,
        });
        let mut bare = self.url.clone();
        bare.set_username("").unwrap();
        bare.set_password(None).unwrap();
        let mut request = self
            .client
            .post(format!("{}request-instance", bare))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(password) = self.url.password() {
            request = request.basic_auth(self.url.username(), Some(password));
        }
        let response = request.send().await.map_err(|_| 0u16)?;
        if response.status() != 200 {
            return Err(response.status().as_u16());
        }
        response.json().await.map_err(|_| 1u16)
    }
}

/// A deployment with the HTTP API on (`WARMER_AUTH_TOKENS`), its web server's base URL, and the
/// URL a worker is given (`http://travis:<token>@…/`).
async fn api(builder: AppBuilder) -> (TestApp, String, String) {
    let mut app = builder.env("WARMER_AUTH_TOKENS", TOKEN).start().await;
    let base = app.start_web().await;
    let worker_url = base.replacen("http://", &format!("http://travis:{TOKEN}@"), 1) + "/";
    (app, base, worker_url)
}

/// One request with basic auth as `travis:<password>`: status, content type, body.
async fn call(
    method: reqwest::Method,
    url: &str,
    password: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(password) = password {
        request = request.basic_auth("travis", Some(password));
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    crate::answer_of(request).await
}

fn the_pool() -> String {
    format!("{IMAGE}:{MACHINE_TYPE}")
}

#[tokio::test]
async fn an_unchanged_travis_worker_gets_a_warm_vm_it_can_use_and_travis_ci_warmers_answers_otherwise()
 {
    let compute = ComputeStandIn::start(Duration::from_millis(300)).await;
    let builder = TestApp::builder().gce(&compute);
    let (mut app, base, worker_url) = api(builder).await;
    let pool = the_pool();
    app.seed(&pool, 1, &[]).await;
    app.start_refill().await;
    app.fill(&pool).await;
    app.wait_until_settled(&pool, 1).await;
    let warmed = app.pool_vms(&pool).await;

    let worker = Worker::new(&worker_url);
    let vm = worker.request_instance(false).await.expect("a warm VM");

    assert_eq!(vec![vm.name.clone()], warmed);
    let instance = compute.with(|s| s.instances[&vm.name].clone());
    let zone = instance["zone"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(vm.zone, zone, "short, as the worker sets it");
    assert_eq!(
        instance["networkInterfaces"][0]["networkIP"].as_str(),
        Some(vm.ip.as_str())
    );
    assert!(vm.public_ip.is_none(), "no external IP: {vm:?}");
    // `x509.DecryptPEMBlock` + `ParsePKCS1PrivateKey`: legacy PEM encryption of a PKCS#1 key.
    assert!(vm.ssh_private_key.starts_with(
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,"
    ));
    let key = openssl::rsa::Rsa::private_key_from_pem_passphrase(
        vm.ssh_private_key.as_bytes(),
        PASSPHRASE.as_bytes(),
    )
    .expect("the key decrypts with the passphrase");
    assert!(key.check_key().unwrap());

    // The same lease, counts and hint as a checkout over AMQP.
    eventually("the handout settled and counted", || async {
        app.leases()
            .await
            .values()
            .any(|(name, state)| *name == vm.name && state == "handed")
            && app.counters(Some(&pool)).await.get("checkouts|handed_out") == Some(&1)
    })
    .await;
    eventually("a replacement booted", || async {
        let now = app.pool_vms(&pool).await;
        now.len() == 1 && now[0] != vm.name
    })
    .await;

    // 404 and 409, as travis-ci/warmer answers them; the worker boots cold on either.
    assert_eq!(worker.request_instance(true).await.err(), Some(404));
    let eight = TRAVIS_REQUEST.replace(MACHINE_TYPE, "n1-standard-8");
    let url = format!("{base}/request-instance");
    let no_pool = call(reqwest::Method::POST, &url, Some(TOKEN), Some(&eight)).await;
    app.seed(&format!("{IMAGE}:n1-standard-8"), 0, &[]).await;
    let empty = call(reqwest::Method::POST, &url, Some(TOKEN), Some(&eight)).await;
    for ((status, content_type, body), expected) in [
        (no_pool, (404, r#"{"error":"no config found for pool"}"#)),
        (empty, (409, r#"{"error":"no instance available in pool"}"#)),
    ] {
        assert_eq!((status, body.as_str()), expected);
        assert_eq!(content_type, "application/json");
    }
}

#[tokio::test]
async fn without_a_token_nothing_is_served_and_bad_bodies_pop_nothing() {
    let (app, base, _) = api(TestApp::builder()).await;
    let pool = the_pool();
    app.seed(&pool, 2, &[vm("a"), vm("b")]).await;
    let url = format!("{base}/request-instance");

    for password in [None, Some("not the token"), Some("")] {
        let response = within("an answer", async {
            let mut request = reqwest::Client::new().post(&url).body(TRAVIS_REQUEST);
            if let Some(password) = password {
                request = request.basic_auth("travis", Some(password));
            }
            request.send().await.unwrap()
        })
        .await;
        assert_eq!(response.status(), 401, "{password:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"Protected Area\""
        );
        for route in ["/", "/pool-configs"] {
            let (status, ..) = call(
                reqwest::Method::GET,
                &format!("{base}{route}"),
                password,
                None,
            )
            .await;
            assert_eq!(status, 401, "{route} {password:?}");
        }
    }
    // Another scheme is a bad request, as Rack::Auth::Basic answers it.
    let response = within(
        "an answer",
        reqwest::Client::new()
            .post(&url)
            .bearer_auth(TOKEN)
            .body(TRAVIS_REQUEST)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    // Any user name: the password is what counts.
    let response = within(
        "an answer",
        reqwest::Client::new()
            .get(format!("{base}/"))
            .basic_auth("anyone", Some(TOKEN))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.text().await.unwrap().contains("<title>warmer"),
        "the operators' page"
    );

    let too_big = format!(r#"{{"site":"{}"}}"#, "x".repeat(20_000));
    for bad in [
        "{",
        "[]",
        r#"{"image_name":5,"machine_type":"n1-standard-2"}"#,
        r#"{"image_name":"travis-ci-garnet-trusty-1503417006"}"#,
        r#"{"image_name":"../../x","machine_type":"n1-standard-2"}"#,
        &TRAVIS_REQUEST.replace(r#""public_ip":false"#, r#""public_ip":"yes""#),
        &TRAVIS_REQUEST.replace(r#""site":"org""#, r#""site":"org","token":"x""#),
        too_big.as_str(),
    ] {
        let (status, content_type, body) =
            call(reqwest::Method::POST, &url, Some(TOKEN), Some(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(content_type, "application/json");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].as_str().unwrap().len() > 10, "{body}");
    }
    assert_eq!(app.pool_vms(&pool).await, ["a", "b"], "nothing popped");
    assert!(app.leases().await.is_empty());
    assert_eq!(
        app.counters(None).await.get("checkouts|bad_request"),
        Some(&8)
    );
}

#[tokio::test]
async fn pool_configs_read_and_change_a_redis_left_by_travis_ci_warmer() {
    let (app, base, _) = api(TestApp::builder()).await;
    let mut redis = app.redis.clone();
    // As travis-ci/warmer's `set_config` wrote them: HSET poolconfigs <pool> <size>.
    let configs = app.names.pool_configs();
    let _: () = redis
        .hset_multiple(
            &configs,
            &[
                (the_pool(), "2"),
                (format!("{IMAGE}:n1-standard-4:public"), "0"),
            ],
        )
        .await
        .unwrap();
    let _: () = redis
        .rpush(
            app.names.pool(&the_pool().parse().unwrap()),
            vm("a").to_string(),
        )
        .await
        .unwrap();
    let configs_url = format!("{base}/pool-configs");
    let get =
        |path: String| async move { call(reqwest::Method::GET, &path, Some(TOKEN), None).await };

    let (status, content_type, body) = get(configs_url.clone()).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({the_pool(): "2", format!("{IMAGE}:n1-standard-4:public"): "0"})
    );
    let (status, _, body) = get(format!("{configs_url}/{}", the_pool())).await;
    assert_eq!(
        (status, body),
        (200, format!(r#"{{"{}":"2"}}"#, the_pool()))
    );
    let (status, _, body) = get(format!("{configs_url}/{IMAGE}%3An1-standard-4%3Apublic")).await;
    assert_eq!(status, 200, "a percent-encoded name: {body}");
    let (status, _, body) = get(format!("{configs_url}/nope:n1-standard-1")).await;
    assert_eq!((status, body.as_str()), (404, ""));

    // Set: 200 with nothing in the body; the target is the same decimal string as before.
    let set = |pool: &str, target: &str| {
        let url = format!("{configs_url}/{pool}/{target}");
        async move { call(reqwest::Method::POST, &url, Some(TOKEN), None).await }
    };
    let (status, _, body) = set(&the_pool(), "3").await;
    assert_eq!((status, body.as_str()), (200, ""));
    let stored: String = redis.hget(&configs, the_pool()).await.unwrap();
    assert_eq!(stored, "3");
    let (status, _, body) = set("justoneword", "3").await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            r#"{"error":"Pool name must be of format image_name:machine_type(:public_ip)"}"#
        )
    );
    let (status, _, body) = set(&the_pool(), "three").await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"error":"Target pool size must be an integer"}"#)
    );
    for refused in ["-1", "4294967295"] {
        let (status, _, body) = set(&the_pool(), refused).await;
        assert_eq!(status, 400, "{refused}: {body}");
        assert!(body.contains("WARMER_MAX_VMS"), "{body}");
    }
    let (status, ..) = set("bad name!:n1-standard-1", "1").await;
    assert_eq!(status, 400);
    let stored: String = redis.hget(&configs, the_pool()).await.unwrap();
    assert_eq!(stored, "3", "refused changes change nothing");

    // Delete: 204, then 404; the pool's warmed VM is recorded for deletion.
    let delete = || {
        let url = format!("{configs_url}/{}", the_pool());
        async move { call(reqwest::Method::DELETE, &url, Some(TOKEN), None).await }
    };
    assert_eq!(delete().await.0, 204);
    assert_eq!(delete().await.0, 404);
    assert_eq!(app.orphaned().await, ["a"]);
    let exists: bool = redis.hexists(&configs, the_pool()).await.unwrap();
    assert!(!exists);
}

/// A bare connection that has sent the worker's request, whole.
async fn sent_request(base: &str) -> tokio::net::TcpStream {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let auth = openssl::base64::encode_block(format!("travis:{TOKEN}").as_bytes());
    let request = format!(
        "POST /request-instance HTTP/1.1\r\nHost: {address}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{TRAVIS_REQUEST}",
        TRAVIS_REQUEST.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Sends the worker's request over a bare connection and closes it without reading.
async fn hang_up(base: &str) {
    drop(sent_request(base).await);
}

/// Sends the worker's request over a bare connection, reads a few bytes of the answer and
/// closes the connection.
async fn read_a_little(base: &str) {
    let mut stream = sent_request(base).await;
    let mut some = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut some)).await;
}

#[tokio::test]
async fn http_and_amqp_requesters_together_share_one_pool_without_a_vm_handed_twice_or_lost() {
    let builder = TestApp::builder()
        .checkout_consumers(1)
        .env("WARMER_HTTP_CHECKOUTS_PER_MINUTE", "100000");
    let (app, base, worker_url) = api(builder).await;
    let pool = the_pool();
    for round in 0..5 {
        let vms: Vec<Value> = (0..40).map(|i| vm(&format!("r{round}-vm{i}"))).collect();
        let _: () = app
            .redis
            .clone()
            .del(app.names.pool(&pool.parse().unwrap()))
            .await
            .unwrap();
        app.seed(&pool, 40, &vms).await;

        let mut http = tokio::task::JoinSet::new();
        for _ in 0..14 {
            let worker = Worker::new(&worker_url);
            http.spawn(async move { worker.request_instance(false).await.ok().map(|vm| vm.name) });
        }
        let mut amqp = tokio::task::JoinSet::new();
        for _ in 0..14 {
            let mut requester = app.requester().await;
            amqp.spawn(async move {
                let reply = requester.send(TRAVIS_REQUEST.as_bytes()).await;
                reply["name"].as_str().map(String::from)
            });
        }
        let mut rude = tokio::task::JoinSet::new();
        for i in 0..8 {
            let base = base.clone();
            rude.spawn(async move {
                if i % 2 == 0 {
                    hang_up(&base).await
                } else {
                    read_a_little(&base).await
                }
            });
        }
        let mut received = Vec::new();
        for set in [&mut http, &mut amqp] {
            while let Some(name) = within("the requesters", set.join_next()).await {
                received.extend(name.unwrap());
            }
        }
        while within("the rude clients", rude.join_next()).await.is_some() {}

        // Every connection has ended: no lease is left pending.
        eventually("every checkout concluded", || async {
            app.leases()
                .await
                .values()
                .all(|(_, state)| state == "handed")
        })
        .await;
        let leases = app.leases().await;
        let handed: Vec<String> = leases
            .values()
            .filter(|(name, _)| name.starts_with(&format!("r{round}-")))
            .map(|(name, _)| name.clone())
            .collect();
        let in_pool = app.pool_vms(&pool).await;
        let orphaned: Vec<String> = app
            .orphaned()
            .await
            .into_iter()
            .filter(|name| name.starts_with(&format!("r{round}-")))
            .collect();

        let unique: HashSet<&String> = received.iter().collect();
        assert_eq!(
            unique.len(),
            received.len(),
            "a VM handed twice: {received:?}"
        );
        assert_eq!(
            received.len(),
            28,
            "every polite requester got a VM: {received:?}"
        );
        for name in &received {
            assert!(
                handed.contains(name),
                "{name} received but not recorded handed out"
            );
        }
        let mut every: Vec<&String> = handed.iter().chain(&in_pool).chain(&orphaned).collect();
        every.sort();
        let total = every.len();
        every.dedup();
        assert_eq!(every.len(), total, "a VM in two places: {every:?}");
        assert_eq!(
            total, 40,
            "every VM accounted for: handed {handed:?}, pool {in_pool:?}, orphaned {orphaned:?}"
        );
        let counted: BTreeMap<String, i64> = app.counters(Some(&pool)).await;
        let handed_out = counted.get("checkouts|handed_out").copied().unwrap_or(0);
        let all_handed = leases.len() as i64;
        assert_eq!(handed_out, all_handed, "{counted:?}");
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_while_redis_stalls_leaves_its_vm_at_the_head_of_the_pool() {
    let redis = PrivateRedis::start(&[]).await;
    let (app, base, _) = api(TestApp::builder().on_redis(&redis)).await;
    let pool = the_pool();
    app.seed(&pool, 2, &[vm("a"), vm("b")]).await;

    redis.stall();
    hang_up(&base).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.resume();

    eventually("the VM back at the head", || async {
        app.leases().await.is_empty() && app.pool_vms(&pool).await == ["a", "b"]
    })
    .await;
    eventually("counted as a gone requester", || async {
        app.counters(Some(&pool))
            .await
            .get("checkouts|requester_gone")
            == Some(&1)
    })
    .await;
    assert!(app.orphaned().await.is_empty());
}

#[tokio::test]
async fn redis_stalled_past_the_clients_time_is_answered_500_in_time_and_pops_nothing() {
    let redis = PrivateRedis::start(&[]).await;
    let builder = TestApp::builder()
        .on_redis(&redis)
        .env("WARMER_HTTP_TIMEOUT", "2s");
    let (app, _, worker_url) = api(builder).await;
    let pool = the_pool();
    app.seed(&pool, 2, &[vm("a"), vm("b")]).await;

    redis.stall();
    let started = std::time::Instant::now();
    let answer = Worker::new(&worker_url).request_instance(false).await;
    let took = started.elapsed();
    // Resumed past the client's time by more than the script's allowance for clock skew (1 s).
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    redis.resume();

    assert_eq!(answer.err(), Some(500));
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    // The pop reached the stalled server; run after the client's time, it takes nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.pool_vms(&pool).await, ["a", "b"]);
    assert!(app.leases().await.is_empty());
}

#[tokio::test]
async fn one_token_is_held_to_its_rate_and_what_it_is_refused_pops_nothing() {
    // 30 a minute: 3 at once, then one every 2 s.
    let builder = TestApp::builder().env("WARMER_HTTP_CHECKOUTS_PER_MINUTE", "30");
    let (app, base, worker_url) = api(builder).await;
    let pool = the_pool();
    let vms: Vec<Value> = (0..6).map(|i| vm(&format!("vm{i}"))).collect();
    app.seed(&pool, 6, &vms).await;
    let worker = Worker::new(&worker_url);
    for _ in 0..3 {
        assert!(worker.request_instance(false).await.is_ok());
    }
    let response = within(
        "an answer",
        reqwest::Client::new()
            .post(format!("{base}/request-instance"))
            .basic_auth("travis", Some(TOKEN))
            .body(TRAVIS_REQUEST)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        app.pool_vms(&pool).await.len(),
        3,
        "the refused one popped nothing"
    );
}

#[tokio::test]
async fn on_a_dyno_a_request_that_came_over_plain_http_is_refused() {
    let compute = ComputeStandIn::start(Duration::from_millis(300)).await;
    let builder = TestApp::builder().gce(&compute).env("DYNO", "web.1");
    let (_app, base, _) = api(builder).await;
    let over = |proto: &'static str, path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            within(
                "an answer",
                reqwest::Client::new()
                    .get(url)
                    .basic_auth("travis", Some(TOKEN))
                    .header("X-Forwarded-Proto", proto)
                    .send(),
            )
            .await
            .unwrap()
            .status()
        }
    };
    // The API and the operators' page alike.
    for path in ["/pool-configs", "/"] {
        assert_eq!(over("http", path).await, 403, "{path}");
        assert_eq!(over("https", path).await, 200, "{path}");
    }
}
