//! A step's shell command, run without the shell when the shell would only split it into words.
//!
//! `sh -c 'ipsec --rundir run trafficstatus'` costs a `sh` process that does nothing but fork
//! and exec `ipsec` (dash does not exec the last command in place). Natively that is ~1 ms; in
//! a user-mode-linux guest every process costs 10-30 ms (each of its syscalls and page faults
//! is a ptrace round trip on the host), and an IPsec scenario runs 15-25 such commands. A
//! command made only of plain words (no quoting, expansion, redirection, globbing, operators or
//! assignments) whose first word is neither a shell builtin nor a keyword and names an
//! executable that the shell would find is exec'd directly, with what `sh -c` would add: `PWD`
//! set to the working directory, and a signal death reported as dash does (its name on stderr,
//! exit 128+N). Anything else, and a program that is not found (the shell's own error
//! message), still goes through `sh -c`. (One difference is left: a command that kills its own
//! process group would take the shell with it.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// dash's builtins and reserved words: the shell runs these itself (a program of the same
/// name, such as `/bin/echo` or `/bin/kill`, does not behave the same).
const SHELL_OWN: &[&str] = &[
    ".", ":", "[", "alias", "bg", "break", "cd", "chdir", "command", "continue", "echo", "eval", "exec", "exit", "export", "false", "fc",
    "fg", "getopts", "hash", "jobs", "kill", "local", "printf", "pwd", "read", "readonly", "return", "set", "shift", "test", "times",
    "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "wait", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if",
    "in", "then", "until", "while", "time",
];

/// The shell's PATH when the environment has none (dash's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The words of `cmd` when `sh -c cmd` (run in `cwd` with `path` as PATH) would do nothing but
/// split it at blanks and exec the first word; `None` when the shell is needed.
pub(super) fn direct_argv(cmd: &str, cwd: &Path, path: Option<&str>) -> Option<Vec<String>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:,+=@%-".contains(c);
    if !cmd.chars().all(|c| plain(c) || c == ' ' || c == '\t') {
        return None;
    }
    let words: Vec<String> = cmd.split([' ', '\t']).filter(|w| !w.is_empty()).map(str::to_string).collect();
    let first = words.first()?;
    if first.contains('=') || SHELL_OWN.contains(&first.as_str()) {
        return None;
    }
    let executable = |p: &Path| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if first.contains('/') {
        return executable(&cwd.join(first)).then_some(words);
    }
    let path = path.unwrap_or(DEFAULT_PATH);
    // An empty PATH entry means the current directory: leave such a PATH to the shell.
    if path.split(':').any(str::is_empty) {
        return None;
    }
    path.split(':').any(|d| executable(&Path::new(d).join(first))).then_some(words)
}

#[cfg(test)]
mod tests {
    use super::direct_argv;
    use std::path::Path;

    fn words(cmd: &str) -> Option<Vec<String>> {
        direct_argv(cmd, Path::new("/"), Some("/usr/sbin:/usr/bin:/sbin:/bin"))
    }

    #[test]
    fn plain_commands_are_split() {
        assert_eq!(words("cat /proc/net/xfrm_stat"), Some(vec!["cat".into(), "/proc/net/xfrm_stat".into()]));
        assert_eq!(words("  ip  -s\tlink show dev=x "), Some(vec!["ip".into(), "-s".into(), "link".into(), "show".into(), "dev=x".into()]));
        assert_eq!(words("/bin/cat x"), Some(vec!["/bin/cat".into(), "x".into()]));
    }

    #[test]
    fn anything_the_shell_interprets_keeps_the_shell() {
        for cmd in [
            "cat a > b",
            "cat a | grep b",
            "cat a && cat b",
            "cat a; cat b",
            "grep 'a b' c",
            "grep \"a\" c",
            "cat $HOME",
            "cat ~/x",
            "cat *.conf",
            "cat a\\ b",
            "cat `x`",
            "cat a # comment",
            "FOO=1 cat a",
            "echo a",
            "kill 1",
            "test -s a",
            "[ -s a ]",
            "true",
            "if",
            "",
            "   ",
            "cat a\ncat b",
            "no-such-program-vpnlab x",
            "./no-such-file",
        ] {
            assert_eq!(words(cmd), None, "{cmd:?}");
        }
    }

    #[test]
    fn a_path_with_an_empty_entry_keeps_the_shell() {
        assert_eq!(direct_argv("cat a", Path::new("/"), Some("/bin::/usr/bin")), None);
        assert_eq!(direct_argv("cat a", Path::new("/"), Some("")), None);
    }
}
