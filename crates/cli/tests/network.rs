//! Network modes through the real server and real sandboxes: `none` has loopback only;
//! `egress` reaches the outside through NAT and nothing internal — not the host, not
//! airlock's port, not another environment, not link-local or private ranges — and its link
//! is gone with the environment.
//!
//! "The outside" is a network namespace this test makes: a veth to the host with an address
//! from a documentation range (a /30 of 198.51.100.0/24, neither private nor link-local), and a TCP
//! server in it that answers with the address it sees, which proves the NAT.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{Api, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Tests of this file run at once: each outside gets its own names and /30.
static OUTSIDES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A namespace standing in for the internet, removed on drop.
struct Outside {
    namespace: String,
    host_link: String,
    server: Child,
    port: u16,
    /// The server's address, in 198.51.100.0/24.
    address: String,
    /// The host's address on the link to it: what the server sees after NAT.
    gateway: String,
}

impl Outside {
    fn start() -> Outside {
        let index = OUTSIDES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(index < 60, "198.51.100.0/24 holds 64 /30s");
        let gateway = format!("198.51.100.{}", index * 4 + 1);
        let address = format!("198.51.100.{}", index * 4 + 2);
        let tag = format!("{}{index}", std::process::id() % 100_000);
        let namespace = format!("airlock-test-{tag}");
        let host_link = format!("altout{tag}");
        let peer = format!("altin{tag}");
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("ip runs");
            assert!(status.success(), "ip {args:?}");
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &namespace])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &host_link])
            .status();
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &namespace]);
        ip(&["addr", "add", &format!("{gateway}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &namespace, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{address}/30"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &gateway]);
        // Answers every connection with the peer address it sees, then closes.
        let script = "import socket\n\
                      s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                      s.bind(('0.0.0.0', 0)); s.listen(16)\n\
                      print(s.getsockname()[1], flush=True)\n\
                      while True:\n    c, a = s.accept(); c.sendall(('seen ' + a[0] + '\\n').encode()); c.close()\n";
        let mut server = Command::new("ip")
            .args(["netns", "exec", &namespace, "python3", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(server.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        Outside {
            namespace,
            host_link,
            server,
            port,
            address,
            gateway,
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

/// Tries a TCP connection from inside; returns (connected, what was read or the error).
async fn connect(api: &Api, id: &str, address: &str, port: u16) -> (bool, String) {
    let script = format!(
        "timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/{port} && cat <&3' 2>&1; echo \"exit=$?\""
    );
    let result = api.sh(id, &script).await;
    let output = result["stdout"].as_str().unwrap().to_owned();
    (output.trim_end().ends_with("exit=0"), output)
}

/// The host's own IPv4 addresses, loopback excluded.
fn host_addresses() -> Vec<String> {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .filter(|address| !address.starts_with("127."))
        .map(str::to_owned)
        .collect()
}

/// Host links whose alias names this environment.
fn links_of(environment: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("ifalias"))
                .unwrap_or_default()
                .contains(environment)
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

fn eth0_address(exec: &Value) -> String {
    exec["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on eth0: {exec}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_reaches_the_outside_through_nat_and_nothing_internal() {
    if !common::can_run_sandboxes("egress_reaches_the_outside_through_nat_and_nothing_internal") {
        return;
    }
    let outside = Outside::start();
    let server = Server::start();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let egress = alice.create(json!({ "network": "egress" })).await;
    let neighbour = bob.create(json!({ "network": "egress" })).await;
    let isolated = alice.create(json!({})).await;

    let (_, environment) = alice.get(&format!("/v1/environments/{egress}")).await;
    assert_eq!(environment["network"], "egress");
    let (_, environment) = alice.get(&format!("/v1/environments/{isolated}")).await;
    assert_eq!(environment["network"], "none", "none is the default");

    // The outside answers, and sees the host's address: the sandbox's own is NATed away.
    let (connected, output) = connect(&alice, &egress, &outside.address, outside.port).await;
    assert!(connected, "{output}");
    assert!(
        output.contains(&format!("seen {}", outside.gateway)),
        "{output}"
    );

    // Inside: lo and eth0, IPv4 only, a default route, the host's resolvers.
    let links = alice.sh(&egress, "ls /sys/class/net").await;
    assert_eq!(links["stdout"], "eth0\nlo\n");
    let ipv6 = alice
        .sh(
            &egress,
            "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6; cat /proc/net/if_inet6",
        )
        .await;
    assert!(
        ipv6["stdout"].as_str().unwrap().starts_with("1\n")
            && !ipv6["stdout"].as_str().unwrap().contains("eth0"),
        "IPv6 must be off on eth0: {ipv6}"
    );
    let route = alice.sh(&egress, "ip -4 route show default").await;
    assert!(
        route["stdout"]
            .as_str()
            .unwrap()
            .starts_with("default via 10.213."),
        "{route}"
    );

    // The neighbour listens on its own address, and can reach itself there...
    let neighbour_address = eth0_address(&bob.sh(&neighbour, "ip -4 -o addr show eth0").await);
    bob.sh(
        &neighbour,
        "nohup python3 -c \"import socket; s=socket.socket(); s.bind(('0.0.0.0', 8000)); s.listen(); [s.accept()[0].close() for _ in iter(int, 1)]\" >/dev/null 2>&1 &\nsleep 0.5",
    )
    .await;
    let (reachable, output) = connect(&bob, &neighbour, &neighbour_address, 8000).await;
    assert!(
        reachable,
        "the neighbour's own listener must be up: {output}"
    );

    // ...but nothing internal is reachable from the egress environment.
    let port = server
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let mut internal: Vec<(String, u16)> = host_addresses()
        .into_iter()
        .map(|address| (address, port))
        .collect();
    assert!(!internal.is_empty(), "the host has an address");
    let gateway = route["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap();
    internal.extend([
        (gateway.to_owned(), port), // the host, through the sandbox's own link
        (neighbour_address.clone(), 8000), // another environment
        ("169.254.169.254".into(), 80), // cloud metadata
        ("10.0.0.1".into(), 80),
        ("172.16.0.1".into(), 80),
        ("192.168.0.1".into(), 80),
        ("100.64.0.1".into(), 80),
    ]);
    for (address, port) in &internal {
        let (connected, output) = connect(&alice, &egress, address, *port).await;
        assert!(!connected, "{address}:{port} must be unreachable: {output}");
    }

    // `none` has loopback only: the outside does not exist for it.
    let links = alice.sh(&isolated, "ls /sys/class/net").await;
    assert_eq!(links["stdout"], "lo\n");
    let (connected, output) = connect(&alice, &isolated, &outside.address, outside.port).await;
    assert!(!connected, "{output}");

    // Stopping takes the link away, starting brings a working one back.
    assert_eq!(links_of(&egress).len(), 1);
    let (status, _) = alice
        .post(&format!("/v1/environments/{egress}/stop"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        links_of(&egress).is_empty(),
        "a stopped environment keeps no link"
    );
    let (status, _) = alice
        .post(&format!("/v1/environments/{egress}/start"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (connected, output) = connect(&alice, &egress, &outside.address, outside.port).await;
    assert!(connected, "after a restart: {output}");

    // Deleting removes the link at once.
    for (api, id) in [(&alice, &egress), (&bob, &neighbour), (&alice, &isolated)] {
        let (status, _) = api.delete(&format!("/v1/environments/{id}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(links_of(id).is_empty(), "{id} left a link");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_network_mode_is_refused_and_creates_nothing() {
    if !common::can_run_sandboxes("a_bad_network_mode_is_refused_and_creates_nothing") {
        return;
    }
    let server = Server::start();
    let alice = server.user("alice").await;
    for network in [
        json!("bridge"),
        json!("EGRESS"),
        json!(""),
        json!(1),
        json!(null),
    ] {
        let (status, problem) = alice
            .post("/v1/environments", json!({ "network": network }))
            .await;
        if network.is_null() {
            // Null is "absent": the default, none.
            assert_eq!(status, StatusCode::CREATED, "{problem}");
            assert_eq!(problem["network"], "none");
            continue;
        }
        assert_eq!(status, StatusCode::BAD_REQUEST, "{network}: {problem}");
    }
    let (_, list) = alice.get("/v1/environments").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_survives_a_server_crash_and_orphan_links_are_removed() {
    if !common::can_run_sandboxes("egress_survives_a_server_crash_and_orphan_links_are_removed") {
        return;
    }
    let mut server = Server::start();
    let outside = Outside::start();
    let alice = server.user("alice").await;
    let egress = alice.create(json!({ "network": "egress" })).await;
    let (connected, output) = connect(&alice, &egress, &outside.address, outside.port).await;
    assert!(connected, "{output}");

    // While the server is down, a link appears that no record explains (as if a server died
    // between making a link and recording its sandbox).
    server.kill();
    let instance = server.instance();
    let orphan_environment = "env_01m81zd1xvzkvw7rz62fdf92zz";
    let orphan = format!("alk{}16383", &instance[..6]);
    let ip = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    ip(&[
        "link",
        "add",
        &orphan,
        "type",
        "veth",
        "peer",
        "name",
        "altorphan",
    ]);
    ip(&[
        "link",
        "set",
        "dev",
        &orphan,
        "alias",
        &format!("airlock {instance} {orphan_environment}"),
    ]);

    let alice = {
        server.restart();
        alice.on(&server)
    };
    assert!(
        links_of(orphan_environment).is_empty(),
        "the orphan link must be removed at start"
    );
    let (_, environment) = alice.get(&format!("/v1/environments/{egress}")).await;
    assert_eq!(environment["state"], "running");
    let (connected, output) = connect(&alice, &egress, &outside.address, outside.port).await;
    assert!(connected, "after the restart: {output}");

    let (status, _) = alice.delete(&format!("/v1/environments/{egress}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(links_of(&egress).is_empty());
}
