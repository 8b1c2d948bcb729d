//! The measured scenarios, identical for every system under test: create->ready serially and
//! with concurrent clients, exec round trips, and deletes. A [`System`] says how to create,
//! exec in and delete one sandbox through its API; this module decides what is timed.

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::join_all;

use crate::host;
use crate::http::Client;
use crate::stats::{Report, Samples, Throughput};

/// A sandbox system driven through its API.
pub(crate) trait System {
    /// What identifies one sandbox.
    type Handle: Clone;

    /// The name printed in the table.
    fn name(&self) -> &str;

    /// A new API client (its own connection), as one user would have.
    fn client(&self) -> Client;

    /// Creates and starts a sandbox; returns when the API says it is running.
    async fn create(&self, client: &mut Client) -> Result<Self::Handle>;

    /// Runs `true` in the sandbox and waits for its exit code (checked to be 0).
    async fn exec_true(&self, client: &mut Client, sandbox: &Self::Handle) -> Result<()>;

    /// Deletes the sandbox, killing what runs in it; returns when the API says it is gone.
    async fn delete(&self, client: &mut Client, sandbox: &Self::Handle) -> Result<()>;
}

/// What the serial create->ready scenario measured, and the sandboxes it left running.
pub struct SerialCreate<H> {
    pub sandboxes: Vec<H>,
    /// The create call(s) alone.
    pub create: Samples,
    /// The first exec in the fresh sandbox alone.
    pub first_exec: Samples,
    /// From sending the create until the first exec answered: the headline number.
    pub ready: Samples,
}

/// Untimed create, exec, delete rounds that warm caches, the database and the server.
pub async fn warm_up<S: System>(system: &S, rounds: usize) -> Result<()> {
    let mut client = system.client();
    for _ in 0..rounds {
        let sandbox = system.create(&mut client).await.context("warm-up create")?;
        system
            .exec_true(&mut client, &sandbox)
            .await
            .context("warm-up exec")?;
        system
            .delete(&mut client, &sandbox)
            .await
            .context("warm-up delete")?;
    }
    Ok(())
}

/// Creates `count` sandboxes one after another, each followed by its first exec, keeping
/// them all running (so later ones are created beside more live sandboxes).
pub async fn serial_create<S: System>(system: &S, count: usize) -> Result<SerialCreate<S::Handle>> {
    let mut client = system.client();
    let mut result = SerialCreate {
        sandboxes: Vec::with_capacity(count),
        create: Samples::new("create call (serial)"),
        first_exec: Samples::new("first exec (serial)"),
        ready: Samples::new("create->ready (serial)"),
    };
    for index in 0..count {
        let started = Instant::now();
        let sandbox = system
            .create(&mut client)
            .await
            .with_context(|| format!("serial create #{index}"))?;
        let created = Instant::now();
        result.sandboxes.push(sandbox.clone());
        system
            .exec_true(&mut client, &sandbox)
            .await
            .with_context(|| format!("first exec after serial create #{index}"))?;
        let ready = Instant::now();
        result.create.push(created - started);
        result.first_exec.push(ready - created);
        result.ready.push(ready - started);
    }
    Ok(result)
}

/// `count` exec round trips of `true` in one running sandbox, one after another.
pub async fn exec_serial<S: System>(
    system: &S,
    sandbox: &S::Handle,
    count: usize,
) -> Result<Samples> {
    let mut client = system.client();
    let mut samples = Samples::new("exec true (serial)");
    for index in 0..count {
        let started = Instant::now();
        system
            .exec_true(&mut client, sandbox)
            .await
            .with_context(|| format!("exec #{index}"))?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// `count` exec round trips spread over `clients` concurrent clients and the given sandboxes
/// (client i uses sandbox i mod len), with the wall time of the whole batch.
pub async fn exec_concurrent<S: System>(
    system: &S,
    sandboxes: &[S::Handle],
    count: usize,
    clients: usize,
) -> Result<(Samples, Duration, f64)> {
    let next = Cell::new(0usize);
    let cpu = host::cpu_snapshot();
    let started = Instant::now();
    let workers = (0..clients).map(|worker| {
        let next = &next;
        let sandbox = &sandboxes[worker % sandboxes.len()];
        async move {
            let mut client = system.client();
            let mut latencies = Vec::new();
            loop {
                let index = next.get();
                if index >= count {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                next.set(index + 1);
                let began = Instant::now();
                system
                    .exec_true(&mut client, sandbox)
                    .await
                    .with_context(|| format!("concurrent exec #{index}"))?;
                latencies.push(began.elapsed());
            }
        }
    });
    let outcomes = join_all(workers).await;
    let elapsed = started.elapsed();
    let busy = host::busy_percent(cpu, host::cpu_snapshot());
    let mut samples = Samples::new(format!("exec true ({clients} concurrent)"));
    for outcome in outcomes {
        for latency in outcome? {
            samples.push(latency);
        }
    }
    Ok((samples, elapsed, busy))
}

/// Deletes the sandboxes one after another.
pub async fn delete_serial<S: System>(system: &S, sandboxes: &[S::Handle]) -> Result<Samples> {
    let mut client = system.client();
    let mut samples = Samples::new("delete (serial)");
    for (index, sandbox) in sandboxes.iter().enumerate() {
        let started = Instant::now();
        system
            .delete(&mut client, sandbox)
            .await
            .with_context(|| format!("serial delete #{index}"))?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// `total` create->ready rounds spread over `clients` concurrent clients, each client with its
/// own connection taking the next round as soon as its previous one is done. Records latencies
/// and the throughput of the batch; the sandboxes stay running.
pub async fn concurrent_create<S: System>(
    system: &S,
    total: usize,
    clients: usize,
    report: &mut Report,
) -> Result<Vec<S::Handle>> {
    let next = Cell::new(0usize);
    let cpu = host::cpu_snapshot();
    let started = Instant::now();
    let workers = (0..clients).map(|_| {
        let next = &next;
        async move {
            let mut client = system.client();
            let mut made = Vec::new();
            let mut ready = Vec::new();
            let mut create = Vec::new();
            let mut error = None;
            loop {
                let index = next.get();
                if index >= total {
                    break;
                }
                next.set(index + 1);
                let began = Instant::now();
                let sandbox = match system.create(&mut client).await {
                    Ok(sandbox) => sandbox,
                    Err(e) => {
                        error = Some(e.context(format!("concurrent create #{index}")));
                        break;
                    }
                };
                let created = Instant::now();
                made.push(sandbox.clone());
                if let Err(e) = system.exec_true(&mut client, &sandbox).await {
                    error = Some(e.context(format!("first exec after concurrent create #{index}")));
                    break;
                }
                create.push(created - began);
                ready.push(began.elapsed());
            }
            (made, create, ready, error)
        }
    });
    let outcomes = join_all(workers).await;
    let elapsed = started.elapsed();
    let host_busy = host::busy_percent(cpu, host::cpu_snapshot());
    let mut sandboxes = Vec::new();
    let mut create = Samples::new(format!("create call ({clients} concurrent)"));
    let mut ready = Samples::new(format!("create->ready ({clients} concurrent)"));
    let mut first_error = None;
    for (made, creates, readies, error) in outcomes {
        sandboxes.extend(made);
        create.values.extend(creates);
        ready.values.extend(readies);
        if first_error.is_none() {
            first_error = error;
        }
    }
    if let Some(error) = first_error {
        // The sandboxes made so far are returned through the error path's cleanup (the
        // caller enumerates what exists); report the failure.
        return Err(error);
    }
    report.add(system.name(), create);
    report.add(system.name(), ready);
    report.throughputs.push(Throughput {
        system: system.name().to_owned(),
        label: format!("create->ready ({clients} concurrent)"),
        count: sandboxes.len(),
        concurrency: clients,
        elapsed,
        host_busy,
    });
    Ok(sandboxes)
}

/// Deletes the sandboxes with `clients` concurrent clients; latencies and throughput.
pub async fn delete_concurrent<S: System>(
    system: &S,
    sandboxes: &[S::Handle],
    clients: usize,
    report: &mut Report,
) -> Result<()> {
    let next = Cell::new(0usize);
    let cpu = host::cpu_snapshot();
    let started = Instant::now();
    let workers = (0..clients).map(|_| {
        let next = &next;
        async move {
            let mut client = system.client();
            let mut latencies = Vec::new();
            loop {
                let index = next.get();
                if index >= sandboxes.len() {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                next.set(index + 1);
                let began = Instant::now();
                system
                    .delete(&mut client, &sandboxes[index])
                    .await
                    .with_context(|| format!("concurrent delete #{index}"))?;
                latencies.push(began.elapsed());
            }
        }
    });
    let outcomes = join_all(workers).await;
    let elapsed = started.elapsed();
    let host_busy = host::busy_percent(cpu, host::cpu_snapshot());
    let mut samples = Samples::new(format!("delete ({clients} concurrent)"));
    for outcome in outcomes {
        samples.values.extend(outcome?);
    }
    report.add(system.name(), samples);
    report.throughputs.push(Throughput {
        system: system.name().to_owned(),
        label: format!("delete ({clients} concurrent)"),
        count: sandboxes.len(),
        concurrency: clients,
        elapsed,
        host_busy,
    });
    Ok(())
}

/// The whole suite for one system, in order: warm-up, serial create->ready, exec (serial and
/// concurrent), serial delete, concurrent create->ready, concurrent delete. `between` runs
/// after the exec measurements while the serial sandboxes are still up (airlock uses it for
/// its breakdown). Sandboxes left by a failure are the caller's to clean up.
pub async fn run_suite<S: System>(
    system: &S,
    plan: &Plan,
    report: &mut Report,
    between: impl AsyncFnOnce(&[S::Handle], &mut Report) -> Result<()>,
) -> Result<()> {
    let name = system.name().to_owned();
    eprintln!("[{name}] warm-up: {} rounds", plan.warmup);
    warm_up(system, plan.warmup).await?;

    eprintln!(
        "[{name}] exec, serial, alone on the host: {}",
        plan.exec_iterations
    );
    let mut client = system.client();
    let alone = system.create(&mut client).await.context("create")?;
    let exec = exec_serial(system, &alone, plan.exec_iterations).await;
    system.delete(&mut client, &alone).await.context("delete")?;
    let mut exec = exec?;
    exec.label = "exec true (serial, 1 live)".into();
    report.add(&name, exec);

    eprintln!("[{name}] create->ready, serial: {}", plan.iterations);
    let serial = serial_create(system, plan.iterations.max(1)).await?;
    let live = serial.sandboxes.len();
    let window = (live / 5).clamp(1, 10);
    let trend = [
        by_live_count(&serial.create, "create call", 0, window, 0),
        by_live_count(&serial.create, "create call", live - window, live, 0),
    ];
    report.add(&name, serial.create);
    report.add(&name, serial.first_exec);
    report.add(&name, serial.ready);
    for samples in trend {
        report.add(&name, samples);
    }

    eprintln!("[{name}] exec, serial: {}", plan.exec_iterations);
    let mut exec = exec_serial(system, &serial.sandboxes[0], plan.exec_iterations).await?;
    exec.label = format!("exec true (serial, {live} live)");
    report.add(&name, exec);

    eprintln!(
        "[{name}] exec, {} concurrent clients: {}",
        plan.concurrency, plan.exec_iterations
    );
    let (exec, elapsed, host_busy) = exec_concurrent(
        system,
        &serial.sandboxes,
        plan.exec_iterations,
        plan.concurrency,
    )
    .await?;
    report.throughputs.push(Throughput {
        system: name.clone(),
        label: exec.label.clone(),
        count: exec.values.len(),
        concurrency: plan.concurrency,
        elapsed,
        host_busy,
    });
    report.add(&name, exec);

    between(&serial.sandboxes, report).await?;

    eprintln!("[{name}] delete, serial: {}", serial.sandboxes.len());
    let deletes = delete_serial(system, &serial.sandboxes).await?;
    // The i-th delete leaves live - 1 - i others running.
    let trend = [
        by_live_count(&deletes, "delete", 0, window, live - 1),
        by_live_count(&deletes, "delete", live - window, live, live - 1),
    ];
    report.add(&name, deletes);
    for samples in trend {
        report.add(&name, samples);
    }

    eprintln!(
        "[{name}] create->ready, {} concurrent clients: {}",
        plan.concurrency, plan.concurrent_total
    );
    let made = concurrent_create(system, plan.concurrent_total, plan.concurrency, report).await?;

    eprintln!(
        "[{name}] delete, {} concurrent clients: {}",
        plan.concurrency,
        made.len()
    );
    delete_concurrent(system, &made, plan.concurrency, report).await?;
    Ok(())
}

/// The samples `start..end` of a serial run, labelled with how many other sandboxes were
/// running at the time: sample i ran beside `i` others, or `mirror - i` when `mirror` is set
/// (deletes, which run in creation order).
fn by_live_count(all: &Samples, what: &str, start: usize, end: usize, mirror: usize) -> Samples {
    let others = |i: usize| if mirror > 0 { mirror - i } else { i };
    let (low, high) = if mirror > 0 {
        (others(end - 1), others(start))
    } else {
        (others(start), others(end - 1))
    };
    let mut samples = Samples::new(format!("{what}, {low}-{high} others live"));
    samples.values = all.values[start.min(all.values.len())..end.min(all.values.len())].to_vec();
    samples
}

/// How much of each scenario to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub warmup: usize,
    pub iterations: usize,
    pub exec_iterations: usize,
    pub concurrency: usize,
    pub concurrent_total: usize,
}
