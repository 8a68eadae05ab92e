//! The operators' page, and the report of `warmer simulate`, in a real browser (Debian's `chromium`, headless): what a person sees
//! equals what `/metrics` and the points say, nothing else is fetched, nothing is logged to the
//! console, and no one without a token sees anything. Screenshots are kept in
//! `target/test-artifacts/`.

use std::path::PathBuf;
use std::process::Stdio;

use warmer::PoolName;
use warmer::points::{Point, TEN_MINUTES};
use warmer_testkit::*;

const TOKEN: &str = "operator-token-of-the-page-test";

/// What chromium printed and logged for `url`.
struct Visit {
    dom: String,
    log: String,
}

/// Opens `url` in headless chromium: the DOM after load, and its log. Every host but loopback
/// resolves to nothing, so a request anywhere else would fail — and be logged.
async fn visit(url: &str, screenshot: Option<(&str, &str)>) -> Visit {
    let mut command = tokio::process::Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args(["--enable-logging=stderr", "--v=0"])
        .arg("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        .arg(format!(
            "--user-data-dir={}",
            std::env::temp_dir()
                .join(format!("warmer-chromium-{}", fresh_prefix()))
                .display()
        ));
    match screenshot {
        Some((file, size)) => {
            let dir = artifacts();
            command
                .arg(format!("--screenshot={}", dir.join(file).display()))
                .arg(format!("--window-size={size}"));
        }
        None => {
            command.arg("--dump-dom");
        }
    }
    let output = within(
        "chromium",
        command
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium runs (scripts/setup installs it)");
    Visit {
        dom: String::from_utf8_lossy(&output.stdout).into_owned(),
        log: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The console messages and refusals chromium logged.
fn console(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Refused to"))
        .collect()
}

/// The text of the first `<td class="{class}">` after `from` in `dom`.
fn cell<'a>(dom: &'a str, from: usize, class: &str) -> &'a str {
    let open = format!("<td class=\"{class}\">");
    let start = dom[from..].find(&open).unwrap() + from + open.len();
    let end = dom[start..].find("</td>").unwrap() + start;
    &dom[start..end]
}

/// A pool's points from the first 10-minute boundary in the last two hours up to `now`: 3 of
/// its target of 4 VMs ready throughout (180 idle VM-seconds a minute), a hit a minute and a
/// miss every 10 minutes.
fn workload(pool: &PoolName, now: u64) -> Vec<(PoolName, Point)> {
    let start = (now - 110).div_ceil(10) * 10;
    (0..=now - start)
        .map(|i| {
            let point = Point {
                minute: (start + i) as u32,
                target: 4,
                ready: 3,
                hits: i as u32,
                misses: (i / 10) as u32,
                idle_seconds: (i * 180) as u32,
                reason: Point::reason_index("static"),
                ..Point::default()
            };
            (pool.clone(), point)
        })
        .collect()
}

#[tokio::test]
async fn the_overview_and_a_pools_page_show_what_metrics_and_the_points_say_and_fetch_nothing() {
    let mut app = TestApp::builder()
        .env("WARMER_AUTH_TOKENS", TOKEN)
        .start()
        .await;
    let busy = "busy-image:n1-standard-2";
    app.seed(busy, 4, &[vm("b-1"), vm("b-2"), vm("b-3")]).await;
    app.seed("quiet-image:n1-standard-2", 1, &[]).await;
    // A name no pool may have, written into Redis by someone else.
    let _: () = redis::AsyncCommands::hset(
        &mut app.redis.clone(),
        app.names.pool_configs(),
        "<odd>-image:n1-standard-2",
        2,
    )
    .await
    .unwrap();
    let now = warmer::now_ms() / 60_000;
    let pool: PoolName = busy.parse().unwrap();
    app.ctx
        .store
        .record_points(&workload(&pool, now))
        .await
        .unwrap();
    // An event an operator must know, as the sizer keeps it when a rollover of the pool ends.
    let aborted = br#"{"from":"busy-image:n1-standard-2","to":"busier-image:n1-standard-2","reason":"no progress"}"#;
    app.ctx
        .store
        .log_event("rollover.aborted", aborted)
        .await
        .unwrap();
    let base = app.start_web().await;
    let authed = base.replacen("http://", &format!("http://operator:{TOKEN}@"), 1);

    let overview = visit(&format!("{authed}/"), None).await;

    assert!(
        console(&overview.log).is_empty(),
        "{:?}",
        console(&overview.log)
    );
    let dom = &overview.dom;
    assert!(dom.contains("<title>warmer: pools</title>"), "{dom}");
    assert!(dom.contains("id=\"count\">3 pool(s)"), "{dom}");
    // What /metrics says of each pool is what the page says.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |family: &str, pool: &str| -> String {
        let prefix = format!("{family}{{pool=\"{pool}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&prefix)).unwrap();
        line[prefix.len()..].trim_end_matches(".0").to_string()
    };
    for name in [busy, "quiet-image:n1-standard-2"] {
        let row = dom.find(&format!("<tr data-pool=\"{name}\">")).unwrap();
        assert_eq!(
            cell(dom, row, "target"),
            gauge("warmer_pool_target", name),
            "{name}"
        );
        assert_eq!(
            cell(dom, row, "ready"),
            gauge("warmer_pool_ready", name),
            "{name}"
        );
    }
    // And what the workload gives at the page's resolution (a point per 10 minutes, each
    // holding the last minute of its 10): from the first window's last minute to now.
    let row = dom.find(&format!("<tr data-pool=\"{busy}\">")).unwrap();
    let written = workload(&pool, now);
    let (first, last) = (written[9].1, written.last().unwrap().1);
    let minutes = f64::from(last.minute - first.minute);
    assert_eq!(
        cell(dom, row, "idle-week"),
        format!("{:.2}", minutes * 3.0 / 60.0)
    );
    let hits = f64::from(last.hits - first.hits);
    let misses = f64::from(last.misses - first.misses);
    assert_eq!(
        cell(dom, row, "hits"),
        format!("{:.1} %", hits / (hits + misses) * 100.0)
    );
    let midnight = now - now % 1440;
    let today = written
        .iter()
        .skip(9)
        .step_by(10)
        .find(|(_, p)| u64::from(p.minute) >= midnight)
        .map_or(0.0, |(_, p)| {
            f64::from(last.idle_seconds - p.idle_seconds) / 3600.0
        });
    assert_eq!(cell(dom, row, "idle-today"), format!("{today:.2}"));
    // A name from Redis is shown as text, never as markup.
    assert!(dom.contains("&lt;odd&gt;-image:n1-standard-2") && !dom.contains("<odd>"));
    assert!(dom.contains("no reconciler active"));
    // Nothing from anywhere else: no URL of another host in the page.
    assert!(
        !dom.contains("http://") && !dom.contains("https://"),
        "{dom}"
    );

    let page = visit(&format!("{authed}/pools/busy-image%3An1-standard-2"), None).await;
    assert!(console(&page.log).is_empty(), "{:?}", console(&page.log));
    assert!(
        page.dom
            .contains("id=\"pool\">busy-image:n1-standard-2</h2>"),
        "{}",
        page.dom
    );
    assert!(
        page.dom.matches("<svg class=\"chart\"").count() >= 4,
        "{}",
        page.dom
    );
    assert!(
        page.dom.contains("id=\"reasons\">static</p>"),
        "{}",
        page.dom
    );
    let points = app
        .ctx
        .store
        .points(&pool, TEN_MINUTES, now - 120)
        .await
        .unwrap();
    assert_eq!(
        points.len(),
        written.len().div_ceil(10),
        "ten-minute points"
    );

    // Screenshots of what a person sees, on a laptop and a phone.
    for (file, size) in [
        ("overview.png", "1280,900"),
        ("overview-phone.png", "390,844"),
    ] {
        let shot = visit(&format!("{authed}/"), Some((file, size))).await;
        assert!(console(&shot.log).is_empty(), "{:?}", console(&shot.log));
        let png = std::fs::read(artifacts().join(file)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{file}");
    }
    let shot = visit(
        &format!("{authed}/pools/busy-image%3An1-standard-2"),
        Some(("pool.png", "1280,1800")),
    )
    .await;
    assert!(console(&shot.log).is_empty(), "{:?}", console(&shot.log));
}

#[tokio::test]
async fn without_the_token_the_page_shows_nothing_and_on_a_dyno_nothing_without_tokens() {
    let mut app = TestApp::builder()
        .env("WARMER_AUTH_TOKENS", TOKEN)
        .start()
        .await;
    app.seed("secret-image:n1-standard-2", 2, &[]).await;
    let base = app.start_web().await;
    for url in [
        format!("{base}/"),
        base.replacen("http://", "http://operator:wrong@", 1)
            + "/pools/secret-image%3An1-standard-2",
    ] {
        let seen = visit(&url, None).await;
        assert!(!seen.dom.contains("secret-image"), "{url}: {}", seen.dom);
    }
    let answer = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(answer.status(), 401);
    assert!(
        answer.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let answer = reqwest::Client::new()
        .get(format!("{base}/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401, "basic auth only");
    let answer = reqwest::Client::new()
        .get(format!("{base}/"))
        .basic_auth("anyone", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let csp = answer.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );

    // On a dyno without WARMER_AUTH_TOKENS: refused, whatever is sent.
    let compute = warmer_testkit::compute::ComputeStandIn::start(std::time::Duration::ZERO).await;
    let mut dyno = TestApp::builder()
        .gce(&compute)
        .env("DYNO", "web.1")
        .start()
        .await;
    let base = dyno.start_web().await;
    let answer = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(answer.status(), 403);
}

#[tokio::test]
async fn a_simulate_report_shows_each_policy_on_the_trade_off_curve_and_the_same_table() {
    let dir = std::env::temp_dir().join(format!("warmer-report-{}", fresh_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let simulate = |args: Vec<String>| async move {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmer"))
            .arg("simulate")
            .args(args)
            .env_clear()
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(std::time::Duration::from_secs(120), run)
            .await
            .expect("simulate within 2 minutes")
            .unwrap()
    };
    let generated = simulate(
        ["--generate", "diurnal", "--days", "2", "--pools", "3"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let trace = dir.join("w.csv");
    std::fs::write(&trace, &generated.stdout).unwrap();
    let report = dir.join("r.html");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--trace", trace.to_str().unwrap()]
            .iter()
            .chain(&[
                "--policy", "static:2", "--policy", "static:6", "--policy", "adaptive",
            ])
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let printed = simulate(args(&["--report", report.to_str().unwrap()])).await;
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    let json = simulate(args(&["--json"])).await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();

    let seen = visit(&format!("file://{}", report.display()), None).await;
    let _ = visit(
        &format!("file://{}", report.display()),
        Some(("report.png", "1280,2400")),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);

    assert!(console(&seen.log).is_empty(), "{:?}", console(&seen.log));
    let dom = &seen.dom;
    assert_eq!(dom.matches("<section class=\"pool\"").count(), 3, "{dom}");
    // The table the command printed, as it printed it (escaped the same way).
    let table = printed.split("\nreport written to").next().unwrap();
    assert!(
        dom.contains(&table.replace('&', "&amp;").replace('<', "&lt;")),
        "{dom}"
    );
    // Each policy a point on each chart (the total and every pool), its figures simulate's own.
    for candidate in ["static:2", "static:6", "adaptive"] {
        assert_eq!(
            dom.matches(&format!("<title>{candidate}</title>")).count(),
            4,
            "{candidate}"
        );
    }
    for report in json.as_array().unwrap() {
        let hit = report["total"]["hit_rate"].as_f64().unwrap() * 100.0;
        assert!(table.contains(&format!("{hit:.2}%")), "{hit} in {table}");
    }
    assert!(!dom.contains("http://") && !dom.contains("https://"));
}
