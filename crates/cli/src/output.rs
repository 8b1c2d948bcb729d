//! How the CLI prints: aligned tables for people, JSON on request, and a spinner on a
//! terminal while waiting.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airlock_api as api;
use serde::Serialize;

pub fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|title| title.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub fn print_environments(environments: &[api::Environment]) {
    let rows = environments
        .iter()
        .map(|environment| {
            vec![
                environment.id.clone(),
                environment.name.clone(),
                environment.state.clone(),
                environment.image.clone(),
                format!(
                    "{} MiB / {} CPU / {} pids / {} MiB disk",
                    environment.resources.memory_mib,
                    environment.resources.cpus,
                    environment.resources.pids,
                    environment.resources.disk_mib
                ),
                environment.network.clone(),
                environment
                    .expires_at
                    .format("%Y-%m-%d %H:%M:%SZ")
                    .to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "NAME", "STATE", "IMAGE", "LIMITS", "NETWORK", "EXPIRES",
        ],
        rows,
    );
}

pub fn print_tokens(tokens: &[api::Token]) {
    let rows = tokens
        .iter()
        .map(|token| {
            vec![
                token.id.clone(),
                token.user_id.clone(),
                token.scopes.join(","),
                token.expires_at.map_or_else(
                    || "never".into(),
                    |time| time.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                ),
            ]
        })
        .collect();
    print_table(&["ID", "USER", "SCOPES", "EXPIRES"], rows);
}

/// A spinner on standard error while a request is in flight; silent when stderr is not a
/// terminal.
pub struct Spinner {
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    pub fn start(message: &'static str) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let thread = std::io::stderr().is_terminal().then(|| {
            let running = running.clone();
            std::thread::spawn(move || {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                let mut index = 0;
                while running.load(Ordering::Relaxed) {
                    eprint!("\r{} {message}…", frames[index % frames.len()]);
                    let _ = std::io::stderr().flush();
                    index += 1;
                    std::thread::sleep(Duration::from_millis(80));
                }
                eprint!("\r\x1b[2K");
                let _ = std::io::stderr().flush();
            })
        });
        Self { running, thread }
    }

    pub fn stop(mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
