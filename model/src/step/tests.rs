//! Tests of the one-line step syntax.

use super::*;

struct N;
impl Names for N {
    fn node(&self, n: &str) -> Option<usize> {
        ["client", "gateway"].iter().position(|x| *x == n)
    }
    fn service(&self, n: &str) -> Option<usize> {
        ["server", "client"].iter().position(|x| *x == n)
    }
    fn node_names(&self) -> String {
        "client, gateway".into()
    }
    fn service_names(&self) -> String {
        "server, client".into()
    }
}

#[test]
fn ping_steps() {
    match parse_step("client: ping 10.198.0.1 -> unreachable", &N).unwrap() {
        Action::Ping { node: 0, dest, count: 2, expect: PingExpect::Unreachable, src: None, size: None } => {
            assert_eq!(dest.to_string(), "10.198.0.1")
        }
        a => panic!("{a:?}"),
    }
    match parse_step("client: ping -c 50 -I 10.198.0.10 10.200.0.1 -> loss 5%..20%", &N).unwrap() {
        Action::Ping { count: 50, expect: PingExpect::Loss(5, 20), src: Some(_), .. } => {}
        a => panic!("{a:?}"),
    }
    let e = parse_step("client: ping 10.198.0.1 -> maybe", &N).unwrap_err();
    assert_eq!(e.offset, 26);
}

#[test]
fn unknown_node_and_service_are_located() {
    let e = parse_step("clinet: ping 10.0.0.1", &N).unwrap_err();
    assert_eq!(e.offset, 0);
    assert!(e.msg.contains("unknown node `clinet`") && e.msg.contains("client, gateway"), "{}", e.msg);
    let e = parse_step("restart sever", &N).unwrap_err();
    assert_eq!(e.offset, 8);
    assert!(e.msg.contains("unknown service"));
}

#[test]
fn route_steps_shift_offsets() {
    assert!(matches!(parse_step("gateway: ip route add 10.200.0.0/24 via 10.198.0.10", &N).unwrap(), Action::RouteAdd { node: 1, .. }));
    let e = parse_step("gateway: ip route add 10.200.0.0/24 via 10.198.0.x", &N).unwrap_err();
    assert_eq!(e.offset, 40, "{e:?}");
}

#[test]
fn ipv6_steps() {
    match parse_step("client: ping 2001:db8:198::12 -> unreachable", &N).unwrap() {
        Action::Ping { dest, expect: PingExpect::Unreachable, .. } => assert!(dest.is_ipv6()),
        a => panic!("{a:?}"),
    }
    assert!(parse_step("client: ping -I 2001:db8:200::1000 2001:db8:198::12", &N).is_ok());
    assert!(parse_step("client: ping -I tun0 2001:db8:198::12", &N).is_ok());
    let e = parse_step("client: ping -I 10.200.0.2 2001:db8:198::12", &N).unwrap_err();
    assert_eq!(e.offset, 16);
    assert!(e.msg.contains("`-I 10.200.0.2` is an IPv4 address but 2001:db8:198::12 is IPv6"), "{}", e.msg);
    let e = parse_step("client: ping 2001:db8:198::x", &N).unwrap_err();
    assert_eq!(e.offset, 13);
    match parse_step("gateway: ip route add 2001:db8:200::/64 via 2001:db8:198::10", &N).unwrap() {
        Action::RouteAdd { node: 1, route } => assert!(route.v6),
        a => panic!("{a:?}"),
    }
    let e = parse_step("gateway: ip route add 2001:db8:200::/64 via 10.198.0.10", &N).unwrap_err();
    assert_eq!(e.offset, 44, "{e:?}");
    assert!(matches!(parse_step("gateway: ip rule add -6 from all priority 50 table 100", &N).unwrap(), Action::RuleAdd { .. }));
    assert!(matches!(parse_step("client: trace 2001:db8:198::12 -> dropped at gateway", &N).unwrap(), Action::Trace { .. }));
    assert!(matches!(parse_step("client: tcp [2001:db8:198::12]:80 -> open", &N).unwrap(), Action::Tcp { .. }));
}

#[test]
fn log_steps() {
    match parse_step("log server 'MULTI: bad source address from client [192.168.4.66]' within 3s", &N).unwrap() {
        Action::Log { service: 0, pattern, within, scope: LogScope::SinceChange } => {
            assert!(pattern.re.is_match("x MULTI: bad source address from client [192.168.4.66], packet dropped"));
            assert_eq!(within, Duration::from_secs(3));
        }
        a => panic!("{a:?}"),
    }
    match parse_step("nolog client /Incoming packet rejected/ for 500ms", &N).unwrap() {
        Action::NoLog { service: 1, watch: Some(d), .. } => assert_eq!(d, Duration::from_millis(500)),
        a => panic!("{a:?}"),
    }
    assert!(parse_step("log server /a(/", &N).unwrap_err().msg.contains("bad regex"));
    match parse_step("log server /internal route 192.168.4.0/24 -> client1/", &N).unwrap() {
        Action::Log { pattern, .. } => assert!(pattern.re.is_match("MULTI: internal route 192.168.4.0/24 -> client1/192.0.2.2")),
        a => panic!("{a:?}"),
    }
    assert!(parse_step("log server /x/ whenever", &N).unwrap_err().msg.contains("not understood"));
}

#[test]
fn misc_steps() {
    assert!(matches!(parse_step("gateway: chmod 700 ccd", &N).unwrap(), Action::Chmod { mode: 0o700, .. }));
    assert!(parse_step("gateway: chmod 700 /etc", &N).is_err());
    assert!(matches!(parse_step("gateway: sysctl net.ipv4.ip_forward=1", &N).unwrap(), Action::Sysctl { .. }));
    assert!(parse_step("gateway: sysctl kernel.panic=1", &N).unwrap_err().msg.contains("host"));
    assert!(matches!(parse_step("client: sh false -> fails", &N).unwrap(), Action::Sh { expect_fail: true, .. }));
    assert!(matches!(
        parse_step("client: tcp 10.0.0.1:5001 send 100KB within 3s -> stalls", &N).unwrap(),
        Action::Tcp { send: Some(100_000), expect: TcpExpect::Stalls, .. }
    ));
    assert!(parse_step("client: frobnicate", &N).unwrap_err().msg.contains("unknown step"));
}

#[test]
fn impair_steps() {
    match parse_step("gateway: impair eth0 reorder every 10 hold 3 udp", &N).unwrap() {
        Action::Impair {
            node: 1,
            ifname,
            spec:
                Some((crate::impair::Impairment::Reorder { every: 10, hold: 3 }, Some(crate::impair::Proto::Udp), crate::impair::Family::Ipv4)),
            ..
        } => assert_eq!(ifname, "eth0"),
        a => panic!("{a:?}"),
    }
    assert!(matches!(parse_step("gateway: impair eth0 off", &N).unwrap(), Action::Impair { spec: None, .. }));
    let e = parse_step("gateway: impair eth0 drop every 1", &N).unwrap_err();
    assert!(e.offset > 20, "{e:?}");
    match parse_step("gateway: impair eth0 ipv6 drop every 3 icmp", &N).unwrap() {
        Action::Impair { spec: Some((_, Some(crate::impair::Proto::Icmp), crate::impair::Family::Ipv6)), .. } => {}
        a => panic!("{a:?}"),
    }
    let e = parse_step("gateway: impair eth0 ipv6 drop every 1", &N).unwrap_err();
    assert_eq!(e.offset, 37, "{e:?}");
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_size("64KiB"), Some(65536));
    assert_eq!(parse_size("1MB"), Some(1_000_000));
}

#[test]
fn capture_steps() {
    match parse_step("gateway: capture eth0 4 'udp port 500 or udp port 4500' within 3s -> 4 packets", &N).unwrap() {
        Action::Capture { node: 1, ifname, count: 4, filter: Some(f), within, expect: Some(4) } => {
            assert_eq!((ifname.as_str(), f.as_str(), within), ("eth0", "udp port 500 or udp port 4500", Duration::from_secs(3)))
        }
        a => panic!("{a:?}"),
    }
    match parse_step("gateway: capture any 2 -> none", &N).unwrap() {
        Action::Capture { filter: None, expect: Some(0), within, .. } => assert_eq!(within, Duration::from_secs(5)),
        a => panic!("{a:?}"),
    }
    assert!(matches!(parse_step("client: capture eth0 1 'esp'", &N).unwrap(), Action::Capture { expect: None, .. }));
    let bad = |s: &str, at: usize, what: &str| {
        let e = parse_step(s, &N).unwrap_err();
        assert_eq!(e.offset, at, "{s}: {}", e.msg);
        assert!(e.msg.contains(what), "{s}: {}", e.msg);
    };
    bad("client: capture", 8, "capture IF N");
    bad("client: capture eth0", 16, "packet count is missing");
    bad("client: capture eth0 0 'esp'", 21, "1..100");
    bad("client: capture eth0 4 udp port 500", 23, "quote the filter");
    bad("client: capture eth0 4 'udp port 500", 23, "closing");
    bad("client: capture eth0 4 'esp' within 5", 36, "duration");
    bad("client: capture eth0 4 'esp' -> 5 packets", 31, "cannot see 5");
    bad("client: capture eth0 4 'esp' -> some", 31, "`N packets` or `none`");
    assert_eq!(capture_shown("eth0", 4, Some("udp port 500")), "tcpdump -ni eth0 -c 4 'udp port 500'");
}

#[test]
fn tty_runs_a_command_under_a_terminal_and_takes_no_expectation() {
    assert!(
        matches!(parse_step("client: tty ipsec auto --add x", &N).unwrap(), Action::Show { tty: true, ref cmd, .. } if cmd == "ipsec auto --add x")
    );
    assert!(matches!(parse_step("client: show ls", &N).unwrap(), Action::Show { tty: false, .. }));
    assert!(parse_step("client: tty", &N).unwrap_err().msg.contains("`tty` wants a command"));
    assert!(parse_step("client: tty ls -> fails", &N).unwrap_err().msg.contains("takes no"));
}
