//! Sets `WARMER_COMMIT`, the commit `warmer_build_info` reports: `SOURCE_VERSION` (set by
//! Heroku's build), else `GIT_COMMIT` (set it in a Docker build), else what git says, else
//! `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_VERSION");
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let from_git = || {
        let head = std::fs::read_to_string(".git/HEAD").ok()?;
        println!("cargo:rerun-if-changed=.git/HEAD");
        // A new commit changes the branch's ref file (a packed ref has none to watch).
        let reference = head
            .trim()
            .strip_prefix("ref: ")
            .map(|r| format!(".git/{r}"));
        if let Some(reference) = reference.filter(|r| std::path::Path::new(r).exists()) {
            println!("cargo:rerun-if-changed={reference}");
        }
        let output = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let commit = ["SOURCE_VERSION", "GIT_COMMIT"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .map(|v| v.chars().take(12).collect())
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WARMER_COMMIT={commit}");
}
