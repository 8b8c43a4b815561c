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

/// Runs every command of `file` in order against a fresh daemon (grpcurl
/// and consentctl standing in for their spelled-out invocations), each in
/// `sh -e`, and compares what they print with the transcript in
/// `tests/it/docs/<file>.out`. `CONSENTD_BLESS=1` rewrites the transcript
/// (review its diff before committing).
async fn run_doc(file: &str) {
    let grpcurl = grpcurl();
    let h = TestDaemon::start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    let commands = commands(&text);
    assert!(commands.len() > 5, "{file} has its commands");
    let addr = h.addr().to_string();
    let mut transcript = String::new();
    for command in commands {
        // README streams left to Ctrl-C get a deadline here, and its end.
        let deadline = if command.contains("/Watch") && !command.contains("-max-time") {
            "-max-time 2 "
        } else {
            ""
        };
        let mut shell = command
            .replace("127.0.0.1:50051", &addr)
            .replace(
                "cargo run --release --bin consentctl --",
                env!("CARGO_BIN_EXE_consentctl"),
            )
            .replacen("grpcurl ", &format!("{} {deadline}", grpcurl.display()), 1);
        if !deadline.is_empty() {
            shell = format!("{} || [ $? -eq 68 ]", shell.trim_end());
        }
        let daemon = format!("http://{addr}");
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-ec")
                .arg(&shell)
                .env("CONSENTCTL_ADDR", daemon)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{file}: `{command}` failed ({}):\n{stderr}",
            output.status
        );
        transcript.push_str(&format!("$ {}", command.trim_start()));
        transcript.push_str(&normalize(&String::from_utf8_lossy(&output.stdout)));
        transcript.push('\n');
    }
    h.stop().await;
    let golden = root
        .join("tests/it/docs")
        .join(format!("{file}.out").replace('/', "_"));
    if std::env::var_os("CONSENTD_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &transcript).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (CONSENTD_BLESS=1 writes it)", golden.display()));
    if transcript != expected {
        let first = transcript
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| transcript.lines().count().min(expected.lines().count()));
        let context = |t: &str| {
            t.lines()
                .skip(first.saturating_sub(3))
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "{file}: the output differs from {} at line {}:\n--- expected\n{}\n--- got\n{}\n\
             (if the change is intended: CONSENTD_BLESS=1, then review the diff)",
            golden.display(),
            first + 1,
            context(&expected),
            context(&transcript)
        );
    }
}

/// What may differ between runs: times become `<time>`; a stream's idle
/// progress markers (their count depends on timing) are left out.
fn normalize(stdout: &str) -> String {
    let masked = mask_times(stdout);
    let trimmed = masked.trim_start();
    if !trimmed.starts_with('{') {
        return masked;
    }
    let mut out = String::new();
    for value in serde_json::Deserializer::from_str(trimmed).into_iter::<serde_json::Value>() {
        match value {
            Ok(v) if v.get("progress").is_some() => {}
            Ok(v) => {
                out.push_str(&serde_json::to_string_pretty(&v).unwrap());
                out.push('\n');
            }
            // Not a stream of JSON objects: compare the text.
            Err(_) => return masked,
        }
    }
    out
}

/// Replaces RFC 3339 UTC times (`2026-11-24T00:19:10.629Z`) with `<time>`.
fn mask_times(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let date = bytes.len() >= i + 20
            && bytes[i..i + 10].iter().enumerate().all(|(k, b)| {
                if k == 4 || k == 7 {
                    *b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            })
            && bytes[i + 10] == b'T';
        if date {
            if let Some(len) = bytes[i + 11..].iter().take(24).position(|b| *b == b'Z') {
                out.push_str("<time>");
                i += 11 + len + 1;
                continue;
            }
        }
        let ch = text[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[test]
fn times_are_masked_and_progress_markers_dropped() {
    assert_eq!(
        mask_times("at 2026-11-24T00:19:10.629Z and 2026-11-24T00:19:10Z."),
        "at <time> and <time>."
    );
    assert_eq!(
        normalize(
            "{\n  \"progress\": {\"revision\": \"3\"}\n}\n{\"event\": {\"revision\": \"3\"}}\n"
        ),
        "{\n  \"event\": {\n    \"revision\": \"3\"\n  }\n}\n"
    );
    assert_eq!(normalize("consent.v1.Admin\n"), "consent.v1.Admin\n");
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
