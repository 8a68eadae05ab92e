//! `warmer simulate`, the real binary: a generated trace replayed for two policies, and a bad
//! trace line reported by number.

use std::process::Output;

use tokio::process::Command;

use warmer_testkit::within;

async fn simulate(args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_warmer"))
        .arg("simulate")
        .args(args)
        .env_clear()
        .kill_on_drop(true)
        .output();
    within("warmer simulate", run).await.unwrap()
}

#[tokio::test]
async fn a_generated_trace_replays_for_each_policy_as_json() {
    let dir = std::env::temp_dir().join(format!("warmer-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("day.csv");
    let generated = simulate(&["--generate", "diurnal", "--days", "1", "--pools", "3"]).await;
    assert!(generated.status.success());
    std::fs::write(&trace, &generated.stdout).unwrap();
    let lines = generated.stdout.iter().filter(|b| **b == b'\n').count() - 1;

    let compared = simulate(&[
        "--trace",
        trace.to_str().unwrap(),
        "--policy",
        "static:3",
        "--policy",
        "adaptive:hit=0.95",
        "--boot-time",
        "30s-60s",
        "--json",
    ])
    .await;

    assert!(
        compared.status.success(),
        "{}",
        String::from_utf8_lossy(&compared.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&compared.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["candidate"], "static:3");
    for report in reports {
        assert_eq!(report["total"]["checkouts"], lines);
        assert_eq!(report["pools"].as_object().unwrap().len(), 3);
        let hit = report["total"]["hit_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&hit));
    }

    std::fs::write(&trace, "timestamp,pool\n100,a:b\nlater,a:b\n").unwrap();
    let bad = simulate(&["--trace", trace.to_str().unwrap()]).await;
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("trace line 3") && stderr.contains("`later`"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
