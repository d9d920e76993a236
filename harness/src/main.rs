//! The `vpnlab` command line: `list`, `run`, `check`, `show`, `bench`, `new`, and for labs kept
//! up: `up`, `exec`, `shell`, `logs`, `step`, `trace`, `status`, `down`.
//! Exit codes: 0 all passed, 1 a scenario did not pass (check-failed, drift, error, or
//! transcripts that differed between `--repeat` runs), 2 bad input or environment (found before
//! anything runs).

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Instant;
use vpnlab::error::{EnvError, InputError};
use vpnlab::{env, model, runner, suite, workdir};

#[derive(Parser)]
#[command(name = "vpnlab", version, about = "Rebuild VPN troubleshooting recipes as real labs in network namespaces")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List labs and their scenarios.
    List,
    /// Run labs (all when none is given) and compare each transcript with its snapshot.
    Run {
        /// `family/recipe`, `family/recipe::scenario`, or the path of a lab folder.
        labs: Vec<String>,
        /// Keep the work dir (daemon logs, node files) even when a scenario passes.
        #[arg(long)]
        keep: bool,
        /// Write this run's transcripts as the snapshots instead of comparing (not under CI).
        #[arg(long)]
        accept: bool,
        /// Print only the verdicts, not every step.
        #[arg(long, short)]
        quiet: bool,
        /// Record every link to pcap files in the work dir (kept on failure; with --keep always).
        #[arg(long)]
        pcap: bool,
        /// Write a JSON report (schema `vpnlab-report/1`, see REPORT.md) to this file; it is
        /// rewritten after every scenario.
        #[arg(long, value_name = "FILE")]
        report: Option<std::path::PathBuf>,
        /// Run each scenario N times and report every scenario whose transcript differed
        /// between the repetitions (with the differing lines).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
        repeat: u32,
        /// Run N scenarios at once, on N worker threads (default: the number of cores; 1: one
        /// after the other, every step printed as it runs). With N > 1 each scenario's step
        /// lines and verdict are printed together when it ends.
        #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
        jobs: Option<u32>,
        /// Write JUnit XML to this file (a testcase per scenario; failure/error elements with
        /// the failing step or the first differing lines); rewritten after every scenario.
        #[arg(long, value_name = "FILE")]
        junit: Option<std::path::PathBuf>,
        /// Run a daemon from another build: NAME is openvpn, libreswan or pppd; SPEC a path (an
        /// executable, an install prefix), a version (`2.7.8`) or `debian:SUITE` (fetched once
        /// into ~/.cache/vpnlab). Repeatable, one SPEC per NAME.
        #[arg(long = "with", value_name = "NAME=SPEC")]
        with: Vec<String>,
        /// Write a self-contained HTML page to this file (outcomes, failing steps, transcripts
        /// with the difference from the snapshot marked, daemon logs, topology pictures, pcap
        /// paths); rewritten after every scenario.
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
        /// Run only part K of N of the selected scenarios (numbered in selection order; part K
        /// has those whose number modulo N is K-1): N CI jobs run the suite between them.
        #[arg(long, value_name = "K/N", value_parser = vpnlab::shard::Shard::parse)]
        shard: Option<vpnlab::shard::Shard>,
    },
    /// Print a shell's completion script (e.g. `vpnlab completions bash > /etc/bash_completion.d/vpnlab`).
    Completions { shell: clap_complete::Shell },
    /// Run labs against several daemon versions side by side: a grid scenario x version of the
    /// outcomes, printed and written as Markdown and JSON.
    Matrix {
        /// Labs (default: all that use a daemon named in --with).
        labs: Vec<String>,
        /// NAME=SPEC[,SPEC...], e.g. `--with openvpn=2.6.14,2.7.8 --with libreswan=4.10,5.2`.
        #[arg(long = "with", value_name = "NAME=SPECS", required = true)]
        with: Vec<String>,
        /// The Markdown grid.
        #[arg(long, default_value = "MATRIX.md")]
        out: std::path::PathBuf,
        /// The JSON grid.
        #[arg(long, default_value = "matrix.json")]
        json: std::path::PathBuf,
        /// Print only the verdicts, not every step.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print a lab's topology (nodes, links, addresses, services) as a diagram.
    Show {
        lab: String,
        #[arg(long, default_value = "text", value_parser = ["text", "dot", "mermaid"])]
        format: String,
        /// Write the mermaid picture into the lab's README.md (its "Topology" section).
        #[arg(long)]
        update_readme: bool,
    },
    /// Check lab files without running anything (warns about sysctls this kernel lacks).
    Check { labs: Vec<String> },
    /// What this machine offers the labs: kernel features natively and in user-mode-linux,
    /// which labs run where, and what to install.
    Doctor { labs: Vec<String> },
    /// Build a lab, run its steps up to a point, and keep it running (named namespaces).
    Up {
        lab: String,
        /// The scenario (default: the first).
        #[arg(long)]
        scenario: Option<String>,
        /// Stop after this step: a number (steps of prelude + scenario) or text the step contains.
        #[arg(long)]
        until: Option<String>,
        /// Run the lab's daemons from another build, as with `vpnlab run --with NAME=SPEC`.
        #[arg(long = "with", value_name = "NAME=SPEC")]
        with: Vec<String>,
    },
    /// Run a command in a node of a lab that is up: `vpnlab exec LAB NODE -- CMD...`.
    Exec {
        lab: String,
        node: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// An interactive shell in a node of a lab that is up.
    Shell { lab: String, node: String },
    /// Print the daemon logs of a lab that is up.
    Logs {
        lab: String,
        service: Option<String>,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Where does a ping from NODE to DEST die? Hop by hop, from the kernel's view (lab up).
    Trace { lab: String, node: String, dest: std::net::IpAddr },
    /// Run the next step of a lab that is up and print its transcript line.
    Step { lab: String },
    /// Tear a lab that is up down completely.
    Down { lab: String },
    /// The labs that are up.
    Status,
    /// Write a lab skeleton from a customer's OpenVPN configs (builds and connects).
    New {
        /// `NAME` (-> custom/NAME) or `family/recipe`.
        name: String,
        #[arg(long)]
        server: std::path::PathBuf,
        #[arg(long)]
        client: std::path::PathBuf,
        /// The labs folder to write into.
        #[arg(long, default_value = "labs")]
        dir: std::path::PathBuf,
    },
    #[command(name = "__serve", hide = true)]
    Serve {
        lab_dir: std::path::PathBuf,
        scenario: String,
        until: String,
        #[arg(long = "with")]
        with: Vec<String>,
    },
    /// Measure topology build/teardown (vpnlab vs `ip -batch` vs one `ip` per operation) and
    /// lab wall times; writes BENCHMARKS.md.
    Bench {
        /// Labs to time (default: openvpn/missing-return-route).
        labs: Vec<String>,
        /// Node counts for the chain and star topologies.
        #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
        /// Also run native labs in user-mode-linux, to compare the backends.
        #[arg(long)]
        backends: bool,
        /// Also time the whole suite (every lab) with 1 and 2 worker threads.
        #[arg(long)]
        suite: bool,
    },
}

fn main() -> ExitCode {
    vpnlab::backend::guest_main_if_requested();
    vpnlab::snapshot::quiet_insta();
    // `--version` also asks the daemons for theirs (clap's own flag prints a fixed string).
    if matches!(std::env::args().nth(1).as_deref(), Some("--version" | "-V")) {
        print!("{}", vpnlab::completions::version_text());
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    // Commands that own labs clean up on SIGINT/SIGTERM; `exec`/`shell` leave signals to the
    // program they run (Ctrl-C belongs to the shell).
    if !matches!(
        cli.cmd,
        Cmd::Exec { .. }
            | Cmd::Shell { .. }
            | Cmd::Logs { .. }
            | Cmd::New { .. }
            | Cmd::Show { .. }
            | Cmd::List
            | Cmd::Check { .. }
            | Cmd::Completions { .. }
    ) {
        vpnlab::ns::install_signal_cleanup();
    }
    match real_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(vpnlab::error::exit_code(&e) as u8)
        }
    }
}

/// Loads the labs named on the command line (all when empty), with their scenario filter.
fn select(args: &[String]) -> anyhow::Result<Vec<(model::Lab, Vec<String>)>> {
    let root = suite::labs_root();
    let targets: Vec<(std::path::PathBuf, Option<String>)> = if args.is_empty() {
        suite::discover(&root).into_iter().map(|d| (d, None)).collect()
    } else {
        args.iter().map(|a| suite::resolve(a, &root)).collect::<Result<_, EnvError>>()?
    };
    if targets.is_empty() {
        return Err(EnvError {
            msg: format!("no labs found under {}", root.display()),
            hint: "run from the repository root or set VPNLAB_LABS".into(),
        }
        .into());
    }
    let mut out: Vec<(model::Lab, Vec<String>)> = Vec::new();
    for (dir, sc) in targets {
        let lab = model::load(&dir).map_err(anyhow::Error::from)?;
        let scenarios = match sc {
            Some(s) => {
                if lab.scenario(&s).is_none() {
                    let known: Vec<&str> = lab.scenarios.iter().map(|s| s.name.as_str()).collect();
                    return Err(InputError {
                        file: lab.file.clone(),
                        line: 1,
                        col: 1,
                        msg: format!("lab {} has no scenario `{s}`", lab.id),
                        hint: format!("scenarios: {}", known.join(", ")),
                    }
                    .into());
                }
                vec![s]
            }
            None => lab.scenarios.iter().map(|s| s.name.clone()).collect(),
        };
        match out.iter_mut().find(|(l, _)| l.dir == lab.dir) {
            Some((_, v)) => v.extend(scenarios),
            None => out.push((lab, scenarios)),
        }
    }
    Ok(out)
}

fn real_main(cli: Cli) -> anyhow::Result<u8> {
    // Work dirs of runs that died without cleaning up (SIGKILL) go as the next command starts.
    if env::is_root() {
        workdir::sweep();
    }
    match cli.cmd {
        Cmd::Completions { shell } => {
            vpnlab::completions::write(shell, &<Cli as clap::CommandFactory>::command(), &mut std::io::stdout());
            Ok(0)
        }
        Cmd::List => {
            for (lab, _) in select(&[])? {
                println!("{}  - {}", lab.id, lab.title);
                for s in &lab.scenarios {
                    println!("    {}::{}{}", lab.id, s.name, if s.about.is_empty() { String::new() } else { format!("  - {}", s.about) });
                }
            }
            Ok(0)
        }
        Cmd::Bench { labs, sizes, reps, out, backends, suite } => {
            let labs = if labs.is_empty() { vec!["openvpn/missing-return-route".to_string()] } else { labs };
            let selected: Vec<model::Lab> = select(&labs)?.into_iter().map(|(l, _)| l).collect();
            let all: Vec<model::Lab> = if suite { select(&[])?.into_iter().map(|(l, _)| l).collect() } else { Vec::new() };
            vpnlab::bench::run(&sizes, reps.max(1), &selected, backends, &all, Some(&out))?;
            eprintln!("written to {}", out.display());
            Ok(0)
        }
        Cmd::Show { lab, format, update_readme } => {
            let (lab, _) = select(&[lab])?.remove(0);
            if update_readme {
                let changed = vpnlab::diagram::update_readme(&lab)?;
                println!("{}: {}", lab.dir.join("README.md").display(), if changed { "topology updated" } else { "already current" });
                return Ok(0);
            }
            let out = match format.as_str() {
                "dot" => vpnlab::diagram::dot(&lab),
                "mermaid" => vpnlab::diagram::mermaid(&lab),
                _ => vpnlab::diagram::text(&lab),
            };
            print!("{out}");
            Ok(0)
        }
        Cmd::Up { lab, scenario, until, with } => {
            env::require_root()?;
            // A bad SPEC is found (and a Debian build fetched) before the lab is built.
            vpnlab::with::resolve_all(&with)?;
            let (lab, _) = select(&[lab])?.remove(0);
            env::check_runnable(&lab)?;
            if vpnlab::backend::choose(&lab) != Ok(vpnlab::backend::Backend::Native) {
                return Err(EnvError {
                    msg: format!("{} needs the user-mode-linux backend; `vpnlab up` keeps native labs only", lab.id),
                    hint: "run it with `vpnlab run` instead".into(),
                }
                .into());
            }
            let sc = scenario.unwrap_or_else(|| lab.scenarios[0].name.clone());
            if lab.scenario(&sc).is_none() {
                let known: Vec<&str> = lab.scenarios.iter().map(|s| s.name.as_str()).collect();
                return Err(EnvError {
                    msg: format!("{} has no scenario `{sc}`", lab.id),
                    hint: format!("scenarios: {}", known.join(", ")),
                }
                .into());
            }
            let st = vpnlab::session::up(&lab, &sc, until.as_deref(), &with)?;
            print!("{}", vpnlab::session::describe(&st));
            Ok(if st.failure.is_some() { 1 } else { 0 })
        }
        Cmd::Exec { lab, node, cmd } => {
            env::require_root()?;
            let code = vpnlab::session::exec(&vpnlab::session::key_for(&lab), &node, &cmd, false)?;
            Ok(code.clamp(0, 255) as u8)
        }
        Cmd::Shell { lab, node } => {
            env::require_root()?;
            let code = vpnlab::session::exec(&vpnlab::session::key_for(&lab), &node, &vpnlab::session::shell_argv(), true)?;
            Ok(code.clamp(0, 255) as u8)
        }
        Cmd::Logs { lab, service, follow } => {
            vpnlab::session::logs(&vpnlab::session::key_for(&lab), service.as_deref(), follow, &mut std::io::stdout())?;
            Ok(0)
        }
        Cmd::Trace { lab, node, dest } => {
            env::require_root()?;
            for l in vpnlab::session::trace(&vpnlab::session::key_for(&lab), &node, dest)? {
                println!("{l}");
            }
            Ok(0)
        }
        Cmd::Step { lab } => {
            println!("{}", vpnlab::session::step(&vpnlab::session::key_for(&lab))?.trim_end());
            Ok(0)
        }
        Cmd::Down { lab } => {
            env::require_root()?;
            let key = vpnlab::session::key_for(&lab);
            vpnlab::session::down(&key)?;
            println!("{key} is down");
            Ok(0)
        }
        Cmd::Status => {
            let labs = vpnlab::session::status()?;
            if labs.is_empty() {
                println!("no labs are up");
            }
            for (key, st, up) in labs {
                let names: Vec<String> = st.nodes.iter().map(|(n, name)| format!("{n}={name}")).collect();
                println!(
                    "{key}: {}::{} {} ({} of {} steps{}) namespaces: {}",
                    st.lab_id,
                    st.scenario,
                    if up { "up" } else { "DEAD (run `vpnlab down` to clean up)" },
                    st.steps_done,
                    st.steps_total,
                    st.failure.as_ref().map(|f| format!(", failed: {f}")).unwrap_or_default(),
                    names.join(" ")
                );
            }
            Ok(0)
        }
        Cmd::New { name, server, client, dir } => {
            let made = vpnlab::newlab::create_with_report(&vpnlab::newlab::NewLab { name, server_conf: server, client_conf: client, dir })?;
            println!("wrote {} ({})", made.dir.display(), made.id);
            for c in &made.changes {
                println!("  changed: {c}");
            }
            for w in &made.warnings {
                println!("  warning: {w}");
            }
            println!(
                "next: `vpnlab run {}` checks that it connects and records the first snapshot; then add the symptom's steps",
                made.dir.display()
            );
            Ok(0)
        }
        Cmd::Serve { lab_dir, scenario, until, with } => {
            vpnlab::session::serve(&lab_dir, &scenario, &until, &with)?;
            Ok(0)
        }
        Cmd::Check { labs } => {
            for (lab, sc) in select(&labs)? {
                for w in env::missing_sysctls(&lab) {
                    eprintln!("{w}");
                }
                println!("{}: ok ({} scenarios)", lab.id, sc.len());
            }
            Ok(0)
        }
        Cmd::Doctor { labs } => {
            env::require_root()?;
            let labs: Vec<model::Lab> = select(&labs)?.into_iter().map(|(l, _)| l).collect();
            print!("{}", vpnlab::doctor::report(&labs));
            Ok(0)
        }
        Cmd::Matrix { labs, with, out, json, quiet } => {
            let selected = select(&labs)?;
            env::require_root()?;
            for (lab, _) in &selected {
                env::check_runnable(lab)?;
            }
            let mut columns: Vec<vpnlab::with::Choice> = Vec::new();
            for a in &with {
                let (c, specs) = vpnlab::with::parse_arg(a)?;
                for s in specs {
                    columns.push(vpnlab::with::resolve(c, &s)?);
                }
            }
            let m = vpnlab::matrix::run(&selected, &columns, !quiet);
            print!("{}", m.text());
            // A hand-written `## Notes` section (why a cell cannot pass, with its evidence) is kept.
            let mut md = m.markdown(&with);
            if let Some(i) = std::fs::read_to_string(&out)
                .unwrap_or_default()
                .find("\n## Notes")
                .map(|i| (i, std::fs::read_to_string(&out).unwrap_or_default()))
            {
                md.push_str(&i.1[i.0..]);
            }
            std::fs::write(&out, md).map_err(|e| EnvError { msg: format!("cannot write {}: {e}", out.display()), hint: String::new() })?;
            std::fs::write(&json, m.json())
                .map_err(|e| EnvError { msg: format!("cannot write {}: {e}", json.display()), hint: String::new() })?;
            eprintln!("written to {} and {}", out.display(), json.display());
            Ok(if m.all_passed() { 0 } else { 1 })
        }
        Cmd::Run { labs, keep, accept, quiet, pcap, report, repeat, with, jobs, junit, html, shard } => {
            // Everything that can be wrong with the input or the environment is found before
            // anything runs (exit 2); after that every selected scenario runs, whatever an
            // earlier one did, and the run ends with the summary line.
            let selected = select(&labs)?;
            let selected = match shard {
                Some(sh) => {
                    let all: usize = selected.iter().map(|(_, s)| s.len()).sum();
                    let part = sh.apply(selected);
                    eprintln!("vpnlab: shard {sh}: {} of {all} scenarios", part.iter().map(|(_, s)| s.len()).sum::<usize>());
                    part
                }
                None => selected,
            };
            env::require_root()?;
            for (lab, _) in &selected {
                env::check_runnable(lab)?;
            }
            let repeat = repeat.max(1);
            // Fetched (or found in the cache) before anything runs; a bad SPEC exits 2.
            let with = vpnlab::with::resolve_all(&with)?;
            let opts = runner::Options { keep, progress: !quiet, pcap, with, sink: None };
            let jobs = jobs.map(|j| j as usize).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let out = Outputs { report: report.as_deref(), junit: junit.as_deref(), html: html.as_deref() };
            run_suite(&selected, &opts, accept, repeat, jobs, out)
        }
    }
}

/// Where `vpnlab run` writes its machine-readable accounts (each rewritten after every scenario).
struct Outputs<'a> {
    report: Option<&'a std::path::Path>,
    junit: Option<&'a std::path::Path>,
    html: Option<&'a std::path::Path>,
}

/// What the worker threads tell the main thread, which alone prints (so a scenario's lines are
/// never interleaved with another's, and the progress bar is drawn by one thread).
enum Event {
    /// A run of scenario `job` starts: its `== LAB::SCENARIO (... backend)` line.
    Started { job: usize, header: String },
    /// A progress line of the run of `job` going on (`  [lab::scenario] client$ ping ...`).
    Line { job: usize, line: String },
    /// The run of `job` ended with this verdict.
    Done { job: usize, rep: usize, out: Box<suite::Checked> },
}

/// A scenario of the selection, with its runs so far and, once all ran, its report entry.
#[derive(Default)]
struct Slot {
    /// Lines of the run going on (grouped output: printed with its verdict).
    lines: Vec<String>,
    runs: Vec<suite::Checked>,
    /// The report entry, this scenario's counts, and what JUnit shows beyond the entry.
    done: Option<(vpnlab::report::ScenarioReport, suite::Tally, vpnlab::junit::Details)>,
    /// (outcome, headline) when it did not pass.
    not_passed: Option<(String, String)>,
}

/// The terminal side of a run: a progress bar on a terminal (scenarios done/total, what runs
/// now, ETA) with every line printed above it; plain lines otherwise (CI logs, tests).
struct Display {
    bar: Option<indicatif::ProgressBar>,
    /// id and latest step of every run going on, for the bar's message.
    running: std::collections::BTreeMap<usize, (String, String)>,
}

impl Display {
    fn new(runs: usize, repeat: usize) -> Display {
        use std::io::IsTerminal;
        // Plain lines when stderr is not a terminal, so logs and tests see exactly the lines.
        let bar = (runs > 1 && std::io::stderr().is_terminal()).then(|| {
            let style =
                indicatif::ProgressStyle::with_template("{spinner} [{bar:24}] {pos}/{len} {prefix} {elapsed} (ETA {eta}) {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> ");
            let b = indicatif::ProgressBar::new(runs as u64).with_style(style).with_prefix(if repeat > 1 { "runs" } else { "scenarios" });
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        Display { bar, running: Default::default() }
    }

    /// Prints above the bar (the bar is cleared, the text printed, the bar redrawn).
    fn print(&self, text: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    fn refresh(&self) {
        if let Some(b) = &self.bar {
            let msg: Vec<String> =
                self.running.values().map(|(id, step)| if step.is_empty() { id.clone() } else { format!("{id}: {step}") }).collect();
            b.set_message(msg.join("  |  "));
        }
    }

    fn started(&mut self, job: usize, id: String) {
        self.running.insert(job, (id, String::new()));
        self.refresh();
    }

    fn step(&mut self, job: usize, line: &str) {
        if let Some(r) = self.running.get_mut(&job) {
            // `  [lab::scenario] client$ ping ...` -> `client$ ping ...`
            let t = line.trim_start();
            r.1 = t.strip_prefix('[').and_then(|t| t.split_once("] ")).map(|(_, s)| s).unwrap_or(t).to_string();
            self.refresh();
        }
    }

    fn done(&mut self, job: usize) {
        self.running.remove(&job);
        if let Some(b) = &self.bar {
            b.inc(1);
        }
        self.refresh();
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Runs every selected scenario (`repeat` times each) on `jobs` worker threads, printing a
/// verdict line per run (with `jobs` > 1 together with that run's step lines, when it ends),
/// then the scenarios that did not pass and the summary line, which always ends the run. The
/// JSON report and the JUnit file are rewritten after every scenario, in selection order.
///
/// The repetitions of one scenario run one after the other on the same worker (scenarios run
/// in parallel): `--accept` writes the snapshot in the first repetition and the others are
/// compared with it, and a scenario's repetitions never compete with each other.
fn run_suite(
    selected: &[(model::Lab, Vec<String>)],
    opts: &runner::Options,
    accept: bool,
    repeat: u32,
    jobs: usize,
    outputs: Outputs,
) -> anyhow::Result<u8> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let repeat = repeat as usize;
    let t0 = Instant::now();
    let started = std::time::SystemTime::now();
    let work: Vec<(&model::Lab, &str)> = selected.iter().flat_map(|(l, ss)| ss.iter().map(move |s| (l, s.as_str()))).collect();
    let mut slots: Vec<Slot> = work.iter().map(|_| Slot::default()).collect();
    let mut write_error: Option<String> = None;
    let build_report = |slots: &[Slot], complete: bool| {
        let mut r = vpnlab::report::Report::new(started, repeat);
        for (e, t, _) in slots.iter().filter_map(|s| s.done.as_ref()) {
            r.push(e.clone(), t);
        }
        r.complete = complete;
        r.duration_s = vpnlab::report::secs(t0.elapsed().as_secs_f64());
        r
    };
    // Each lab's picture for the HTML report, drawn once.
    let topologies = outputs.html.map(|_| vpnlab::html::Topologies::of(selected.iter().map(|(l, _)| l))).unwrap_or_default();
    let save = |slots: &[Slot], complete: bool, write_error: &mut Option<String>| {
        if outputs.report.is_none() && outputs.junit.is_none() && outputs.html.is_none() {
            return;
        }
        let r = build_report(slots, complete);
        if let Some(p) = outputs.report {
            if let Err(e) = r.write(p) {
                *write_error = Some(format!("vpnlab: cannot write the report {}: {e}", p.display()));
            }
        }
        if let Some(p) = outputs.junit {
            let details: std::collections::BTreeMap<String, vpnlab::junit::Details> =
                slots.iter().filter_map(|s| s.done.as_ref()).map(|(e, _, d)| (e.id.clone(), d.clone())).collect();
            if let Err(e) = vpnlab::junit::write(&r, &details, p) {
                *write_error = Some(format!("vpnlab: cannot write the JUnit file {}: {e}", p.display()));
            }
        }
        if let Some(p) = outputs.html {
            let details: std::collections::BTreeMap<String, vpnlab::junit::Details> =
                slots.iter().filter_map(|s| s.done.as_ref()).map(|(e, _, d)| (e.id.clone(), d.clone())).collect();
            if let Err(e) = vpnlab::html::write(&r, &details, &topologies, p) {
                *write_error = Some(format!("vpnlab: cannot write the HTML report {}: {e}", p.display()));
            }
        }
    };
    // An unwritable report or JUnit file is an environment problem: found before anything runs.
    save(&slots, false, &mut write_error);
    if let Some(e) = write_error.take() {
        return Err(EnvError {
            msg: e.trim_start_matches("vpnlab: ").to_string(),
            hint: "give --report / --junit / --html a path in a writable directory".into(),
        }
        .into());
    }
    let mut tally = suite::Tally::default();
    let interrupted = |tally: &suite::Tally| {
        vpnlab::ns::set_interrupted_summary(format!("vpnlab: {} in {:.2}s (interrupted)", tally.counts(), t0.elapsed().as_secs_f64()))
    };
    interrupted(&tally);
    let workers = jobs.clamp(1, work.len().max(1));
    // With one worker every step is printed as it runs (as always); with more, a scenario's
    // lines wait for its verdict so that they are printed together.
    let grouped = workers > 1;
    let quiet = !opts.progress;
    let mut display = Display::new(work.len() * repeat, repeat);
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    std::thread::scope(|scope| {
        for w in 0..workers {
            let tx = tx.clone();
            let (next, work) = (&next, &work);
            std::thread::Builder::new()
                .name(format!("vpnlab-worker-{w}"))
                .spawn_scoped(scope, move || loop {
                    let job = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(lab, s)) = work.get(job) else { break };
                    for rep in 1..=repeat {
                        let backend = vpnlab::backend::choose_for(lab, Some(s), None).map(|b| b.name()).unwrap_or("no");
                        let nth = if repeat > 1 { format!(", repetition {rep} of {repeat}") } else { String::new() };
                        let wl = opts.with.label();
                        let wl = if wl.is_empty() { wl } else { format!(", with {wl}") };
                        let header = format!("== {}::{s} ({backend} backend{wl}{nth})", lab.id);
                        if tx.send(Event::Started { job, header }).is_err() {
                            return;
                        }
                        let mut o = opts.clone();
                        let lines = tx.clone();
                        o.sink = Some(std::sync::Arc::new(move |line: &str| {
                            let _ = lines.send(Event::Line { job, line: line.to_string() });
                        }));
                        let out = suite::run_checked(lab, s, &o, accept && rep == 1);
                        if tx.send(Event::Done { job, rep, out: Box::new(out) }).is_err() {
                            return;
                        }
                    }
                })
                .expect("start a worker thread");
        }
        drop(tx);
        for ev in rx {
            match ev {
                Event::Started { job, header } => {
                    if grouped {
                        slots[job].lines = vec![header];
                    } else {
                        display.print(&header);
                    }
                    let (lab, s) = work[job];
                    display.started(job, format!("{}::{s}", lab.id));
                }
                Event::Line { job, line } => {
                    if !quiet {
                        if grouped {
                            slots[job].lines.push(line.clone());
                        } else {
                            display.print(&line);
                        }
                    }
                    display.step(job, &line);
                }
                Event::Done { job, rep, out } => {
                    let mut block = std::mem::take(&mut slots[job].lines);
                    block.push(format!(
                        "== {}{}",
                        out.verdict_line(),
                        if repeat > 1 { format!(" [repetition {rep} of {repeat}]") } else { String::new() }
                    ));
                    if !out.report.is_empty() {
                        block.push(out.report.clone());
                    }
                    display.print(&block.join("\n"));
                    tally.add(out.outcome);
                    interrupted(&tally);
                    display.done(job);
                    slots[job].runs.push(*out);
                    if rep == repeat {
                        let (lab, s) = work[job];
                        let slot = &mut slots[job];
                        let runs = std::mem::take(&mut slot.runs);
                        let mut entry = vpnlab::report::ScenarioReport::new(lab, s, &runs, repeat);
                        entry.versions = vpnlab::versions::of_lab_with(lab, &opts.with);
                        let mut this = suite::Tally::default();
                        runs.iter().for_each(|r| this.add(r.outcome));
                        let rep_run = runs.iter().find(|r| r.outcome == entry.outcome);
                        if let Some(r) = rep_run.filter(|_| entry.outcome != suite::Outcome::Passed) {
                            slot.not_passed = Some((entry.outcome.to_string(), r.headline.clone()));
                        }
                        let details = vpnlab::junit::Details {
                            body: rep_run.map(|r| r.report.clone()).unwrap_or_default(),
                            transcript: runs.first().map(|r| r.transcript.clone()).unwrap_or_default(),
                            logs: rep_run.map(|r| r.logs.clone()).unwrap_or_default(),
                        };
                        slot.done = Some((entry, this, details));
                        save(&slots, false, &mut write_error);
                    }
                }
            }
        }
    });
    display.finish();
    for (e, _, _) in slots.iter().filter_map(|s| s.done.as_ref()) {
        if let Some(reps) = e.repetitions.as_ref().filter(|r| r.differed) {
            eprintln!(
                "== {}: the transcript differed between repetitions ({} of {} differ from repetition 1):",
                e.id,
                reps.differences.len(),
                reps.count
            );
            for d in &reps.differences {
                eprint!("{}", d.diff);
            }
        }
    }
    let differed =
        slots.iter().filter_map(|s| s.done.as_ref()).filter(|(e, _, _)| e.repetitions.as_ref().is_some_and(|r| r.differed)).count();
    // In selection order, whatever order the scenarios ended in.
    let not_passed: Vec<(String, &str, &str)> = slots
        .iter()
        .filter_map(|s| Some((s.done.as_ref()?.0.id.clone(), s.not_passed.as_ref()?)))
        .map(|(id, (o, h))| (id, o.as_str(), h.as_str()))
        .collect();
    if !not_passed.is_empty() {
        eprintln!("not passed:");
        for (id, outcome, why) in &not_passed {
            eprintln!("  {outcome:<12} {id}: {why}");
        }
    }
    save(&slots, true, &mut write_error);
    if let Some(e) = &write_error {
        eprintln!("{e}");
    }
    let reps = if repeat > 1 {
        format!(" ({repeat} repetitions each); {differed} scenario{} differed between repetitions", if differed == 1 { "" } else { "s" })
    } else {
        String::new()
    };
    println!("vpnlab: {} in {:.2}s{reps}", tally.counts(), t0.elapsed().as_secs_f64());
    Ok(if write_error.is_some() {
        2
    } else if tally.all_passed() && differed == 0 {
        0
    } else {
        1
    })
}
