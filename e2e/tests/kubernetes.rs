//! deploy/kubernetes/ as `kubectl apply -k` would take it: the base and the production overlay
//! render with kustomize, every resource passes the Kubernetes schemas of a current release
//! (kubernetes-validate, strict: an unknown field fails), and what the schemas cannot say holds
//! too: no pod gets Service-link variables, the stop fits the grace period, probes and
//! resources are set, KEDA scales the workers on the consumer the services use, and the NATS
//! chart's users may do what `nats/nats-server-auth.conf` lets them, no more.

use std::collections::BTreeSet;
use std::process::Command;

use finalprice_testkit::{repository, tool};

/// The Kubernetes release whose schemas the manifests are checked against.
const KUBERNETES: &str = "1.37.0";

fn render(dir: &str) -> String {
    let output = Command::new(tool("kubectl").expect("kubectl (scripts/tools kubectl)"))
        .args(["kustomize", dir])
        .current_dir(repository())
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The rendered documents, each with its kind and name.
fn documents(rendered: &str) -> Vec<(String, String, String)> {
    rendered
        .split("\n---\n")
        .map(|doc| {
            let field = |key: &str| {
                doc.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            (field("kind: "), field("  name: "), doc.to_owned())
        })
        .collect()
}

fn validate(dir: &str, rendered: &str) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), rendered).expect("rendered manifests");
    let output = Command::new(
        tool("kubernetes-validate")
            .expect("kubernetes-validate (scripts/tools kubernetes-validate)"),
    )
    .args(["--strict", "--kubernetes-version", KUBERNETES])
    .arg(file.path())
    .output()
    .expect("kubernetes-validate runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{dir}:\n{said}");
    // Every resource of a built-in kind was checked; only KEDA's has no schema there.
    for (kind, name, _) in documents(rendered) {
        let checked = said
            .lines()
            .any(|line| line.contains("passed") && line.contains(&format!("/{name} ")));
        assert!(
            checked || kind == "ScaledObject",
            "{dir}: {kind} {name} was not validated:\n{said}"
        );
    }
}

#[test]
fn the_base_and_the_production_overlay_render_and_pass_the_kubernetes_schemas() {
    for dir in [
        "deploy/kubernetes/base",
        "deploy/kubernetes/overlays/production",
    ] {
        let rendered = render(dir);
        assert!(documents(&rendered).len() >= 8, "{dir}:\n{rendered}");
        validate(dir, &rendered);
    }
}

/// The number after `key` in `doc`.
fn number(doc: &str, key: &str) -> u64 {
    doc.lines()
        .find_map(|line| line.trim().strip_prefix(key))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in:\n{doc}"))
}

#[test]
fn every_pod_is_locked_down_and_stops_within_its_grace_period() {
    let rendered = render("deploy/kubernetes/overlays/production");
    let documents = documents(&rendered);
    let pods: Vec<_> = documents
        .iter()
        .filter(|(kind, _, _)| kind == "Deployment" || kind == "Job")
        .collect();
    assert_eq!(pods.len(), 3, "front, worker, migration");
    for (kind, name, doc) in &pods {
        // A Service named finalprice-… would otherwise put FINALPRICE_… variables in the pod.
        assert!(doc.contains("enableServiceLinks: false"), "{kind} {name}");
        for needed in [
            "runAsNonRoot: true",
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            "requests:",
            "limits:",
            "_FILE",
        ] {
            assert!(doc.contains(needed), "{kind} {name} lacks {needed}");
        }
        assert!(
            !doc.contains("PASSWORD\n") && !doc.contains("password: "),
            "{kind} {name}: secrets come from Secrets as files"
        );
    }
    let pod = |name: &str| {
        &pods
            .iter()
            .find(|(_, pod, _)| pod == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .2
    };
    // The defaults in shared/config.default.toml: the front's http.shutdown_grace (20 s) after
    // its preStop pause, the worker's 25 s of batches plus ~5 s of pull and ~7 s of hand-over.
    let defaults = include_str!("../../shared/config.default.toml");
    assert!(defaults.contains("shutdown_grace = \"20s\""));
    assert!(defaults.contains("shutdown_grace = \"25s\""));
    let front = pod("finalprice-front");
    let pre_stop = number(front, "seconds:");
    assert!(number(front, "terminationGracePeriodSeconds:") >= pre_stop + 20 + 2);
    for probe in [
        "readinessProbe:",
        "livenessProbe:",
        "path: /readyz",
        "path: /healthz",
    ] {
        assert!(front.contains(probe), "front lacks {probe}");
    }
    assert!(front.contains("FINALPRICE_HTTP__ADMIN_ADDR"));
    let worker = pod("finalprice-worker");
    assert!(number(worker, "terminationGracePeriodSeconds:") >= 25 + 5 + 7);
    assert!(pod("finalprice-migrate").contains("- migrate"));
}

#[test]
fn keda_scales_the_workers_on_the_consumer_the_services_define() {
    let rendered = render("deploy/kubernetes/overlays/production");
    let scaled = documents(&rendered)
        .into_iter()
        .find(|(kind, _, _)| kind == "ScaledObject")
        .expect("a ScaledObject")
        .2;
    let consumer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("nats/consumer-workers.json"))
            .expect("consumer definition"),
    )
    .expect("JSON");
    let stream: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("nats/stream-orders.json"))
            .expect("stream definition"),
    )
    .expect("JSON");
    let durable = consumer["durable_name"]
        .as_str()
        .or(consumer["name"].as_str())
        .expect("the consumer's name");
    let stream = stream["name"].as_str().expect("the stream's name");
    assert!(scaled.contains("type: nats-jetstream"), "{scaled}");
    assert!(scaled.contains(&format!("consumer: {durable}")), "{scaled}");
    assert!(scaled.contains(&format!("stream: {stream}")), "{scaled}");
    assert!(scaled.contains("name: finalprice-worker"), "{scaled}");
    assert!(number(&scaled, "minReplicaCount:") >= 1);
}

/// What one user may do: the subjects it may publish to, those it may subscribe to, and
/// whether it may answer requests made of it.
#[derive(Debug, PartialEq, Eq)]
struct Permissions {
    publish: BTreeSet<String>,
    subscribe: BTreeSet<String>,
    allow_responses: bool,
}

/// Every double-quoted string in `text`.
fn quoted(text: &str) -> BTreeSet<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The text of the `{ … }` block that starts at the first `{` after `from` in `text`.
fn block<'t>(text: &'t str, from: &str) -> &'t str {
    let start = text.find(from).unwrap_or_else(|| panic!("no {from}"));
    let open = start + text[start..].find('{').expect("a block");
    let mut depth = 0;
    for (at, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open..=open + at];
                }
            }
            _ => {}
        }
    }
    panic!("{from}: unclosed block")
}

/// `role`'s permissions as nats/nats-server-auth.conf gives them (`FRONT = { publish = {…}
/// subscribe = {…} allow_responses = true }`).
fn permissions_in_conf(conf: &str, role: &str) -> Permissions {
    let role = block(conf, &format!("{role} = {{"));
    Permissions {
        publish: quoted(block(role, "publish =")),
        subscribe: quoted(block(role, "subscribe =")),
        allow_responses: role.contains("allow_responses = true"),
    }
}

/// `user`'s permissions as the NATS chart's values give them (`- user: front … publish: …
/// subscribe: … allow_responses: true`, up to the next user).
fn permissions_in_values(values: &str, user: &str) -> Permissions {
    let start = values
        .find(&format!("- user: {user}\n"))
        .unwrap_or_else(|| panic!("no user {user} in the chart's values"));
    let rest = &values[start + 1..];
    let entry = &rest[..rest
        .find("- user: ")
        .or_else(|| rest.find("\ncontainer:"))
        .unwrap_or(rest.len())];
    let publish = entry.find("publish:").expect("publish");
    let subscribe = entry.find("subscribe:").expect("subscribe");
    let end = entry.find("allow_responses").unwrap_or(entry.len());
    Permissions {
        publish: quoted(&entry[publish..subscribe]),
        subscribe: quoted(&entry[subscribe..end]),
        allow_responses: entry.contains("allow_responses: true"),
    }
}

#[test]
fn the_nats_chart_gives_each_user_what_nats_server_auth_conf_gives_it() {
    let conf = std::fs::read_to_string(repository().join("nats/nats-server-auth.conf"))
        .expect("nats-server-auth.conf");
    let values = std::fs::read_to_string(repository().join("deploy/kubernetes/nats-values.yaml"))
        .expect("nats-values.yaml");
    for (role, user) in [
        ("FRONT", "front"),
        ("WORKER", "worker"),
        ("OPERATOR", "operator"),
    ] {
        let shipped = permissions_in_conf(&conf, role);
        assert!(shipped.publish.len() >= 3, "{role}: {shipped:?}");
        assert_eq!(
            permissions_in_values(&values, user),
            shipped,
            "{user}: deploy/kubernetes/nats-values.yaml and nats/nats-server-auth.conf differ"
        );
        assert!(
            values.contains(&format!("password: << $NATS_{role}_PASSWORD >>"))
                && values.contains(&format!("key: {user}-password")),
            "{user}'s password comes from the Secret finalprice-nats"
        );
    }
    // The Deployments log in as the users the chart defines, from the same Secret.
    let rendered = render("deploy/kubernetes/overlays/production");
    for (name, user) in [
        ("finalprice-front", "front"),
        ("finalprice-worker", "worker"),
    ] {
        let pod = documents(&rendered)
            .into_iter()
            .find(|(kind, doc_name, _)| kind == "Deployment" && doc_name == name)
            .unwrap_or_else(|| panic!("Deployment {name}"))
            .2;
        assert!(
            pod.contains(&format!("value: {user}"))
                && pod.contains(&format!("key: {user}-password")),
            "{name} logs in as {user}:\n{pod}"
        );
    }
}
