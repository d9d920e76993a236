//! Scripts shipped in the lab folder. A node's command (a `setup` command, a service's `run`, an
//! `sh`/`show` step) whose program is a relative path (`./bridge-start`, `scripts/up`) runs that
//! file from the node's directory, its working directory. Such a file is one of the node's files:
//! listed in `files`, or added to them here when the lab folder has it, so that writing
//! `setup = ["./bridge-start"]` next to a `bridge-start` script is enough. `vpnlab check` and
//! `vpnlab run` agree (the requirement check leaves these programs to this one): a script that
//! is not in the lab folder, or not executable, is refused where the command names it.

use super::lab::{first_program, FileSpec, Node, Scenario};
use super::raw::RawLab;
use super::step::{Action, Step};
use super::validate::Validator;
use crate::error::InputError;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Is `program` a path relative to the working directory (`./x`, `dir/x`)?
pub fn is_local(program: &str) -> bool {
    program.contains('/') && !program.starts_with('/')
}

impl Validator<'_> {
    /// Finds every relative program of the nodes' commands and makes it a file of its node.
    pub(super) fn local_programs(
        &self,
        raw: &RawLab,
        nodes: &mut [Node],
        prelude: &[Step],
        scenarios: &[Scenario],
    ) -> Result<(), InputError> {
        // (node, offset of the command in the lab file, command)
        let mut uses: Vec<(usize, usize, String)> = Vec::new();
        for (i, node) in raw.nodes.values().enumerate() {
            uses.extend(node.get_ref().setup.iter().map(|s| (i, self.inner(s), s.get_ref().clone())));
        }
        for svc in raw.services.values() {
            let svc = svc.get_ref();
            if let Some(n) = nodes.iter().position(|n| n.name == *svc.node.get_ref()) {
                uses.push((n, self.inner(&svc.run), svc.run.get_ref().clone()));
            }
        }
        for st in prelude.iter().chain(scenarios.iter().flat_map(|s| s.steps.iter())) {
            if let Action::Sh { node, cmd, .. } | Action::Show { node, cmd, .. } = &st.action {
                // The offset points at the step's text; its command is in it.
                uses.push((*node, st.offset + st.text.find(cmd.as_str()).unwrap_or(0), cmd.clone()));
            }
        }
        for (node, offset, cmd) in uses {
            let Some(prog) = first_program(&cmd).filter(|p| is_local(p)) else { continue };
            let at = offset + cmd.find(prog.as_str()).unwrap_or(0);
            self.local_program(&mut nodes[node], &prog, at)?;
        }
        Ok(())
    }

    fn local_program(&self, node: &mut Node, prog: &str, at: usize) -> Result<(), InputError> {
        let path = Path::new(prog);
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(self.err(
                at,
                format!("`{prog}` is outside the node's directory"),
                "put the script in the lab folder and run it as `./NAME`",
            ));
        }
        let rel: PathBuf = path.components().filter(|c| !matches!(c, Component::CurDir)).collect();
        let file = self.dir.join(&rel);
        if !file.is_file() {
            return Err(self.err(
                at,
                format!("`{prog}` is not a file of the lab folder {}", self.dir.display()),
                format!(
                    "a relative program runs from the node's directory: put `{}` next to lab.toml (it is copied into the node `{}`)",
                    rel.display(),
                    node.name
                ),
            ));
        }
        if !node.files.iter().any(|f| rel.starts_with(&f.rel)) {
            node.files.push(FileSpec { rel: rel.clone() });
        }
        // A `modes` entry of the file itself is applied after copying.
        let mode = node.modes.iter().rev().find(|(p, _)| *p == rel).map(|(_, m)| *m);
        let mode = mode.unwrap_or_else(|| std::fs::metadata(&file).map(|m| m.permissions().mode()).unwrap_or(0));
        if mode & 0o111 == 0 {
            return Err(self.err(
                at,
                format!("`{prog}` is not executable ({})", file.display()),
                format!(
                    "`chmod +x {}` in the lab folder, or add `modes = {{ \"{}\" = \"755\" }}` to the node",
                    rel.display(),
                    rel.display()
                ),
            ));
        }
        Ok(())
    }
}
