//! Pools as code: `warmer apply` (diff, dry run, all or nothing, prune), `warmer export` (round
//! trip) and `warmer history` (every change, who made it).

use std::path::PathBuf;
use std::time::Duration;

use warmer::PoolName;
use warmer::operator;
use warmer::policy::Policy;

use warmer_testkit::*;

/// A file of the test's own, removed when dropped.
struct PoolsToml(PathBuf);

impl PoolsToml {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("warmer-pools-{}.toml", fresh_prefix()));
        std::fs::write(&path, text).unwrap();
        PoolsToml(path)
    }
}

impl Drop for PoolsToml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const FILE: &str = r#"
[pools."static-a:n1-standard-2"]
target = 5

[pools."sized-b:n1-standard-2:public"]
min = 1
max = 8
adaptive = true
hit = 0.995
schedules = ["* 7-18 * * MON-FRI@Europe/Berlin=4"]

[pools."new-c:n1-standard-2"]
target = 2
"#;

async fn targets(app: &TestApp) -> std::collections::BTreeMap<String, u64> {
    let targets = app.ctx.store.targets().await.unwrap();
    targets
        .into_iter()
        .map(|(p, t)| (p.to_string(), t))
        .collect()
}

fn pool(name: &str) -> PoolName {
    name.parse().unwrap()
}

#[tokio::test]
async fn apply_shows_the_diff_changes_nothing_on_a_dry_run_then_applies_it_and_exports_it_back() {
    let app = TestApp::builder().start().await;
    app.seed("static-a:n1-standard-2", 3, &[vm("a1")]).await;
    app.seed("sized-b:n1-standard-2:public", 2, &[]).await;
    app.seed("other-d:n1-standard-2", 1, &[vm("d1")]).await;
    let file = PoolsToml::new(FILE);
    let before = operator::export(&app.ctx).await.unwrap();

    let (dry, changed) = operator::apply(&app.ctx, &file.0, true, false)
        .await
        .unwrap();

    assert!(!changed);
    let lines: Vec<&str> = dry.lines().collect();
    assert_eq!(
        lines[1..4],
        [
            "+ new-c:n1-standard-2: target 2",
            "~ sized-b:n1-standard-2:public: target 2 -> policy min 1 max 8 adaptive hit 0.995 schedule \"* 7-18 * * MON-FRI@Europe/Berlin=4\"",
            "~ static-a:n1-standard-2: target 3 -> target 5",
        ],
        "{dry}"
    );
    assert!(
        dry.contains("1 pool(s) in Redis but not in")
            && dry.ends_with("dry run: nothing changed\n"),
        "{dry}"
    );
    assert_eq!(operator::export(&app.ctx).await.unwrap(), before);
    assert_eq!(
        operator::history(&app.ctx, 10, None, false).await.unwrap(),
        "no changes recorded\n"
    );

    let (applied, changed) = operator::apply(&app.ctx, &file.0, false, false)
        .await
        .unwrap();

    assert!(
        changed && applied.contains("applied 3 change(s)"),
        "{applied}"
    );
    let targets = targets(&app).await;
    assert_eq!(targets["static-a:n1-standard-2"], 5);
    assert_eq!(targets["new-c:n1-standard-2"], 2);
    assert_eq!(
        targets["other-d:n1-standard-2"], 1,
        "left alone without --prune"
    );
    assert_eq!(app.pool_vms("other-d:n1-standard-2").await, ["d1"]);
    let (again, changed) = operator::apply(&app.ctx, &file.0, false, false)
        .await
        .unwrap();
    assert!(!changed && again.contains("no changes"), "{again}");

    // The export, applied to another deployment, gives the same pools and the same export.
    let exported = operator::export(&app.ctx).await.unwrap();
    let copy = TestApp::builder().start().await;
    let exported_file = PoolsToml::new(&exported);
    let (_, changed) = operator::apply(&copy.ctx, &exported_file.0, false, false)
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(operator::export(&copy.ctx).await.unwrap(), exported);
    let (same, changed) = operator::apply(&app.ctx, &exported_file.0, false, true)
        .await
        .unwrap();
    assert!(!changed && same.contains("no changes"), "{same}");

    // Every change is in the history, with who made it.
    let history = operator::history(&app.ctx, 10, None, true).await.unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
    assert_eq!(entries.len(), 3, "{history}");
    for entry in &entries {
        assert_eq!(entry["who"], warmer::actor());
        assert!(entry["command"].as_str().unwrap().starts_with("apply -f "));
    }
    let table = operator::history(&app.ctx, 10, Some("static-a:n1-standard-2"), false)
        .await
        .unwrap();
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains("target 3 -> target 5"), "{table}");
}

#[tokio::test]
async fn apply_changes_nothing_when_one_pool_of_the_file_takes_part_in_a_rollover() {
    let app = TestApp::builder().start().await;
    app.seed("static-a:n1-standard-2", 3, &[]).await;
    app.seed("rolling-e:n1-standard-2", 2, &[vm("e1")]).await;
    operator::pool_rollover(
        &app.ctx,
        &pool("rolling-e:n1-standard-2"),
        &pool("rolled-f:n1-standard-2"),
        Duration::from_secs(1800),
    )
    .await
    .unwrap();
    let history = operator::history(&app.ctx, 100, None, true).await.unwrap();
    let before = operator::export(&app.ctx).await.unwrap();
    let file = PoolsToml::new(
        "[pools.\"static-a:n1-standard-2\"]\ntarget = 9\n[pools.\"rolled-f:n1-standard-2\"]\ntarget = 1\n",
    );

    let error = operator::apply(&app.ctx, &file.0, false, false)
        .await
        .unwrap_err()
        .to_string();

    assert!(
        error.contains("nothing applied: rolled-f:n1-standard-2 takes part in the rollover rolling-e:n1-standard-2 -> rolled-f:n1-standard-2"),
        "{error}"
    );
    assert_eq!(
        operator::export(&app.ctx).await.unwrap(),
        before,
        "not even static-a changed"
    );
    assert_eq!(
        operator::history(&app.ctx, 100, None, true).await.unwrap(),
        history
    );
}

#[tokio::test]
async fn apply_with_prune_deletes_the_pools_the_file_leaves_out_without_leaking_their_vms() {
    let app = TestApp::builder().start().await;
    app.seed("static-a:n1-standard-2", 5, &[]).await;
    app.seed("other-d:n1-standard-2", 2, &[vm("d1"), vm("d2")])
        .await;
    let file = PoolsToml::new("[pools.\"static-a:n1-standard-2\"]\ntarget = 5\n");

    let (dry, _) = operator::apply(&app.ctx, &file.0, true, true)
        .await
        .unwrap();
    assert!(
        dry.contains(
            "- other-d:n1-standard-2: deleted (target 2); its warmed VMs are recorded for deletion"
        ),
        "{dry}"
    );
    assert_eq!(
        app.pool_vms("other-d:n1-standard-2").await.len(),
        2,
        "a dry run"
    );

    let (applied, changed) = operator::apply(&app.ctx, &file.0, false, true)
        .await
        .unwrap();

    assert!(changed, "{applied}");
    assert!(!targets(&app).await.contains_key("other-d:n1-standard-2"));
    assert!(app.pool_vms("other-d:n1-standard-2").await.is_empty());
    assert_eq!(app.orphaned().await, ["d1", "d2"]);
    let history = operator::history(&app.ctx, 10, None, false).await.unwrap();
    assert!(history.contains("--prune"), "{history}");
}

#[tokio::test]
async fn a_bad_file_is_refused_with_its_line_and_column_and_nothing_changes() {
    let app = TestApp::builder().start().await;
    app.seed("static-a:n1-standard-2", 3, &[]).await;
    let before = operator::export(&app.ctx).await.unwrap();
    let cases = [
        (
            "[pools.\"static-a:n1-standard-2\"]\ntarget = 4\n\n[pools.\"b:n1\"]\nmax = 2\nmin = 3\n",
            ":4:1: pool `b:n1`: min 3 is above max 2",
        ),
        (
            "[pools.\"static-a:n1-standard-2\"]\ntarget = \"four\"\n",
            ":2:10: ",
        ),
        (
            "[pools.\"static-a:n1-standard-2\"]\ntarget = 4\nsize = 1\n",
            "unknown field `size`",
        ),
        (
            "[pools.\"static-a:n1-standard-2\"]\ntarget = 100000\n",
            "above WARMER_MAX_VMS",
        ),
    ];
    for (text, expected) in cases {
        let file = PoolsToml::new(text);
        let error = operator::apply(&app.ctx, &file.0, false, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{text:?}: {error}");
        assert!(error.starts_with(&file.0.display().to_string()), "{error}");
    }
    assert_eq!(operator::export(&app.ctx).await.unwrap(), before);
}

#[tokio::test]
async fn every_command_that_changes_a_pool_records_who_changed_what() {
    let app = TestApp::builder().start().await;
    let a = pool("static-a:n1-standard-2");
    operator::pool_set(&app.ctx, &a, 2).await.unwrap();
    operator::pool_set(&app.ctx, &a, 4).await.unwrap();
    let policy = Policy {
        min: 1,
        max: 6,
        adaptive: true,
        hit: 0.99,
        schedules: Vec::new(),
    };
    operator::pool_policy(&app.ctx, &a, Some(&policy))
        .await
        .unwrap();
    operator::pool_policy(&app.ctx, &a, None).await.unwrap();
    operator::pool_delete(&app.ctx, &a).await.unwrap();

    let history = operator::history(&app.ctx, 10, None, true).await.unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
    let changes: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["command"].as_str().unwrap(),
                e["change"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "pool delete",
                "deleted; 0 warmed VM(s) recorded for deletion"
            ),
            ("pool policy", "policy removed"),
            ("pool policy", "policy min 1 max 6 adaptive hit 0.99"),
            ("pool set", "target 2 -> target 4"),
            ("pool set", "target 2"),
        ]
    );
    assert!(
        entries
            .iter()
            .all(|e| e["who"] == warmer::actor() && e["pool"] == a.to_string())
    );
    let newest = operator::history(&app.ctx, 1, None, false).await.unwrap();
    assert_eq!(
        newest.lines().count(),
        2,
        "a header and one entry: {newest}"
    );
}
