//! What the live scenarios need beyond `retake-testkit`'s dev server and `retake worker`
//! processes: the Python peer, CPU time and memory read from `/proc`, small statistics and the
//! results' files.

use anyhow::{Context, bail};
use retake_testkit::{DevServer, WorkerProcess, repo_root};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Options every live scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Live {
    /// The temporal CLI (default: `$RETAKE_TEMPORAL_BIN`, else `.tools/temporal/bin/temporal`,
    /// which `scripts/dev-server` installs).
    #[arg(long, env = "RETAKE_TEMPORAL_BIN")]
    pub(crate) temporal: Option<PathBuf>,
    /// The `retake` binary (default: beside this benchmark's executable; build both with
    /// `cargo build --release -p retake -p retake-bench`).
    #[arg(long)]
    pub(crate) retake: Option<PathBuf>,
    /// Where to write the results.
    #[arg(long, default_value = "bench/results")]
    pub(crate) out: PathBuf,
    /// Times the whole measurement is repeated (fresh worker processes each time); results give
    /// the median and the range.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
}

impl Live {
    /// A headless, in-memory dev server with its log discarded: what is measured is
    /// orchestration, not the dev server's SQLite file on this machine's disk (production servers
    /// run on Postgres or Cassandra). Blocks until it is healthy.
    pub(crate) fn start_server(&self) -> anyhow::Result<DevServer> {
        let mut server = DevServer::builder().headless();
        if let Some(temporal) = &self.temporal {
            server = server.temporal(temporal);
        }
        Ok(server.start()?)
    }

    pub(crate) fn retake_bin(&self) -> anyhow::Result<PathBuf> {
        let p = match &self.retake {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("executable directory")?
                .join("retake"),
        };
        if !p.exists() {
            bail!(
                "the retake binary is not at {}: `cargo build --release -p retake -p retake-bench` or pass --retake",
                p.display()
            );
        }
        Ok(p)
    }
}

/// A temporary directory in memory (`/dev/shm`) when there is one: both workers' SQLite stores go
/// there, so the comparison measures the workers, not this machine's `fsync`.
pub(crate) fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    Ok(if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    })
}

/// `retake worker` with a fresh SQLite store and the simulator at `gpu_ms` per attempt, logging
/// errors only.
pub(crate) fn rust_worker(
    bin: &Path,
    address: &str,
    queue: &str,
    db: &Path,
    gpu_ms: u64,
) -> anyhow::Result<WorkerProcess> {
    let db_url = format!("sqlite://{}", db.display());
    Ok(WorkerProcess::builder(bin, address, queue, &db_url)
        .sim_gpu_ms(gpu_ms)
        .spawn()?)
}

/// A worker process whose resource use is measured.
pub(crate) struct WorkerProc {
    process: Process,
    pub(crate) label: &'static str,
}

enum Process {
    Rust(WorkerProcess),
    Python(Child),
}

impl WorkerProc {
    /// [`rust_worker`], measured.
    pub(crate) fn rust(
        bin: &Path,
        address: &str,
        queue: &str,
        db: &Path,
        gpu_ms: u64,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            process: Process::Rust(rust_worker(bin, address, queue, db, gpu_ms)?),
            label: "rust",
        })
    }

    /// The Python SDK peer (`bench/peer-python/worker.py`), once it says `ready`; its store
    /// steps write the SQLite file `db` with the Rust worker's schema.
    pub(crate) async fn python(
        address: &str,
        queue: &str,
        db: &Path,
        gpu_ms: u64,
    ) -> anyhow::Result<Self> {
        let python = peer_python().await?;
        let mut child = Command::new(python)
            .arg(repo_root().join("bench/peer-python/worker.py"))
            .args([
                "--address",
                address,
                "--task-queue",
                queue,
                "--gpu-ms",
                &gpu_ms.to_string(),
            ])
            .arg("--db")
            .arg(db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the Python peer")?;
        let stdout = child.stdout.take().context("peer stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.trim() == "ready" {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        if !matches!(ready, Ok(Ok(true))) {
            bail!("the Python peer did not report ready within 60 s");
        }
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            process: Process::Python(child),
            label: "python",
        })
    }

    /// 0 once it has been reaped (then [`Usage::of`] reads nothing).
    pub(crate) fn pid(&self) -> u32 {
        match &self.process {
            Process::Rust(worker) => worker.pid(),
            Process::Python(child) => child.id(),
        }
        .unwrap_or(0)
    }

    pub(crate) fn usage(&self) -> Usage {
        Usage::of(self.pid())
    }
}

/// The peer's interpreter: `.tools/peer-venv`, created with `temporalio` when missing.
async fn peer_python() -> anyhow::Result<PathBuf> {
    let venv = repo_root().join(".tools/peer-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("creating {} for the Python peer", venv.display());
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .await?;
        if !ok.success() {
            bail!("python3 -m venv failed");
        }
    }
    let check = Command::new(&python)
        .args(["-c", "import temporalio"])
        .status()
        .await?;
    if !check.success() {
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(repo_root().join("bench/peer-python/requirements.txt"))
            .status()
            .await?;
        if !ok.success() {
            bail!("installing the Python peer's requirements failed");
        }
    }
    Ok(python)
}

/// CPU seconds and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Usage {
    pub(crate) cpu_secs: f64,
    pub(crate) rss_mib: f64,
    pub(crate) peak_rss_mib: f64,
}

impl Usage {
    pub(crate) fn of(pid: u32) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name: utime is the 12th, stime the 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let cpu_secs = (ticks(11) + ticks(12)) / clock_ticks();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Self {
            cpu_secs,
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
        }
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The `p`-th percentile (0..=100) of `values`, nearest rank.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// The least, median and greatest of repeated measurements (NaN when there are none).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Spread {
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) max: f64,
}

impl Spread {
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self {
                min: f64::NAN,
                median: f64::NAN,
                max: f64::NAN,
            };
        }
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Self {
            min: v[0],
            median,
            max: v[v.len() - 1],
        }
    }

    /// `median (min–max)` with `decimals` decimals, `scale` applied (e.g. 100 for percentages).
    pub(crate) fn show(&self, decimals: usize, scale: f64) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median * scale,
            self.min * scale,
            self.max * scale,
            d = decimals
        )
    }
}

/// A workflow argument for the benchmark: a failed segment and a policy override.
pub(crate) fn request(segment: &str, policy: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "segment_id": segment, "project_id": "bench", "scene_type": "bench",
        "params": {"seed": 1234, "cfg_scale": 7.5, "denoise_strength": 0.6},
        "failed_qa": {"scores": {"face": 0.4}, "failures": ["face_melt"]},
        "policy": policy
    })
}

/// Write `<name>.json` and `<name>.md` under `out`.
pub(crate) fn write(
    out: &Path,
    name: &str,
    json: &serde_json::Value,
    md: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    std::fs::write(out.join(format!("{name}.md")), md)?;
    print!("{md}");
    Ok(())
}

/// What machine this ran on, for the results.
pub(crate) fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    serde_json::json!({"cpu": cpu, "cores": cores})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_gives_the_least_the_median_and_the_greatest() {
        let s = Spread::of([3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0]).median, 2.5);
        assert_eq!(
            Spread::of([1.0, 2.0, 3.0]).show(1, 100.0),
            "200.0 (100.0–300.0)"
        );
        assert!(Spread::of([]).median.is_nan());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 95.0), 5.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let u = Usage::of(std::process::id());
        assert!(u.rss_mib > 0.0 && u.peak_rss_mib >= u.rss_mib);
    }
}

#[cfg(test)]
mod peer_tests {
    use retake_activities::sim::Simulator;
    use retake_domain::contract::Params;
    use retake_testkit::repo_root;
    use serde_json::{Value, json};

    /// The Python peer's copy of the simulator scores every (scene type, segment, seed, params)
    /// as `activities/src/sim.rs` does, directional segments included, so both workers do the
    /// same work for the same input.
    #[test]
    fn the_python_peer_scores_as_the_rust_simulator_does() {
        let mut cases = Vec::new();
        for scene in ["dialogue", "action", "bench", "landscape"] {
            for i in 0..100u64 {
                let cfg = 6.5 + 0.02 * i as f64;
                let denoise = 0.5 + 0.002 * i as f64;
                cases.push(json!([scene, format!("seg-{i}"), 1000 + i * 7919,
                    {"seed": 1000 + i * 7919, "cfg_scale": cfg, "denoise_strength": denoise}]));
            }
        }
        let script = "import json, sys\n\
            sys.path.insert(0, sys.argv[1])\n\
            import peer_domain\n\
            cases = json.load(sys.stdin)\n\
            print(json.dumps([peer_domain.sim_scores(*c) for c in cases]))";
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(repo_root().join("bench/peer-python"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(Value::Array(cases.clone()).to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let python: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut directional = 0;
        for (c, p) in cases.iter().zip(&python) {
            let params = Params::parse(&c[3]).unwrap();
            let seg = c[1].as_str().unwrap();
            let rust =
                Simulator::scores(c[0].as_str().unwrap(), seg, c[2].as_u64().unwrap(), &params);
            assert_eq!(serde_json::to_value(&rust).unwrap(), *p, "{c}");
            directional += usize::from(Simulator::profile(seg).directional);
        }
        assert!(directional > 0, "the cases include directional segments");
    }
}
