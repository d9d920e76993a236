//! The `vpnlab` command line: `list`, `run`, `check`, `show`, `bench`, `new`, and for labs kept
//! up: `up`, `exec`, `shell`, `logs`, `step`, `trace`, `status`, `down`.
//! Exit codes: 0 all passed, 1 a scenario did not pass (check-failed, drift, error, or
//! transcripts that differed between `--repeat` runs), 2 bad input or environment (found before
//! anything runs).

mod cli;

use clap::{Parser, Subcommand};
use cli::run::{run_suite, Outputs};
use cli::select;
use std::process::ExitCode;
use vpnlab::error::EnvError;
use vpnlab::error::Exit;
use vpnlab::{env, model, runner, workdir};

#[derive(Parser)]
#[command(name = "vpnlab", version, about = "Rebuild VPN troubleshooting recipes as real labs in network namespaces")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    config: vpnlab::config::Config,
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
    vpnlab::reexec::main_if_requested();
    vpnlab::snapshot::quiet_insta();
    // `--version` also asks the daemons for theirs (clap's own flag prints a fixed string).
    if matches!(std::env::args().nth(1).as_deref(), Some("--version" | "-V")) {
        print!("{}", vpnlab::completions::version_text());
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    vpnlab::config::set(cli.config.clone());
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
    let r = real_main(cli);
    // Warm user-mode-linux guests any command used (`run`, `matrix`, `bench`): ended, dirs removed.
    vpnlab::backend::uml::pool::shutdown();
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let e = vpnlab::error::Error::from(e);
            eprintln!("{e}");
            ExitCode::from(e.exit().code())
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<u8> {
    // Work dirs of runs that died without cleaning up (SIGKILL) go as the next command starts.
    if env::is_root() {
        workdir::sweep();
    }
    match cli.cmd {
        Cmd::Completions { shell } => {
            vpnlab::completions::write(shell, &<Cli as clap::CommandFactory>::command(), &mut std::io::stdout());
            Ok(Exit::Passed.code())
        }
        Cmd::List => {
            for (lab, _) in select(&[])? {
                println!("{}  - {}", lab.id, lab.title);
                for s in &lab.scenarios {
                    println!("    {}::{}{}", lab.id, s.name, if s.about.is_empty() { String::new() } else { format!("  - {}", s.about) });
                }
            }
            Ok(Exit::Passed.code())
        }
        Cmd::Bench { labs, sizes, reps, out, backends, suite } => {
            let labs = if labs.is_empty() { vec!["openvpn/missing-return-route".to_string()] } else { labs };
            let selected: Vec<model::Lab> = select(&labs)?.into_iter().map(|(l, _)| l).collect();
            let all: Vec<model::Lab> = if suite { select(&[])?.into_iter().map(|(l, _)| l).collect() } else { Vec::new() };
            vpnlab::bench::run(&sizes, reps.max(1), &selected, backends, &all, Some(&out))?;
            eprintln!("written to {}", out.display());
            Ok(Exit::Passed.code())
        }
        Cmd::Show { lab, format, update_readme } => {
            let (lab, _) = select(&[lab])?.remove(0);
            if update_readme {
                let changed = vpnlab::diagram::update_readme(&lab)?;
                println!("{}: {}", lab.dir.join("README.md").display(), if changed { "topology updated" } else { "already current" });
                return Ok(Exit::Passed.code());
            }
            let out = match format.as_str() {
                "dot" => vpnlab::diagram::dot(&lab),
                "mermaid" => vpnlab::diagram::mermaid(&lab),
                _ => vpnlab::diagram::text(&lab),
            };
            print!("{out}");
            Ok(Exit::Passed.code())
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
            Ok(if st.failure.is_some() { Exit::NotPassed } else { Exit::Passed }.code())
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
            Ok(Exit::Passed.code())
        }
        Cmd::Trace { lab, node, dest } => {
            env::require_root()?;
            for l in vpnlab::session::trace(&vpnlab::session::key_for(&lab), &node, dest)? {
                println!("{l}");
            }
            Ok(Exit::Passed.code())
        }
        Cmd::Step { lab } => {
            println!("{}", vpnlab::session::step(&vpnlab::session::key_for(&lab))?.trim_end());
            Ok(Exit::Passed.code())
        }
        Cmd::Down { lab } => {
            env::require_root()?;
            let key = vpnlab::session::key_for(&lab);
            vpnlab::session::down(&key)?;
            println!("{key} is down");
            Ok(Exit::Passed.code())
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
            Ok(Exit::Passed.code())
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
            Ok(Exit::Passed.code())
        }
        Cmd::Check { labs } => {
            for (lab, sc) in select(&labs)? {
                for w in env::missing_sysctls(&lab) {
                    eprintln!("{w}");
                }
                println!("{}: ok ({} scenarios)", lab.id, sc.len());
            }
            Ok(Exit::Passed.code())
        }
        Cmd::Doctor { labs } => {
            env::require_root()?;
            let labs: Vec<model::Lab> = select(&labs)?.into_iter().map(|(l, _)| l).collect();
            print!("{}", vpnlab::doctor::report(&labs));
            Ok(Exit::Passed.code())
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
            Ok(if m.all_passed() { Exit::Passed } else { Exit::NotPassed }.code())
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
            let opts = runner::Options { keep, progress: !quiet, pcap, with, sink: None, work_root: None };
            let jobs = jobs.map(|j| j as usize).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let out = Outputs { report: report.as_deref(), junit: junit.as_deref(), html: html.as_deref() };
            run_suite(&selected, &opts, accept, repeat, jobs, out)
        }
    }
}
