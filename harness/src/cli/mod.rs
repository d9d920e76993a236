//! The `vpnlab` binary beyond its arguments and dispatch (`main.rs`): choosing labs from the
//! command line ([`select`]) and `vpnlab run`'s worker threads and terminal output ([`run`]).

use vpnlab::error::{EnvError, InputError};
use vpnlab::{model, suite};

pub mod run;

/// Loads the labs named on the command line (all when empty), with their scenario filter.
pub fn select(args: &[String]) -> anyhow::Result<Vec<(model::Lab, Vec<String>)>> {
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
