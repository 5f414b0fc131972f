//! ns_per_packet.svg: two plots against policy size, drawn by hand (a few lines, a
//! few circles: no plotting crate needed for that).

use std::fmt::Write as _;

use super::{markdown::fmt, stats::Results};

/// One line of a plot: name, colour, (size index, value) points.
type Series = (String, &'static str, Vec<(usize, f64)>);

/// ns/packet against policy size: test_run cost of our programs (left) and flood cost
/// per dropped packet, 1e9 / drops per second (right), for us and the peers.
pub fn svg(r: &Results) -> String {
    let sizes = ["10", "100", "1000", "full"];
    let tr_key = |size: &str, path: &str| {
        if size == "10" {
            format!("M1.{path}.ns")
        } else {
            format!("M2.{size}.{path}.ns")
        }
    };
    let mut left: Vec<Series> = Vec::new();
    for (path, color) in [
        ("xdp.v4.tcp.allow", "#1f77b4"),
        ("xdp.v4.udp.deny", "#aec7e8"),
        ("ingress.v4.tcp.allow", "#2ca02c"),
        ("egress.v4.udp.deny", "#98df8a"),
    ] {
        let pts = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| (i, r.med(&tr_key(s, path))))
            .filter(|p| p.1.is_finite())
            .collect();
        left.push((format!("ours {path}"), color, pts));
    }
    for (path, color) in [("v4.tcp.allow", "#d62728"), ("v4.udp.deny", "#ff9896")] {
        let v = r.med(&format!("M3.{path}.xdp_filter.ns"));
        left.push((
            format!("xdp-filter {path} (1000 ports)"),
            color,
            vec![(2, v)],
        ));
    }
    let noop = r.med("M1.noop.xdp.v4.tcp.in.ns");
    left.push((
        "no-op XDP".to_owned(),
        "#7f7f7f",
        (0..4).map(|i| (i, noop)).collect(),
    ));
    let mut right: Vec<Series> = Vec::new();
    for (fig, name, label, color) in [
        ("S1", "ours_xdp", "ours XDP", "#1f77b4"),
        ("S1", "nft_netdev_set", "nft netdev set", "#ff7f0e"),
        ("S1", "nft_netdev_linear", "nft netdev linear", "#d62728"),
        ("S2", "ours_cgroup_skb", "ours cgroup_skb", "#2ca02c"),
        ("S2", "nft_inet_set", "nft inet set", "#bcbd22"),
        ("S2", "nft_inet_linear", "nft inet linear", "#8c564b"),
    ] {
        let pts = sizes[..3]
            .iter()
            .enumerate()
            .map(|(i, s)| (i, 1e9 / r.med(&format!("{fig}.{s}.{name}.pps"))))
            .filter(|p| p.1.is_finite())
            .collect();
        right.push((label.to_owned(), color, pts));
    }
    let mut s = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1000\" height=\"460\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"1000\" height=\"460\" fill=\"white\"/>\n",
    );
    panel(
        &mut s,
        60.0,
        "BPF_PROG_TEST_RUN: ns per packet (median)",
        &sizes,
        &left,
    );
    panel(
        &mut s,
        560.0,
        "UDP flood: ns per dropped packet (1e9 / drops per s)",
        &sizes[..3],
        &right,
    );
    s.push_str("</svg>\n");
    s
}

/// One plot at `x0`: frame, grid, size labels, a line and dots per series, legend.
fn panel(s: &mut String, x0: f64, title: &str, sizes: &[&str], series: &[Series]) {
    let (w, h, y0) = (380.0, 260.0, 40.0);
    let max = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|q| q.1))
        .fold(0.0f64, f64::max)
        * 1.15;
    let max = if max > 0.0 { max } else { 1.0 };
    let x = |i: usize| x0 + w * (i as f64 + 0.5) / sizes.len() as f64;
    let y = |v: f64| y0 + h - h * v / max;
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"22\" font-size=\"13\" font-weight=\"bold\">{title}</text>",
        x0
    );
    let _ = writeln!(
        s,
        "<rect x=\"{x0}\" y=\"{y0}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#444\"/>"
    );
    for t in 0..=4 {
        let v = max * t as f64 / 4.0;
        let (x1, yv, tx, ty, label) = (x0 + w, y(v), x0 - 4.0, y(v) + 4.0, fmt(v));
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>"
        );
    }
    for (i, label) in sizes.iter().enumerate() {
        let text = if *label == "full" {
            "full range".to_owned()
        } else {
            format!("{label} rules")
        };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{text}</text>",
            x(i),
            y0 + h + 16.0
        );
    }
    for (n, (name, color, pts)) in series.iter().enumerate() {
        if pts.len() > 1 {
            let d: Vec<String> = pts
                .iter()
                .map(|(i, v)| format!("{:.1},{:.1}", x(*i), y(*v)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                d.join(" ")
            );
        }
        for (i, v) in pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"/>",
                x(*i),
                y(*v)
            );
        }
        let ly = y0 + h + 34.0 + 15.0 * n as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{x0}\" y=\"{:.1}\" width=\"12\" height=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{:.1}\">{name}</text>",
            ly - 4.0,
            x0 + 18.0,
            ly
        );
    }
}
