#!/usr/bin/python3
"""bench/report's second half: draws the plots and writes the tables of docs/performance.md from
the results the comparison scripts recorded (BENCH_OUT), with nothing measured here.

    report_render.py DATA_DIR DOC IMG_DIR

DATA_DIR holds one folder per comparison (tcp, dpdk, nbd, sweep, rdma, drbd), each with a
`results` file of KEY=VALUE lines (the script's figures, then bench/report's meta.* lines: date,
commit, rounds, load) and the sample files some scripts keep. A comparison without a folder is
left as it is in DOC and in IMG_DIR.

In DOC, every block between `<!-- report:NAME begin -->` and `<!-- report:NAME end -->` is
replaced by what this writes for NAME; the text around the markers is not touched. The PNGs go to
IMG_DIR, named in the blocks relative to DOC.
"""
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

BLUE = "#1f77b4"    # blkmirror
GREY = "#8c8c8c"    # the tools it is compared with
ORANGE = "#ff7f0e"  # a second blkmirror series


def load(data_dir, name):
    """The KEY=VALUE pairs of DATA_DIR/NAME/results (the last of a repeated key wins), or None."""
    path = os.path.join(data_dir, name, "results")
    if not os.path.exists(path):
        return None
    out = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
    return out


def num(r, key):
    v = r.get(key)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{digits}f}"


def rounds_of(r, key):
    """The per-round values of KEY (round.N.KEY), in round order."""
    vals = []
    n = 1
    while f"round.{n}.{key}" in r:
        vals.append(num(r, f"round.{n}.{key}"))
        n += 1
    return vals


def spread(r, key, digits=2):
    vals = [v for v in rounds_of(r, key) if v is not None]
    if len(vals) < 2:
        return "1 round"
    return f"{fmt(min(vals), digits)}–{fmt(max(vals), digits)}"


def run_line(r):
    """One line naming the run the figures come from."""
    quick = ", `--quick`" if r.get("meta.quick") == "yes" else ""
    n = r.get("meta.rounds", "?")
    rounds = "1 round" if n == "1" else f"{n} rounds, medians"
    return (f"Run of {r.get('meta.date', '?')} at {r.get('meta.commit', '?')} "
            f"(`bench/report`{quick}; {rounds}; load average "
            f"{r.get('meta.load_before', '?')} before it, {r.get('meta.load_after', '?')} after):")


def met(value, target, op):
    if value is None:
        return "n/a"
    ok = value >= target if op == ">=" else value <= target
    return "yes" if ok else "**no**"


# --- tables ------------------------------------------------------------------------------------

def tcp_table(r):
    rows = [("iperf3, one stream", "iperf3_GBps"),
            ("nc pipe, existing target", "nc_GBps"),
            ("**blkmirror push, existing target, durable**", "blkmirror_GBps"),
            ("blkmirror push, engine's own rate (same pushes)", "blkmirror_engine_GBps"),
            ("blkmirror push with `--tcp-zerocopy` (SENDMSG_ZC)", "blkmirror_zerocopy_GBps"),
            ("nc pipe, fresh target", "fresh_target_nc_GBps"),
            ("blkmirror push, fresh target", "fresh_target_blkmirror_GBps")]
    out = [run_line(r), "", "| | GB/s | rounds |", "|---|---|---|"]
    for label, key in rows:
        v = fmt(num(r, key + "_median"))
        if label.startswith("**"):
            v = f"**{v}**"
        out.append(f"| {label} | {v} | {spread(r, key)} |")
    out += ["", f"`ratio_vs_iperf3={r.get('ratio_vs_iperf3')}`, `ratio_vs_nc={r.get('ratio_vs_nc')}`, "
                f"`fresh_target_ratio_vs_nc={r.get('fresh_target_ratio_vs_nc')}`."]
    return out


def tcp_latency_table(r, img):
    out = [f"Same run ({r.get('meta.date', '?')}):", "",
           "| 4 KiB, one at a time | p50 µs | p99 µs |", "|---|---|---|",
           f"| blkmirror push, window 1, durable ack | {fmt(num(r, 'latency_4k_durable_p50_us'), 1)} | "
           f"{fmt(num(r, 'latency_4k_durable_p99_us'), 1)} |",
           f"| bare TCP ping-pong (`bench/tcp_pingpong`) | {fmt(num(r, 'tcp_pingpong_4k_p50_us'), 1)} | "
           f"{fmt(num(r, 'tcp_pingpong_4k_p99_us'), 1)} |"]
    if img:
        out += ["", f"![4 KiB ack latency CDF against the TCP ping-pong]({img})"]
    return out


def dpdk_table(r):
    n = len(rounds_of(r, "tcp_GBps"))
    head = "| | " + " | ".join(f"round {i}" for i in range(1, n + 1)) + " | median |"
    out = [run_line(r), "", head, "|---|" + "---|" * (n + 1)]

    def row(label, key, median_key, digits=3, bold=False):
        vals = " | ".join(fmt(v, digits) for v in rounds_of(r, key))
        m = fmt(num(r, median_key), digits) if median_key else ""
        if bold and m:
            m = f"**{m}**"
        out.append(f"| {label} | {vals} | {m} |")

    row("TCP push, 127.0.0.1, GB/s", "tcp_GBps", "tcp_push_GBps_median", bold=True)
    row("DPDK push over memif, GB/s", "memif_GBps", "memif_push_GBps_median", bold=True)
    row("raw memif (`memif_probe`), GB/s", "raw_memif_GBps", "raw_memif_GBps_median", bold=True)
    row("TCP push, wall clock, GB/s", "tcp_wall_GBps", "tcp_push_wall_GBps_median")
    row("DPDK push, wall clock (EAL start included), GB/s", "memif_wall_GBps", "memif_push_wall_GBps_median")
    row("4 KiB w1 durable p50, TCP, µs", "lat_tcp_p50_us", "latency_4k_durable_p50_us_tcp", 1, True)
    row("4 KiB w1 durable p99, TCP, µs", "lat_tcp_p99_us", None, 0)
    row("4 KiB w1 durable p50, DPDK, µs", "lat_dpdk_p50_us", "latency_4k_durable_p50_us_dpdk", 1, True)
    row("4 KiB w1 durable p99, DPDK, µs", "lat_dpdk_p99_us", None, 0)
    row("veth af_packet (9014-byte packets), 0 % loss, GB/s", "lossy_0pct_GBps", "lossy_0pct_GBps_median", bold=True)
    row("veth af_packet, 1 % loss, GB/s", "lossy_1pct_GBps", "lossy_1pct_GBps_median", bold=True)
    row("CPU s per GiB, push + serve, TCP", "cpu_s_per_gib_tcp", "cpu_s_per_gib_tcp_median", 2)
    row("CPU s per GiB, push + serve, DPDK", "cpu_s_per_gib_dpdk", "cpu_s_per_gib_dpdk_median", 2)
    out += ["", "| ratio | target | measured | met? |", "|---|---|---|---|"]
    for key, label, target, op in (
            ("ratio_vs_tcp", "memif push / TCP push", 1.3, ">="),
            ("ratio_vs_memif", "memif push / raw memif", 0.7, ">="),
            ("latency_ratio_vs_tcp", "4 KiB p50, DPDK / TCP", 0.7, "<="),
            ("lossy_goodput_ratio", "1 % / 0 % loss", 0.8, ">=")):
        sym = "≥" if op == ">=" else "≤"
        out.append(f"| `{key}` ({label}) | {sym} {target} | {r.get(key)} | {met(num(r, key), target, op)} |")
    out += ["", f"`idle_serve_cpu_ticks_5s={r.get('idle_serve_cpu_ticks_5s')}`; EAL memory: push "
                f"{r.get('eal_memory_push')}, serve {r.get('eal_memory_serve')}."]
    return out


def nbd_table(r):
    g = lambda k, d=1: fmt(num(r, k), d)  # noqa: E731
    return [run_line(r), "",
            "| | nbdkit file | volume (1 replica, durable) | ratio |", "|---|---|---|---|",
            f"| 4 KiB random write QD1, p50 / p99 µs | {g('nbdkit_qd1_p50_us_median')} / "
            f"{g('nbdkit_qd1_p99_us_median', 0)} | {g('volume_qd1_p50_us_median')} / "
            f"{g('volume_qd1_p99_us_median', 0)} | |",
            f"| 4 KiB random write QD32, IOPS | {g('nbdkit_qd32_iops_median', 0)} | "
            f"{g('volume_qd32_iops_median', 0)} | {r.get('qd32_ratio_vs_nbdkit')} |",
            f"| 1 MiB sequential write QD8, GB/s | {g('nbdkit_seq_1m_GBps_median', 2)} | "
            f"{g('volume_seq_1m_GBps_median', 2)} | |",
            f"| `push` of a 1 GiB file to a replica (durable, 1 MiB blocks), GB/s | | "
            f"{g('push_GBps_median', 2)} | volume/push {r.get('seq_ratio_vs_push')} |",
            f"| bare TCP ping-pong 4 KiB, p50 µs | | {g('tcp_pingpong_4k_p50_us')} | |",
            "",
            f"QD1 budget (nbdkit p50 + ping-pong p50 + 30 µs): {r.get('qd1_p50_budget_us')} µs against "
            f"the volume's {g('volume_qd1_p50_us_median')} µs "
            f"({met(num(r, 'volume_qd1_p50_us_median'), num(r, 'qd1_p50_budget_us') or 0, '<=')}); "
            f"`qd32_ratio_vs_nbdkit={r.get('qd32_ratio_vs_nbdkit')}` (target ≥ 0.6), "
            f"`seq_ratio_vs_push={r.get('seq_ratio_vs_push')}` (target ≥ 0.8)."]


def sweep_points(r):
    """{(block_bytes, window): (GB/s, p50 us)} from b<BYTES>_w<W>_GBps_median keys."""
    pts = {}
    for k in r:
        m = re.fullmatch(r"b(\d+)_w(\d+)_GBps_median", k)
        if m:
            bs, w = int(m.group(1)), int(m.group(2))
            pts[(bs, w)] = (num(r, k), num(r, f"b{bs}_w{w}_p50_us_median"))
    return pts


def sweep_errors(r, points):
    """[low], [high] error bar lengths: each point's rounds, min to max, around its median."""
    lo, hi = [], []
    for bs, w, median in points:
        vals = [v for v in rounds_of(r, f"b{bs}_w{w}_GBps") if v is not None] or [median]
        lo.append(max(median - min(vals), 0))
        hi.append(max(max(vals) - median, 0))
    return [lo, hi]


def size_label(b):
    return f"{b >> 20}M" if b >= 1 << 20 else f"{b >> 10}K"


def sweep_table(r, img):
    pts = sweep_points(r)
    out = [run_line(r) + f" {r.get('sweep_mib', '?')} MiB per point.", ""]
    sizes = sorted(bs for bs, w in pts if w == 32)
    out += ["| block size (window 32) | " + " | ".join(size_label(b) for b in sizes) + " |",
            "|---|" + "---|" * len(sizes),
            "| GB/s | " + " | ".join(fmt(pts[(b, 32)][0], 3) for b in sizes) + " |",
            "| ack p50, µs | " + " | ".join(fmt(pts[(b, 32)][1], 0) for b in sizes) + " |", ""]
    windows = sorted({w for _, w in pts})
    out += ["| window (blocks) | " + " | ".join(str(w) for w in windows) + " |",
            "|---|" + "---|" * len(windows)]
    for bs in sorted({b for b, w in pts if w != 32}):
        out.append(f"| GB/s, {size_label(bs)} blocks | " +
                   " | ".join(fmt(pts[(bs, w)][0], 3) if (bs, w) in pts else "" for w in windows) + " |")
    if img:
        out += ["", f"![Push throughput against block size and window]({img})"]
    return out


def rdma_table(r):
    n = len(rounds_of(r, "ib_write_bw_MBps"))
    out = [run_line(r), "",
           "| | " + " | ".join(f"round {i}" for i in range(1, n + 1)) + " | median |",
           "|---|" + "---|" * (n + 1)]
    for label, key, med in (("ib_write_bw, MB/s", "ib_write_bw_MBps", "ib_write_bw_MBps_median"),
                            ("blkmirror over RDMA, durable, MB/s", "blkmirror_rdma_MBps",
                             "blkmirror_rdma_MBps_median")):
        out.append(f"| {label} | " + " | ".join(fmt(v) for v in rounds_of(r, key)) +
                   f" | {fmt(num(r, med))} |")
    out += ["", "| 4 KiB | p50 µs | p99 µs |", "|---|---|---|",
            f"| blkmirror, window 1, durable ack (busy-polling) | {fmt(num(r, 'blkmirror_rdma_4k_durable_p50_us'), 0)} | "
            f"{fmt(num(r, 'blkmirror_rdma_4k_durable_p99_us'), 0)} |",
            f"| the same, sleeping on the channel (`_nospin`) | "
            f"{fmt(num(r, 'blkmirror_rdma_4k_durable_p50_us_nospin'), 0)} | |",
            f"| ib_write_lat (half a round trip) | {fmt(num(r, 'ib_write_lat_4k_p50_us'), 0)} | "
            f"{fmt(num(r, 'ib_write_lat_4k_p99_us'), 0)} |",
            "", f"`ratio_vs_ib_write_bw={r.get('ratio_vs_ib_write_bw')}`, "
                f"`ratio_vs_ib_write_lat_p50={r.get('ratio_vs_ib_write_lat_p50')}`, "
                f"`ratio_vs_ib_write_lat_p50_nospin={r.get('ratio_vs_ib_write_lat_p50_nospin')}`; idle "
                f"CPU %: serve {r.get('serve_idle_cpu_pct')}, serve in session "
                f"{r.get('serve_idle_session_cpu_pct')}, volume in session {r.get('volume_idle_session_cpu_pct')}."]
    return out


def drbd_table(r):
    g = lambda k, d=1: fmt(num(r, k), d)  # noqa: E731
    ms = lambda k: fmt(num(r, k) / 1000 if num(r, k) is not None else None, 1)  # noqa: E731
    return [run_line(r) + f" Ack level `{r.get('blkmirror_ack')}`; the wire's 4 KiB TCP ping-pong p50 "
                          f"{ms('wire_tcp_pingpong_4k_p50_us')} ms.", "",
            f"| | DRBD 8.4 protocol C | blkmirror volume ({r.get('blkmirror_ack')}) | ratio |",
            "|---|---|---|---|",
            f"| 4 KiB random write QD1, p50 / p99 | {ms('drbd_qd1_p50_us_median')} / {ms('drbd_qd1_p99_us_median')} ms | "
            f"{ms('blkmirror_qd1_p50_us_median')} / {ms('blkmirror_qd1_p99_us_median')} ms | "
            f"{r.get('qd1_p50_ratio_blkmirror_over_drbd')} (p50) |",
            f"| 4 KiB random write QD32, IOPS | {g('drbd_qd32_iops_median', 0)} | {g('blkmirror_qd32_iops_median', 0)} | "
            f"{r.get('qd32_iops_ratio_blkmirror_over_drbd')} |",
            f"| 1 MiB sequential write QD8, MB/s | {g('drbd_seq_1m_MBps_median')} | {g('blkmirror_seq_1m_MBps_median')} | "
            f"{r.get('seq_ratio_blkmirror_over_drbd')} |"]


def summary_table(d):
    """The targets of the issues, with what the data of this report says about each."""
    out = ["| comparison | target | measured | met? | run |", "|---|---|---|---|---|"]

    def row(name, what, target, value_text, ok):
        out.append(f"| {what} | {target} | {value_text} | {ok} | {d[name].get('meta.date', '?')} |")

    t, n, p, rd, db = (d.get(k) for k in ("tcp", "nbd", "dpdk", "rdma", "drbd"))
    if t:
        v = num(t, "ratio_vs_iperf3")
        row("tcp", "TCP push vs iperf3 (one stream, loopback)", "≥ 0.5×", f"{fmt(v)}×", met(v, 0.5, ">="))
        v = num(t, "ratio_vs_nc")
        row("tcp", "TCP push vs an `nc` pipe of the same file", "≥ 2×",
            f"{fmt(v)}× (existing target), {t.get('fresh_target_ratio_vs_nc')}× (fresh)", met(v, 2, ">="))
    if rd:
        v = num(rd, "ratio_vs_ib_write_bw")
        row("rdma", "RDMA push vs `ib_write_bw` (soft-RoCE lab)", "≥ 0.8×", f"{fmt(v)}×", met(v, 0.8, ">="))
    if n:
        v, budget = num(n, "volume_qd1_p50_us_median"), num(n, "qd1_p50_budget_us")
        row("nbd", "volume 4 KiB random write QD1 p50 vs `nbdkit file` p50 + TCP ping-pong p50 + 30 µs", "≤",
            f"{fmt(v, 1)} vs {fmt(budget, 1)} µs", met(v, budget or 0, "<="))
        v = num(n, "qd32_ratio_vs_nbdkit")
        row("nbd", "volume 4 KiB random write QD32 IOPS vs `nbdkit file`", "≥ 0.6×",
            f"{fmt(v)}× ({fmt(num(n, 'volume_qd32_iops_median'), 0)} vs {fmt(num(n, 'nbdkit_qd32_iops_median'), 0)})",
            met(v, 0.6, ">="))
        v = num(n, "seq_ratio_vs_push")
        row("nbd", "volume 1 MiB sequential write vs `push` of the same bytes", "≥ 0.8×",
            f"{fmt(v)}× ({fmt(num(n, 'volume_seq_1m_GBps_median'))} vs {fmt(num(n, 'push_GBps_median'))} GB/s)",
            met(v, 0.8, ">="))
    if db:
        q32, q1 = num(db, "qd32_iops_ratio_blkmirror_over_drbd"), num(db, "qd1_p50_ratio_blkmirror_over_drbd")
        ok = "yes" if q32 is not None and q1 is not None and q32 > 1 and q1 <= 1 else "**no**"
        row("drbd", f"volume vs DRBD 8.4 protocol C, two lab guests (`{db.get('blkmirror_ack')}`)",
            "beat at QD32, match at QD1", f"QD32 {fmt(q32)}×, QD1 p50 {fmt(q1)}× DRBD's", ok)
    if p:
        for key, what, target, op, detail in (
                ("ratio_vs_tcp", "DPDK push over memif vs TCP push on 127.0.0.1", 1.3, ">=",
                 f"{fmt(num(p, 'memif_push_GBps_median'))} vs {fmt(num(p, 'tcp_push_GBps_median'))} GB/s"),
                ("ratio_vs_memif", "DPDK push over memif vs raw memif (`memif_probe`)", 0.7, ">=",
                 f"{fmt(num(p, 'memif_push_GBps_median'))} vs {fmt(num(p, 'raw_memif_GBps_median'))} GB/s"),
                ("latency_ratio_vs_tcp", "DPDK 4 KiB window-1 durable p50 vs TCP's", 0.7, "<=",
                 f"{fmt(num(p, 'latency_4k_durable_p50_us_dpdk'), 1)} vs "
                 f"{fmt(num(p, 'latency_4k_durable_p50_us_tcp'), 1)} µs"),
                ("lossy_goodput_ratio", "DPDK goodput at 1 % packet loss vs 0 % (af_packet on a veth)", 0.8, ">=",
                 f"{fmt(num(p, 'lossy_1pct_GBps_median'))} vs {fmt(num(p, 'lossy_0pct_GBps_median'))} GB/s")):
            v = num(p, key)
            sym = "≥" if op == ">=" else "≤"
            row("dpdk", what, f"{sym} {target}×", f"{fmt(v)}× ({detail})", met(v, target, op))
    return out


# --- plots -------------------------------------------------------------------------------------

def style(ax, title, xlabel, ylabel):
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)


def plot_throughput(d, path):
    """Horizontal bars, GB/s, one per tool, grouped by comparison, each group captioned with how
    its script times the transfer."""
    groups = []  # (caption, [(label, GB/s, is_blkmirror)])
    t, p, n = d.get("tcp"), d.get("dpdk"), d.get("nbd")
    dates = sorted({r.get("meta.date", "?") for r in (t, p, n) if r})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    if len(dates) > 1 and dates[0][:10] == dates[-1][:10]:  # one day: its date once
        when = f"{dates[0].removesuffix(' UTC')} to {dates[-1][11:]}"
    if t:
        groups.append(("compare-tcp: 1 GiB, each command's wall clock (set-up included)", [
            ("iperf3, one stream", num(t, "iperf3_GBps_median"), False),
            ("nc pipe (existing target)", num(t, "nc_GBps_median"), False),
            ("blkmirror push, durable (existing target)", num(t, "blkmirror_GBps_median"), True),
            ("blkmirror push, --tcp-zerocopy", num(t, "blkmirror_zerocopy_GBps_median"), True),
            ("nc pipe (fresh target)", num(t, "fresh_target_nc_GBps_median"), False),
            ("blkmirror push (fresh target)", num(t, "fresh_target_blkmirror_GBps_median"), True)]))
    if p:
        groups.append(("compare-dpdk: the engine's rate, once connected (memif_probe: first to last frame)", [
            ("raw memif (memif_probe)", num(p, "raw_memif_GBps_median"), False),
            ("blkmirror push, DPDK memif", num(p, "memif_push_GBps_median"), True),
            ("blkmirror push, TCP 127.0.0.1", num(p, "tcp_push_GBps_median"), True),
            ("blkmirror push, DPDK af_packet veth", num(p, "lossy_0pct_GBps_median"), True),
            ("  the same at 1 % packet loss", num(p, "lossy_1pct_GBps_median"), True)]))
    if n:
        groups.append(("compare-nbd: fio's rate through NBD; push: its wall clock", [
            ("nbdkit file, 1 MiB seq. writes QD8", num(n, "nbdkit_seq_1m_GBps_median"), False),
            ("blkmirror volume, 1 MiB seq. writes QD8", num(n, "volume_seq_1m_GBps_median"), True),
            ("blkmirror push, 1 GiB", num(n, "push_GBps_median"), True)]))
    count = sum(len(bars) for _, bars in groups)
    fig, ax = plt.subplots(figsize=(9, 0.38 * count + 0.45 * len(groups) + 1.4))
    y = 0
    ticks, labels, top = [], [], max((v or 0) for _, bars in groups for _, v, _ in bars)
    for caption, bars in groups:
        y += 0.35
        ax.text(0.02 * top, y - 0.55, caption, fontsize=8, style="italic", va="center")
        y += 0.35
        for label, v, ours in bars:
            ax.barh(y, v or 0, color=BLUE if ours else GREY, height=0.75)
            if v is not None:
                ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
            ticks.append(y)
            labels.append(label)
            y += 1
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_ylim(y - 0.4, -0.6)
    ax.set_xlim(0, top * 1.15)
    style(ax, "Throughput per tool, medians (compare-tcp, compare-dpdk, compare-nbd)\n"
              f"2 vCPUs, loopback / memif / veth, tmpfs; runs of {when}",
          "GB/s (10^9 bytes per second)", "")
    ax.grid(True, axis="x", alpha=0.3)
    ax.grid(False, axis="y")
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=BLUE, label="blkmirror"), Patch(color=GREY, label="reference tool")],
              loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cdf_from_histogram(hist):
    """[(upper edge us, count)] -> (xs, ys), a step CDF."""
    total = sum(c for _, c in hist)
    xs, ys, seen = [], [], 0
    for edge, c in hist:
        seen += c
        xs.append(edge)
        ys.append(seen / total)
    return xs, ys


def plot_latency_cdf(data_dir, r, path):
    with open(os.path.join(data_dir, "tcp", "latency-4k-durable.json")) as f:
        push = json.load(f)
    with open(os.path.join(data_dir, "tcp", "pingpong-4k.samples")) as f:
        ping = sorted(float(x) for x in f if x.strip())
    fig, ax = plt.subplots(figsize=(8, 4.8))
    xs, ys = cdf_from_histogram(push["ack_latency_us"]["histogram"])
    n = sum(c for _, c in push["ack_latency_us"]["histogram"])
    lat = push["ack_latency_us"]
    ax.step(xs, ys, where="post", color=BLUE, lw=1.8,
            label=f"blkmirror push, 4 KiB, window 1, --ack durable ({n} writes; "
                  f"p50 {lat['p50']:.0f} µs, p99 {lat['p99']:.0f} µs)")
    py = [(i + 1) / len(ping) for i in range(len(ping))]
    q = lambda f: ping[int(f * (len(ping) - 1))]  # noqa: E731  (as tcp_pingpong's own quantiles)
    ax.step(ping, py, where="post", color=GREY, lw=1.8,
            label=f"bare TCP ping-pong, 4 KiB + 64-byte reply ({len(ping)} round trips; "
                  f"p50 {q(0.5):.0f} µs, p99 {q(0.99):.0f} µs)")
    for q, ls in ((0.5, ":"), (0.99, "--")):
        ax.axhline(q, color="black", lw=0.6, ls=ls)
        ax.text(min(ping[0], xs[0]), q, f" p{int(q * 100)}", va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    style(ax, "4 KiB synchronous write: ack latency CDF against the TCP round-trip floor\n"
              f"127.0.0.1, tmpfs target; compare-tcp run of {r.get('meta.date', '?')}",
          "latency, µs (log scale)", "fraction of writes at or below")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(r, path):
    pts = sweep_points(r)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    sizes = sorted(bs for bs, w in pts if w == 32)
    ys = [pts[(b, 32)][0] for b in sizes]
    a1.errorbar(sizes, ys, yerr=sweep_errors(r, [(b, 32, y) for b, y in zip(sizes, ys)]), fmt="o-",
                color=BLUE, capsize=3, label="window 32 (default); bars: the rounds' range")
    a1.set_xscale("log", base=2)
    a1.xaxis.set_major_locator(FixedLocator(sizes))
    a1.xaxis.set_major_formatter(FuncFormatter(lambda v, _: size_label(int(v))))
    a1.xaxis.set_minor_locator(NullLocator())
    a1.axvline(1 << 20, color="black", lw=0.6, ls=":")
    a1.text(1 << 20, 0.97, " default", fontsize=8, va="top", transform=a1.get_xaxis_transform())
    style(a1, "against block size (window 32)", "block size, bytes (log scale)", "GB/s (engine's rate)")
    a1.legend(loc="lower right", fontsize=8)
    for bs, color in ((65536, ORANGE), (1 << 20, BLUE)):
        ws = sorted(w for b, w in pts if b == bs)
        if ws:
            ys = [pts[(bs, w)][0] for w in ws]
            a2.errorbar(ws, ys, yerr=sweep_errors(r, [(bs, w, y) for w, y in zip(ws, ys)]), fmt="o-",
                        color=color, capsize=3, label=f"{size_label(bs)} blocks")
    windows = sorted({w for _, w in pts})
    a2.set_xscale("log", base=2)
    a2.xaxis.set_major_locator(FixedLocator(windows))
    a2.xaxis.set_major_formatter(FuncFormatter(lambda v, _: str(int(v))))
    a2.xaxis.set_minor_locator(NullLocator())
    a2.axvline(32, color="black", lw=0.6, ls=":")
    a2.text(32, 0.97, " default", fontsize=8, va="top", transform=a2.get_xaxis_transform())
    style(a2, "against window", "window, blocks in flight (log scale)", "")
    a2.legend(loc="lower right", fontsize=8)
    a1.set_ylim(bottom=0)
    fig.suptitle("blkmirror push over TCP, 127.0.0.1, --ack durable, tmpfs; "
                 f"{r.get('sweep_mib', '?')} MiB per point, median of {r.get('meta.rounds', '?')} round(s) each; "
                 f"run of {r.get('meta.date', '?')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the document ------------------------------------------------------------------------------

def replace_block(doc, name, lines):
    begin, end = f"<!-- report:{name} begin -->", f"<!-- report:{name} end -->"
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        sys.exit(f"report_render: no '{begin}' ... '{end}' in the document: add the markers where "
                 f"the {name} block goes")
    body = "\n".join([begin, "<!-- written by bench/report: edit the script, not this block -->", ""] +
                     lines + ["", end])
    return pattern.sub(lambda _: body, doc, count=1)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: report_render.py DATA_DIR DOC IMG_DIR")
    data_dir, doc_path, img_dir = sys.argv[1:]
    os.makedirs(img_dir, exist_ok=True)
    rel = os.path.relpath(img_dir, os.path.dirname(os.path.abspath(doc_path)))
    d = {n: r for n in ("tcp", "dpdk", "nbd", "sweep", "rdma", "drbd") if (r := load(data_dir, n))}
    with open(doc_path) as f:
        doc = f.read()
    written = []
    if d:
        doc = replace_block(doc, "summary", summary_table(d))
    if any(k in d for k in ("tcp", "dpdk", "nbd")):
        plot_throughput(d, os.path.join(img_dir, "throughput.png"))
        written.append("throughput.png")
        doc = replace_block(doc, "throughput", [f"![Throughput per tool]({rel}/throughput.png)"])
    if "tcp" in d:
        doc = replace_block(doc, "tcp", tcp_table(d["tcp"]))
        img = None
        if os.path.exists(os.path.join(data_dir, "tcp", "latency-4k-durable.json")):
            plot_latency_cdf(data_dir, d["tcp"], os.path.join(img_dir, "latency-cdf.png"))
            written.append("latency-cdf.png")
            img = f"{rel}/latency-cdf.png"
        doc = replace_block(doc, "tcp-latency", tcp_latency_table(d["tcp"], img))
    if "dpdk" in d:
        doc = replace_block(doc, "dpdk", dpdk_table(d["dpdk"]))
    if "nbd" in d:
        doc = replace_block(doc, "nbd", nbd_table(d["nbd"]))
    if "sweep" in d:
        plot_sweep(d["sweep"], os.path.join(img_dir, "sweep.png"))
        written.append("sweep.png")
        doc = replace_block(doc, "sweep", sweep_table(d["sweep"], f"{rel}/sweep.png"))
    if "rdma" in d:
        doc = replace_block(doc, "rdma", rdma_table(d["rdma"]))
    if "drbd" in d:
        doc = replace_block(doc, "drbd", drbd_table(d["drbd"]))
    with open(doc_path, "w") as f:
        f.write(doc)
    print(f"report_render: {doc_path}: blocks for {', '.join(sorted(d)) or 'nothing'}; "
          f"{img_dir}: {', '.join(written) or 'no plot'}")


if __name__ == "__main__":
    main()
