//! The documentation's commands, run verbatim against a fresh daemon: every
//! `sh` block of README.md and docs/grpcurl.md, top to bottom.

use std::path::Path;

use crate::fixture::{grpcurl, TestDaemon};

/// The shell commands of every ```sh block: a command ends at a line end
/// outside single quotes that has no trailing backslash.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in markdown.lines() {
        let text = line.trim_start();
        if !in_block {
            in_block = text == "```sh";
            continue;
        }
        if text == "```" {
            in_block = false;
            continue;
        }
        if current.is_empty() && (text.is_empty() || text.starts_with('#')) {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        let open_quote = current.matches('\'').count() % 2 == 1;
        if !open_quote && !line.ends_with('\\') {
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

async fn run_doc(file: &str) {
    let grpcurl = grpcurl();
    let h = TestDaemon::start().await;
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let commands = commands(&text);
    assert!(commands.len() > 5, "{file} has its commands");
    let addr = h.addr().to_string();
    for command in commands {
        // Streams the docs leave to Ctrl-C get a deadline here.
        let deadline = if command.contains("/Watch") && !command.contains("-max-time") {
            "-max-time 2 "
        } else {
            ""
        };
        let shell = command.replace("127.0.0.1:50051", &addr).replacen(
            "grpcurl ",
            &format!("{} {deadline}", grpcurl.display()),
            1,
        );
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&shell)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let ok = output.status.success()
            || (command.contains("/Watch") && stderr.contains("DeadlineExceeded"));
        assert!(ok, "{file}: `{command}` failed:\n{stderr}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl: scripts/test installs it and runs this"]
async fn the_grpcurl_cookbook_runs_verbatim() {
    run_doc("docs/grpcurl.md").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl: scripts/test installs it and runs this"]
async fn the_readme_grpcurl_session_runs_verbatim() {
    run_doc("README.md").await;
}

/// docs/compatibility.md's scope table, row by row, against the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compatibility_table_matches_the_daemon() {
    use consentd::pb;
    let h = TestDaemon::start().await;
    let c = h.client();
    let desc = |s: &str| (s.to_string(), pb::PermissionDesc { desc: "why".into() });
    let locations = ["scope.userLocation", "scope.userFuzzyLocation"];
    let mut mp = pb::App {
        app_id: "wxmp".into(),
        kind: pb::AppKind::MiniProgram.into(),
        permission: locations.iter().map(|s| desc(s)).collect(),
        required_background_modes: vec!["location".into()],
        ..Default::default()
    };
    mp.permission.insert(
        "scope.userLocationBackground".into(),
        pb::PermissionDesc { desc: "why".into() },
    );
    let mg = pb::App {
        app_id: "wxmg".into(),
        kind: pb::AppKind::MiniGame.into(),
        permission: locations.iter().map(|s| desc(s)).collect(),
        ..Default::default()
    };
    c.register(mp).await;
    c.register(mg).await;
    let scopes = c
        .auth()
        .list_scopes(pb::ListScopesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .scopes;

    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compatibility.md"),
    )
    .unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("| scope."))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), scopes.len(), "one row per catalog scope");
    for (row, info) in rows.iter().zip(&scopes) {
        assert_eq!(row[0], info.scope, "rows in catalog order");
        assert_eq!(
            row[1].split(", ").collect::<Vec<_>>(),
            info.interfaces,
            "{}",
            row[0]
        );
        for (app, column) in [("wxmp", row[2]), ("wxmg", row[3])] {
            let outcome = c.decision(app, "never-asked", row[0]).await.outcome();
            assert_eq!(
                outcome.as_str_name().strip_prefix("OUTCOME_"),
                Some(column),
                "{app} {}",
                row[0]
            );
        }
    }
    h.stop().await;
}
