//! The transcript of a scenario in the book's voice (`client$ ping -c2 10.198.0.1  ->
//! unreachable (100% loss)`), and the ordered sanitizers that make it stable from run to run
//! (timestamps, PIDs, ephemeral ports, durations), libreswan-`testing/` style: built-ins first,
//! then the lab's own.

use crate::model::Sanitizer;
use regex::Regex;
use std::sync::OnceLock;

/// Built-in sanitizers, applied in this order to every line.
pub fn builtin() -> &'static [Sanitizer] {
    static B: OnceLock<Vec<Sanitizer>> = OnceLock::new();
    B.get_or_init(|| {
        let s = |re: &str, with: &str| Sanitizer::replace(Regex::new(re).expect("builtin sanitizer"), with);
        vec![
            // OpenVPN's and pluto's line prefix: `2026-12-01 23:10:00 ` / `Dec  1 23:10:00.123 `.
            s(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?(?: [+-]\d{4})? ", ""),
            s(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} ", ""),
            // pluto --stderrlog: `Dec  1 23:10:00.123456: `.
            s(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d+: ", ""),
            // OpenVPN at verb >= 4: microseconds after the timestamp.
            s(r"^us=\d+ ", ""),
            s(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?", "TIMESTAMP"),
            s(
                r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d \d{4}\b",
                "TIMESTAMP",
            ),
            // ping timings.
            s(r"time[=<]\d+(?:\.\d+)? ?ms", "time=T ms"),
            s(r"\btime \d+ms\b", "time Tms"),
            s(r"rtt min/avg/max/mdev = [\d./]+ ms", "rtt min/avg/max/mdev = T ms"),
            // process ids.
            s(r"\b(pid|PID)([ =:]+)\d+", "${1}${2}PID"),
            s(r"\b(openvpn|pppd|pluto|sshd|ssh|setpriv)\[\d+\]", "${1}[PID]"),
            // ephemeral ports (32768-60999): `1.2.3.4:51234`, `port 51234`.
            s(r"(\d+\.\d+\.\d+\.\d+):(?:3276[89]|327[7-9]\d|32[89]\d\d|3[3-9]\d{3}|[45]\d{4}|60\d{3})\b", "${1}:PORT"),
            s(r"\bport (?:3276[89]|327[7-9]\d|32[89]\d\d|3[3-9]\d{3}|[45]\d{4}|60\d{3})\b", "port PORT"),
            // daemon versions (`--with` runs other builds; the report carries the exact version).
            // Three components for OpenVPN/pppd (a lab's prose says "OpenVPN 2.6 sees ...").
            s(r"\b(OpenVPN|pppd|pppd version) \d+\.\d+\.\d+(?:[-~+_][\w.+~-]*)?", "${1} VERSION"),
            s(r"\b(Libreswan|Libreswan Version|Pluto version) v?\d+\.\d+(?:\.\d+)?(?:[-~+_][\w.+~-]*)?", "${1} VERSION"),
            // durations printed by the harness itself.
            s(r"\bin \d+(?:\.\d+)?(?:ms|s)\b", "in T"),
        ]
    })
}

/// Applies the built-in sanitizers, then `extra`'s substitutions that apply everywhere (no
/// `after`), in order, to each line of `text`. Deleting rules act on command output only
/// ([`sanitize_output`]).
pub fn sanitize(text: &str, extra: &[Sanitizer]) -> String {
    text.lines().map(|line| sanitize_line(line, extra, None).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// One line through the built-ins, then the lab's rules in the order written. `cmd` is the
/// command whose output the line is (`None` for the transcript's own lines and log lines: then
/// only substitutions without `after` apply). `None` when a rule deleted the line.
fn sanitize_line(line: &str, extra: &[Sanitizer], cmd: Option<&str>) -> Option<String> {
    let mut l = line.to_string();
    for s in builtin().iter().chain(extra) {
        let applies = match (&s.after, cmd) {
            (None, _) => cmd.is_some() || !s.delete,
            (Some(a), Some(c)) => a.is_match(c),
            (Some(_), None) => false,
        };
        if !applies {
            continue;
        }
        if s.delete {
            if s.re.is_match(&l) {
                return None;
            }
        } else {
            l = s.re.replace_all(&l, s.with.as_str()).into_owned();
        }
    }
    Some(l.trim_end().to_string())
}

/// The output of command `cmd` (a `show` step's): every rule applies, deleting rules included,
/// a rule with `after` only when its regex matches `cmd`.
pub fn sanitize_output(cmd: &str, text: &str, extra: &[Sanitizer]) -> Vec<String> {
    text.lines().filter_map(|line| sanitize_line(line, extra, Some(cmd))).collect()
}

/// A scenario's transcript, built step by step. Every line is sanitized exactly once, as it is
/// added (a log line before its `service.log: ` prefix, so sanitizers may anchor on `^`).
#[derive(Debug, Default)]
pub struct Transcript {
    lines: Vec<String>,
    sanitizers: Vec<Sanitizer>,
}

impl Transcript {
    pub fn new(lab_sanitizers: &[Sanitizer]) -> Self {
        Transcript { lines: Vec::new(), sanitizers: lab_sanitizers.to_vec() }
    }

    /// Adds a line (sanitized) and returns it as recorded.
    pub fn push(&mut self, line: &str) -> &str {
        let l = sanitize(line, &self.sanitizers);
        self.lines.push(l);
        self.lines.last().unwrap()
    }

    /// Adds `prefix` + a sanitized daemon log line (the prefix itself is not sanitized).
    pub fn push_log(&mut self, prefix: &str, line: &str) -> &str {
        let l = format!("{prefix}{}", sanitize(line, &self.sanitizers));
        self.lines.push(l);
        self.lines.last().unwrap()
    }

    /// Text under a step (a trace, packet lines), sanitized line by line (substitutions without
    /// `after`) and indented under the line that produced it.
    pub fn push_block(&mut self, text: &str) {
        for l in text.lines() {
            let l = sanitize(l, &self.sanitizers);
            self.lines.push(format!("    {l}").trim_end().to_string());
        }
    }

    /// The output of command `cmd`, indented: every lab rule applies (lines may be deleted;
    /// rules with `after` when they match `cmd`).
    pub fn push_output(&mut self, cmd: &str, text: &str) {
        for l in sanitize_output(cmd, text, &self.sanitizers) {
            self.lines.push(format!("    {l}").trim_end().to_string());
        }
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Lines added since `n` lines were there.
    pub fn lines_from(&self, n: usize) -> Vec<String> {
        self.lines[n.min(self.lines.len())..].to_vec()
    }

    /// The text that is compared with the snapshot.
    pub fn render(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_daemon_versions_but_not_prose() {
        assert_eq!(sanitize("OpenVPN 2.7.8 x86_64-pc-linux-gnu [SSL]", &[]), "OpenVPN VERSION x86_64-pc-linux-gnu [SSL]");
        assert_eq!(sanitize("Starting Pluto (Libreswan Version 5.2 IKEv2)", &[]), "Starting Pluto (Libreswan Version VERSION IKEv2)");
        assert_eq!(sanitize("pppd 2.4.9 started by root", &[]), "pppd VERSION started by root");
        assert_eq!(
            sanitize("# OpenVPN 2.6 sees an on-link gateway; libreswan 4.10 defaults", &[]),
            "# OpenVPN 2.6 sees an on-link gateway; libreswan 4.10 defaults"
        );
    }

    #[test]
    fn strips_timestamps_pids_ports() {
        let s = sanitize("2026-12-01 23:10:00 client1/192.0.2.2:51234 MULTI: bad source", &[]);
        assert_eq!(s, "client1/192.0.2.2:PORT MULTI: bad source");
        assert_eq!(
            sanitize("64 bytes from 10.0.0.1: icmp_seq=1 ttl=63 time=0.045 ms", &[]),
            "64 bytes from 10.0.0.1: icmp_seq=1 ttl=63 time=T ms"
        );
        assert_eq!(sanitize("pluto[4242]: started pid=4242", &[]), "pluto[PID]: started pid=PID");
        assert_eq!(sanitize("Dec  1 23:10:00.123456: \"myvpn\" #1: initiating", &[]), "\"myvpn\" #1: initiating");
    }

    #[test]
    fn keeps_well_known_ports() {
        let line = "Incoming packet rejected from [AF_INET]192.168.2.13:1194[2], expected peer address: [AF_INET]192.168.4.65:1194";
        assert_eq!(sanitize(line, &[]), line);
        assert_eq!(sanitize("10.0.0.1:60999 10.0.0.1:61000 10.0.0.1:32767", &[]), "10.0.0.1:PORT 10.0.0.1:61000 10.0.0.1:32767");
    }

    #[test]
    fn lab_sanitizers_run_after_builtins_in_order() {
        let extra = vec![
            Sanitizer::replace(Regex::new(r"SPI 0x[0-9a-f]+").unwrap(), "SPI 0xSPI"),
            Sanitizer::replace(Regex::new(r"0xSPI").unwrap(), "SPI"),
        ];
        assert_eq!(sanitize("2026-12-01 23:10:00 SPI 0xdeadbeef", &extra), "SPI SPI");
    }

    #[test]
    fn render_ends_with_newline_and_trims() {
        let mut t = Transcript::default();
        t.push("a  ");
        t.push_block("x\ny");
        assert_eq!(t.render(), "a\n    x\n    y\n");
    }

    #[test]
    fn log_lines_are_sanitized_before_their_prefix_and_only_once() {
        let extra = vec![Sanitizer::replace(Regex::new(r"^us=\d+ ").unwrap(), ""), Sanitizer::replace(Regex::new(r"N").unwrap(), "NN")];
        let mut t = Transcript::new(&extra);
        assert_eq!(t.push_log("server.log: ", "2026-12-01 23:10:00 us=123 MULTI: N"), "server.log: MULTI: NN");
        assert_eq!(t.render(), "server.log: MULTI: NN\n");
    }

    fn delete(re: &str, after: Option<&str>) -> Sanitizer {
        Sanitizer { re: Regex::new(re).unwrap(), with: String::new(), delete: true, after: after.map(|a| Regex::new(a).unwrap()) }
    }

    #[test]
    fn deleting_rules_act_on_command_output_in_the_order_written() {
        // A substitution that empties a line, then drop_blank: the line goes. In the other
        // order the blank line stays (the order written is the order applied).
        let blank = delete(r"^\s*$", None);
        let empty = Sanitizer::replace(Regex::new(r"^debug .*").unwrap(), "");
        let text = "a\ndebug x\n\nb";
        assert_eq!(sanitize_output("cmd", text, &[empty.clone(), blank.clone()]), ["a", "b"]);
        assert_eq!(sanitize_output("cmd", text, &[blank, empty]), ["a", "", "b"]);
        // Deleting rules never touch the transcript's own lines or log lines.
        let mut t = Transcript::new(&[delete("^west", None)]);
        t.push("west# ipsec start");
        t.push_log("west.log: ", "west is up");
        t.push_output("ipsec status", "west\neast");
        assert_eq!(t.render(), "west# ipsec start\nwest.log: west is up\n    east\n");
    }

    #[test]
    fn after_limits_a_rule_to_the_output_of_matching_commands() {
        let extra = vec![
            delete(r"^algorithm ", Some(r"^ipsec (auto )?--status")),
            Sanitizer {
                re: Regex::new(r"inBytes=\d+").unwrap(),
                with: "inBytes=N".into(),
                delete: false,
                after: Some(Regex::new("trafficstatus").unwrap()),
            },
        ];
        let text = "algorithm IKE PRF: name=HMAC_MD5\ninBytes=84\nTotal";
        assert_eq!(sanitize_output("ipsec auto --status", text, &extra), ["inBytes=84", "Total"]);
        assert_eq!(
            sanitize_output("ipsec whack --trafficstatus", text, &extra),
            ["algorithm IKE PRF: name=HMAC_MD5", "inBytes=N", "Total"]
        );
        // Not in a transcript line that merely mentions the command.
        assert_eq!(sanitize("inBytes=84 trafficstatus", &extra), "inBytes=84 trafficstatus");
    }
}
