//! `vpnlab bench`: where the time goes. Topology build/teardown for chains and stars of N
//! nodes via vpnlab (netlink) against the same topology built the plain-shell way (`ip -batch`,
//! and one `ip` process per operation), and each lab's wall time split into phases. Results are
//! printed and written to BENCHMARKS.md. Nothing here is a test: no timing is ever asserted.

use crate::model;
use crate::runner::Options;
use crate::topology::Topology;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod script;

#[derive(Clone, Copy, Debug)]
pub enum Shape {
    Chain,
    Star,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::Star => "star",
        }
    }
}

/// min / median / max of a sample.
pub fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// The median (the mean of the middle two for an even count).
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn fmt3(s: (Duration, Duration, Duration)) -> String {
    format!("{} / {} / {}", ms(s.0), ms(s.1), ms(s.2))
}

/// A lab file for a chain (n0 - n1 - ... ) or a star (all nodes on one LAN) of `n` nodes,
/// with an address on every interface.
pub fn topology_lab(shape: Shape, n: usize) -> String {
    let mut s = String::from("[lab]\ntitle = \"bench\"\n");
    for i in 0..n {
        let _ = writeln!(s, "[nodes.n{i}]");
    }
    match shape {
        Shape::Chain => {
            for i in 0..n.saturating_sub(1) {
                let (a, b) = addr_pair(i);
                let _ = writeln!(s, "[[links]]\na = \"n{i}:eth1 {a}/30\"\nb = \"n{}:eth0 {b}/30\"", i + 1);
            }
        }
        Shape::Star => {
            s.push_str("[[lans]]\nname = \"lan\"\nmembers = [");
            for i in 0..n {
                let _ = write!(s, "\"n{i}:eth0 10.{}.{}.{}/8\",", (i + 1) / 65536, ((i + 1) / 256) % 256, (i + 1) % 256);
            }
            s.push_str("]\n");
        }
    }
    s.push_str("[scenarios.none]\nsteps = []\n");
    s
}

fn addr_pair(i: usize) -> (String, String) {
    let base = i * 4;
    let o = |x: usize| format!("10.{}.{}.{}", x / 65536, (x / 256) % 256, x % 256);
    (o(base + 1), o(base + 2))
}

/// Builds and tears down with vpnlab; returns (build, teardown).
fn vpnlab_once(lab: &model::Lab) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let topo = Topology::build(lab)?;
    let build = t0.elapsed();
    let t1 = Instant::now();
    drop(topo);
    Ok((build, t1.elapsed()))
}

/// The floor: the same netlink operations sent raw, one socket per namespace (opened inside
/// it), everything for a namespace in one batched `send` (interface indices chosen up front),
/// then all acks read. Phase 1 creates the veths/bridges, phase 2 adds
/// addresses and brings loopbacks up.
fn raw_once(shape: Shape, n: usize) -> Result<(Duration, Duration)> {
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
    use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket};
    use rtnetlink::{AddressMessageBuilder, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};
    use std::net::Ipv4Addr;

    let t0 = Instant::now();
    let extra = matches!(shape, Shape::Star) as usize;
    let names: Vec<String> = (0..n + extra).map(|i| format!("raw{i}")).collect();
    let spaces = crate::ns::NetNs::create_many(&names)?;
    // Per namespace: phase-1 and phase-2 messages.
    let mut p1: Vec<Vec<RouteNetlinkMessage>> = (0..spaces.len()).map(|_| Vec::new()).collect();
    let mut p2: Vec<Vec<RouteNetlinkMessage>> = (0..spaces.len()).map(|_| Vec::new()).collect();
    let mut next_index = vec![2u32; spaces.len()]; // 1 is lo
    let v4 = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
    let veth = |p1: &mut Vec<Vec<RouteNetlinkMessage>>, a: usize, a_if: &str, b: usize, b_if: &str, next: &mut Vec<u32>| -> (u32, u32) {
        let (ia, ib) = (next[a], next[b]);
        next[a] += 1;
        next[b] += 1;
        // (a veth cannot be created up: its peer is not attached yet, ENOTCONN)
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(b_if.to_string())
            .index(ib)
            .append_extra_attribute(LinkAttribute::NetNsFd(spaces[b].raw_fd()))
            .build();
        let msg = LinkVeth::new(a_if, b_if).index(ia).set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build();
        p1[a].push(RouteNetlinkMessage::NewLink(msg));
        (ia, ib)
    };
    for (i, m) in p2.iter_mut().enumerate().take(n) {
        let _ = i;
        m.push(RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(1).up().build()));
    }
    match shape {
        Shape::Chain => {
            for i in 0..n.saturating_sub(1) {
                let (a, b) = addr_pair(i);
                let (ia, ib) = veth(&mut p1, i, "eth1", i + 1, "eth0", &mut next_index);
                p2[i].push(RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(ia).up().build()));
                p2[i + 1].push(RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(ib).up().build()));
                p2[i].push(RouteNetlinkMessage::NewAddress(AddressMessageBuilder::<Ipv4Addr>::new().index(ia).address(v4(&a), 30).build()));
                p2[i + 1]
                    .push(RouteNetlinkMessage::NewAddress(AddressMessageBuilder::<Ipv4Addr>::new().index(ib).address(v4(&b), 30).build()));
            }
        }
        Shape::Star => {
            let sw = n;
            let br = next_index[sw];
            next_index[sw] += 1;
            p1[sw].push(RouteNetlinkMessage::NewLink(LinkBridge::new("br0").index(br).up().build()));
            for i in 0..n {
                let (ip, ie) = veth(&mut p1, sw, &format!("p{i}"), i, "eth0", &mut next_index);
                p2[sw].push(RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(ip).controller(br).up().build()));
                p2[i].push(RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(ie).up().build()));
                let a = format!("10.{}.{}.{}", (i + 1) / 65536, ((i + 1) / 256) % 256, (i + 1) % 256);
                p2[i].push(RouteNetlinkMessage::NewAddress(AddressMessageBuilder::<Ipv4Addr>::new().index(ie).address(v4(&a), 8).build()));
            }
        }
    }
    // One socket per namespace, opened on a thread inside it.
    let socks: Vec<Socket> = spaces
        .iter()
        .map(|ns| -> Result<Socket> {
            let mut s = ns.run(|| Socket::new(NETLINK_ROUTE))??;
            s.bind_auto()?;
            s.connect(&rtnetlink::sys::SocketAddr::new(0, 0))?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let send_batch = |sock: &Socket, msgs: Vec<RouteNetlinkMessage>| -> Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        let count = msgs.len();
        for (seq, m) in msgs.into_iter().enumerate() {
            let create = !matches!(m, RouteNetlinkMessage::SetLink(_));
            let mut nl = NetlinkMessage::from(m);
            nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | if create { NLM_F_CREATE | NLM_F_EXCL } else { 0 };
            nl.header.sequence_number = seq as u32 + 1;
            nl.finalize();
            let start = buf.len();
            buf.resize(start + nl.buffer_len(), 0);
            nl.serialize(&mut buf[start..]);
        }
        sock.send(&buf, 0)?;
        let mut acked = 0;
        let mut rbuf = vec![0u8; 1 << 16];
        while acked < count {
            let len = sock.recv(&mut &mut rbuf[..], 0)?;
            let mut off = 0;
            while off < len {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[off..len]).map_err(|e| anyhow::anyhow!("{e}"))?;
                off += msg.header.length as usize;
                if let NetlinkPayload::Error(e) = msg.payload {
                    if let Some(code) = e.code {
                        bail!("raw netlink op {} failed: {}", msg.header.sequence_number, std::io::Error::from_raw_os_error(-code.get()));
                    }
                    acked += 1;
                }
                if msg.header.length == 0 {
                    break;
                }
            }
        }
        Ok(())
    };
    for (sock, msgs) in socks.iter().zip(p1) {
        send_batch(sock, msgs)?;
    }
    for (sock, msgs) in socks.iter().zip(p2) {
        send_batch(sock, msgs)?;
    }
    let build = t0.elapsed();
    let t1 = Instant::now();
    drop(socks);
    drop(spaces);
    Ok((build, t1.elapsed()))
}

/// The same topology with iproute2, inside a private mount namespace (so the named namespaces
/// `ip netns add` mounts never appear on the host). `batch`: `ip -batch` for the host-level
/// commands + one `ip -n NS -batch` per namespace; otherwise one `ip` process per operation.
fn shell_once(shape: Shape, n: usize, batch: bool, dir: &Path) -> Result<(Duration, Duration)> {
    let tag = format!("vb{}", std::process::id());
    let ns = |i: usize| format!("{tag}-{i}");
    let mut host = Vec::new();
    let mut per_ns: Vec<Vec<String>> = vec![Vec::new(); n + 1];
    let mut del = Vec::new();
    for (i, cmds) in per_ns.iter_mut().enumerate().take(n) {
        host.push(format!("netns add {}", ns(i)));
        cmds.push("link set lo up".into());
        del.push(format!("netns del {}", ns(i)));
    }
    match shape {
        Shape::Chain => {
            for i in 0..n.saturating_sub(1) {
                let (a, b) = addr_pair(i);
                host.push(format!("link add eth1 netns {} type veth peer name eth0 netns {}", ns(i), ns(i + 1)));
                per_ns[i].push(format!("addr add {a}/30 dev eth1"));
                per_ns[i].push("link set eth1 up".into());
                per_ns[i + 1].push(format!("addr add {b}/30 dev eth0"));
                per_ns[i + 1].push("link set eth0 up".into());
            }
        }
        Shape::Star => {
            let sw = ns(n);
            host.push(format!("netns add {sw}"));
            del.push(format!("netns del {sw}"));
            per_ns[n].push("link add br0 type bridge".into());
            per_ns[n].push("link set br0 up".into());
            for i in 0..n {
                host.push(format!("link add p{i} netns {sw} type veth peer name eth0 netns {}", ns(i)));
                per_ns[n].push(format!("link set p{i} master br0 up"));
                per_ns[i].push(format!("addr add 10.{}.{}.{}/8 dev eth0", (i + 1) / 65536, ((i + 1) / 256) % 256, (i + 1) % 256));
                per_ns[i].push("link set eth0 up".into());
            }
        }
    }
    // A shell script that prints three nanosecond timestamps: start, built, torn down.
    let mut script = String::from("set -e\nmount -t tmpfs tmpfs /run\nt0=$(date +%s%N)\n");
    let write = |name: &str, lines: &[String]| -> Result<String> {
        let p = dir.join(name);
        std::fs::write(&p, lines.join("\n") + "\n")?;
        Ok(p.to_string_lossy().into_owned())
    };
    if batch {
        let _ = writeln!(script, "ip -batch {}", write("host.batch", &host)?);
        for (i, lines) in per_ns.iter().enumerate() {
            if !lines.is_empty() {
                let _ = writeln!(script, "ip -n {} -batch {}", ns(i), write(&format!("ns{i}.batch"), lines)?);
            }
        }
        let _ = writeln!(script, "t1=$(date +%s%N)\nip -batch {}", write("del.batch", &del)?);
    } else {
        for l in &host {
            let _ = writeln!(script, "ip {l}");
        }
        for (i, lines) in per_ns.iter().enumerate() {
            for l in lines {
                let _ = writeln!(script, "ip -n {} {l}", ns(i));
            }
        }
        script.push_str("t1=$(date +%s%N)\n");
        for l in &del {
            let _ = writeln!(script, "ip {l}");
        }
    }
    script.push_str("t2=$(date +%s%N)\necho $t0 $t1 $t2\n");
    let out = Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().context("unshare")?;
    if !out.status.success() {
        bail!("shell topology failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let t: Vec<u64> = String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if t.len() != 3 {
        bail!("bad timestamps from the shell run: {:?}", String::from_utf8_lossy(&out.stdout));
    }
    Ok((Duration::from_nanos(t[1] - t[0]), Duration::from_nanos(t[2] - t[1])))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores ({cpu}), kernel {}", kernel.trim())
}

/// Runs the benchmarks (`reps` repetitions each) and writes the report to `out`.
/// Runs every scenario of `labs` once with `threads` workers.
fn run_pool(labs: &[model::Lab], threads: usize) -> Result<()> {
    let jobs: Vec<(&model::Lab, &str)> = labs.iter().flat_map(|l| l.scenarios.iter().map(move |s| (l, s.name.as_str()))).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some((lab, name)) = jobs.get(i) else { break };
                let backend = crate::backend::choose(lab).unwrap_or(crate::backend::Backend::Native);
                match crate::backend::run(lab, name, &Options::default(), backend) {
                    Ok(r) if r.failure.is_none() => {}
                    Ok(r) => failures.lock().unwrap().push(format!("{}::{name}: {}", lab.id, r.failure.unwrap_or_default())),
                    Err(e) => failures.lock().unwrap().push(format!("{}::{name}: {e:#}", lab.id)),
                }
            });
        }
    });
    let f = failures.into_inner().unwrap();
    if !f.is_empty() {
        bail!("scenarios failed during the suite benchmark:\n{}", f.join("\n"));
    }
    Ok(())
}

/// Runs the benchmarks (`reps` repetitions each) and writes the report to `out`. `labs` are
/// timed one scenario at a time; `suite` (when not empty) is run whole with 1 and 2 threads.
pub fn run(
    sizes: &[usize],
    reps: usize,
    labs: &[model::Lab],
    compare_backends: bool,
    suite: &[model::Lab],
    out: Option<&Path>,
) -> Result<String> {
    crate::env::require_root()?;
    let tmp = tempfile::tempdir()?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# vpnlab benchmarks\n\nMeasured by `vpnlab bench` on {} ({}), {reps} repetitions, min / median / max in ms.\n",
        machine(),
        time_now()
    );
    let _ = writeln!(md, "## Topology build and teardown\n\nEvery node gets its namespace, loopback up, interfaces with an address, links up. `ip -batch` = one `ip -batch` for namespaces and veths plus one `ip -n NS -batch` per namespace; `ip per op` = one `ip` process per operation (a plain shell script). The shell variants run in a private mount namespace so their named namespaces never reach the host.\n");
    let _ = writeln!(md, "`raw floor` = the same netlink operations sent raw: one socket per namespace, all of a namespace's operations in one batched send (indices chosen up front), two phases (links, then addresses). Teardown is the time until the last fd is closed; the kernel frees namespaces asynchronously after that, for all variants alike.\n");
    let _ = writeln!(md, "| shape | N | vpnlab build | raw floor build | ip -batch build | ip per op build | vpnlab / ip -batch | vpnlab / floor | vpnlab teardown | ip -batch teardown |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for shape in [Shape::Chain, Shape::Star] {
        for &n in sizes {
            let src = topology_lab(shape, n);
            let lab = model::parse(&tmp.path().join("lab.toml"), &src).map_err(anyhow::Error::from)?;
            let (mut vb, mut vt, mut bb, mut bt, mut pb, mut rb) = (vec![], vec![], vec![], vec![], vec![], vec![]);
            for _ in 0..reps {
                rb.push(raw_once(shape, n)?.0);
                let (b, t) = vpnlab_once(&lab)?;
                vb.push(b);
                vt.push(t);
                let (b, t) = shell_once(shape, n, true, tmp.path())?;
                bb.push(b);
                bt.push(t);
                if n <= 50 {
                    pb.push(shell_once(shape, n, false, tmp.path())?.0);
                }
            }
            let (v, b, r) = (stats(vb.clone()), stats(bb.clone()), stats(rb));
            let ratio = v.1.as_secs_f64() / b.1.as_secs_f64();
            let floor = v.1.as_secs_f64() / r.1.as_secs_f64();
            let per_op = if pb.is_empty() { "(skipped)".to_string() } else { fmt3(stats(pb)) };
            let line = format!(
                "| {} | {n} | {} | {} | {} | {per_op} | {ratio:.2}x | {floor:.2}x | {} | {} |",
                shape.name(),
                fmt3(v),
                fmt3(r),
                fmt3(b),
                fmt3(stats(vt)),
                fmt3(stats(bt))
            );
            eprintln!("{line}");
            let _ = writeln!(md, "{line}");
        }
    }
    if !labs.is_empty() {
        let _ = writeln!(md, "\n## Labs\n\nWall time of one scenario: build (namespaces, topology, files, PKI, firewall), daemons (start until ready), steps, teardown. A lab runs on the backend it needs (`uml` for kernel features this host lacks); `--backends` also runs native labs in UML to compare the two. With `uml`, total includes booting the guest; the phases are measured inside it.\n");
        let _ = writeln!(md, "| scenario | backend | total | build | daemons | steps | teardown |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        // Each scenario's median total, per backend (the median over them is the figure issue 16
        // sets for user-mode-linux).
        let mut medians: Vec<(crate::backend::Backend, Duration)> = Vec::new();
        for lab in labs {
            let native = crate::backend::choose(lab).map_err(|e| anyhow::anyhow!(e))?;
            let mut backends = vec![native];
            if compare_backends && native == crate::backend::Backend::Native && crate::backend::uml_usable() {
                backends.push(crate::backend::Backend::Uml);
            }
            for sc in &lab.scenarios {
                for &backend in &backends {
                    let mut tot = vec![];
                    let mut ph: [Vec<Duration>; 4] = Default::default();
                    let mut failed = None;
                    for _ in 0..reps {
                        let t = Instant::now();
                        let r = crate::backend::run(lab, &sc.name, &Options::default(), backend)?;
                        tot.push(t.elapsed());
                        if let Some(f) = &r.failure {
                            if backend == native {
                                bail!("{}::{} failed during the benchmark: {f}", lab.id, sc.name);
                            }
                            failed = Some(f.lines().next().unwrap_or("").to_string());
                            break;
                        }
                        for (i, d) in [r.timings.build, r.timings.daemons, r.timings.steps, r.timings.teardown].into_iter().enumerate() {
                            ph[i].push(d);
                        }
                    }
                    if let Some(f) = failed {
                        let line = format!(
                            "| {}::{} | {} | does not run there: {} | | | | |",
                            lab.id,
                            sc.name,
                            backend.name(),
                            f.replace('|', "/")
                        );
                        eprintln!("{line}");
                        let _ = writeln!(md, "{line}");
                        continue;
                    }
                    let [b, d, s, t] = ph;
                    medians.push((backend, stats(tot.clone()).1));
                    let line = format!(
                        "| {}::{} | {} | {} | {} | {} | {} | {} |",
                        lab.id,
                        sc.name,
                        backend.name(),
                        fmt3(stats(tot)),
                        ms(stats(b).1),
                        ms(stats(d).1),
                        ms(stats(s).1),
                        ms(stats(t).1)
                    );
                    eprintln!("{line}");
                    let _ = writeln!(md, "{line}");
                }
            }
        }
        let _ = writeln!(md, "\n(phase columns are medians)");
        for backend in [crate::backend::Backend::Native, crate::backend::Backend::Uml] {
            let m: Vec<Duration> = medians.iter().filter(|(b, _)| *b == backend).map(|(_, d)| *d).collect();
            if !m.is_empty() {
                let n = m.len();
                let line = format!("\nMedian over the {n} scenarios' median totals, {}: {} ms", backend.name(), ms(median(m)));
                eprintln!("{}", line.trim());
                let _ = writeln!(md, "{line}");
            }
        }
    }
    if let Some(lab) = labs.iter().find(|l| l.id == script::LAB) {
        md.push_str(&script::sections(lab, reps)?);
    }
    if !suite.is_empty() {
        let _ = writeln!(md, "\n## The whole suite\n\nEvery scenario of every lab ({} scenarios), run once each by a pool of worker threads (like `cargo test --test labs -- --test-threads N`).\n", suite.iter().map(|l| l.scenarios.len()).sum::<usize>());
        let _ = writeln!(md, "| threads | wall |");
        let _ = writeln!(md, "|---|---|");
        for threads in [1usize, 2] {
            let t = Instant::now();
            run_pool(suite, threads)?;
            let line = format!("| {threads} | {:.1} s |", t.elapsed().as_secs_f64());
            eprintln!("{line}");
            let _ = writeln!(md, "{line}");
        }
    }
    if let Some(p) = out {
        // A hand-written `## Analysis` section of an earlier report is kept.
        let old = std::fs::read_to_string(p).unwrap_or_default();
        let mut text = md.clone();
        if let Some(i) = old.find("\n## Analysis") {
            text.push_str(&old[i..]);
        }
        std::fs::write(p, text)?;
    }
    Ok(md)
}

fn time_now() -> String {
    let out = Command::new("date").arg("-u").arg("+%Y-%m-%d").output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::median;
    use std::time::Duration;

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = |v: &[u64]| v.iter().map(|&x| Duration::from_millis(x)).collect::<Vec<_>>();
        assert_eq!(median(ms(&[3, 1, 2])), Duration::from_millis(2));
        assert_eq!(median(ms(&[4, 1, 3, 2])), Duration::from_micros(2500));
    }
}
