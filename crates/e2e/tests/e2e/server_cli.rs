//! `agent-server`'s admin commands as a newcomer meets them: `agent add` refuses an empty name,
//! warns on a name in use, and takes the fleet's own identifiers (validated, unique); the help of
//! each admin subcommand lists only the options it uses, each with a description; the options
//! still work before the subcommand.

use std::process::{Command, Output};

use edge_agent_e2e::{server_bin, toml_value, Server};

fn agent_server(args: &[&str]) -> Output {
    Command::new(server_bin()).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn add(server: &Server, args: &[&str]) -> Output {
    let data = server.data();
    agent_server(&[&["agent", "add", "--data", data.to_str().unwrap()][..], args].concat())
}

async fn agents_named(server: &Server, name: &str) -> usize {
    let (_, found) = server.get(&format!("fhir/R4/Agent?name:exact={name}")).await;
    found["entry"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_add_refuses_an_empty_name_and_warns_on_a_name_in_use() {
    let server = Server::start(&[]).await;
    let (_, before) = server.get("fhir/R4/Agent").await;
    for empty in ["", "   ", "\t"] {
        let out = add(&server, &["--name", empty]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("an agent needs a name: pass --name NAME"), "{}", stderr(&out));
        assert!(out.stdout.is_empty(), "no configuration for a refused agent");
    }
    let (_, after) = server.get("fhir/R4/Agent").await;
    assert_eq!(after["total"], before["total"], "a refused name creates no agent");

    let first = add(&server, &["--name", "  clinic-7 "]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(!stderr(&first).contains("also named"), "{}", stderr(&first));
    let second = add(&server, &["--name", "clinic-7"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let first_id = toml_value(&String::from_utf8_lossy(&first.stdout), "agent_id");
    let warning = format!("agent-server: warning: agent {first_id} is also named \"clinic-7\"");
    assert!(stderr(&second).contains(&warning), "{}", stderr(&second));
    assert_eq!(agents_named(&server, "clinic-7").await, 2, "the name is trimmed, and both exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_add_takes_the_fleets_own_identifiers_validated_and_unique() {
    let server = Server::start(&[]).await;
    let out =
        add(&server, &["--name", "id-1", "--identifier", "urn:acme:site|7", "--identifier", "urn:acme:asset|A-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = toml_value(&String::from_utf8_lossy(&out.stdout), "agent_id");
    let (code, agent) = server.get(&format!("fhir/R4/Agent/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(
        agent["identifier"],
        serde_json::json!([{"system": "urn:acme:site", "value": "7"}, {"system": "urn:acme:asset", "value": "A-1"}])
    );
    let (_, found) = server.get("fhir/R4/Agent?identifier=urn:acme:asset|A-1").await;
    assert_eq!(found["entry"][0]["resource"]["id"].as_str(), Some(id.as_str()), "{found}");

    for (given, why) in [
        ("no-bar", "expected SYSTEM|VALUE"),
        ("|7", "both the system and the value are needed"),
        ("urn:acme:site|  ", "both the system and the value are needed"),
        ("urn:acme,site|7", "a system may not hold '|' or ',' (a search splits on them)"),
        ("urn:acme:site|7,8", "a value may not hold ',' (a search splits lists on it)"),
        ("urn:acme:site|7", &*format!("agent {id} has it already: identifiers are unique")),
    ] {
        let out = add(&server, &["--name", "id-2", "--identifier", given]);
        assert!(!out.status.success(), "{given}");
        let expected = format!("agent-server: --identifier {given:?}: {why}");
        assert!(stderr(&out).starts_with(&expected), "{given}: {}", stderr(&out));
    }
    let twice = add(&server, &["--name", "id-2", "--identifier", "urn:x|1", "--identifier", "urn:x|1"]);
    assert!(stderr(&twice).contains("given twice"), "{}", stderr(&twice));
    assert_eq!(agents_named(&server, "id-2").await, 0, "a refused identifier creates no agent");
}

/// The options a help text lists, each with its description: (option, description).
fn options(help: &str) -> Vec<(String, String)> {
    help.lines()
        .skip_while(|l| *l != "Options:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let l = l.trim_start();
            let long = l.split_whitespace().find(|w| w.starts_with("--")).unwrap_or_default();
            let option = long.trim_end_matches(',').to_string();
            // Two spaces or more separate the option column from its description.
            let description = l.split_once("  ").map_or("", |(_, d)| d.trim()).to_string();
            (option, description)
        })
        .collect()
}

fn help(args: &[&str]) -> Vec<(String, String)> {
    let out = agent_server(&[args, &["--help"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let options = options(&text);
    for (option, description) in &options {
        assert!(!description.is_empty(), "{option} has no description in:\n{text}");
    }
    options
}

#[test]
fn admin_subcommands_list_only_the_options_they_use_each_described() {
    let runtime = ["--listen", "--redis", "--presence-ttl", "--token-ttl", "--heartbeat-interval", "--metrics-listen"];
    let names = |options: Vec<(String, String)>| options.into_iter().map(|(o, _)| o).collect::<Vec<_>>();

    let agent_add = names(help(&["agent", "add"]));
    let want = ["--name", "--identifier", "--out", "--force", "--releases", "--release-key", "--base-url"];
    for option in want.iter().chain(&["--data", "--database", "--help"]) {
        assert!(agent_add.iter().any(|o| o == option), "agent add --help lacks {option}: {agent_add:?}");
    }
    let client_add = names(help(&["client", "add"]));
    assert_eq!(client_add, ["--admin", "--role", "--name", "--data", "--database", "--help"]);
    for option in runtime.iter().chain(&["--session-ttl"]) {
        assert!(!agent_add.iter().any(|o| o == option), "agent add --help lists {option}");
    }
    // Running the server: its options, all described.
    let serve = names(help(&[]));
    for option in runtime.iter().chain(&["--data", "--database", "--releases", "--base-url"]) {
        assert!(serve.iter().any(|o| o == option), "agent-server --help lacks {option}");
    }
    // A runtime option is refused after an admin subcommand, with clap's usual message.
    let out = agent_server(&["agent", "add", "--name", "x", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success() && stderr(&out).contains("unexpected argument '--listen'"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_options_work_before_the_subcommand_as_after_it() {
    let server = Server::start(&[]).await;
    let data = server.data();
    let data = data.to_str().unwrap();
    let base = "https://agents.example.org/";
    let out = agent_server(&["--data", data, "--base-url", base, "agent", "add", "--name", "before"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(toml_value(&String::from_utf8_lossy(&out.stdout), "base_url"), base);
    let out = agent_server(&["agent", "add", "--name", "after", "--data", data, "--base-url", base]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(toml_value(&String::from_utf8_lossy(&out.stdout), "base_url"), base);
    assert_eq!(agents_named(&server, "before").await + agents_named(&server, "after").await, 2);
    let out = agent_server(&["--data", data, "client", "add", "--admin", "--name", "ops"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("client_secret = "));
}
