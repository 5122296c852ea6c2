//! `vgpuctl top`: a live table of the VMs and pools, redrawn in place every interval, until
//! `q`, Esc or Ctrl-C. The terminal is restored on every way out (return, error, panic).
//!
//! The drawing ([`render`]) is separate from the terminal and the socket, so that it is
//! tested on ratatui's `TestBackend`.

use crate::client::Client;
use crate::view::{self, PoolRow, Snapshot, VmRow};
use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;
use std::time::{Duration, Instant};

/// Everything one frame shows.
#[derive(Debug, Clone, Default)]
pub struct Screen {
    /// The first line: vgpud's backend and devices, the refresh interval.
    pub title: String,
    pub vms: Vec<VmRow>,
    pub pools: Vec<PoolRow>,
    /// Whether vgpud's stats carry a p99 latency (else the column is left out).
    pub p99: bool,
    /// The last refresh failed (the rows are the last good ones).
    pub error: Option<String>,
}

impl Screen {
    /// The screen for `cur`, with rates since `prev`.
    pub fn of(prev: Option<&Snapshot>, cur: &Snapshot, every: Duration) -> Self {
        let s = &cur.stats;
        let devices = s["devices"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let vms = view::vm_rows(prev, cur);
        let connected = vms.iter().filter(|v| v.state != "disconnected").count();
        Self {
            title: format!(
                "vgpud  backend {}  devices [{devices}]  VMs {connected}/{} connected  every {:.1}s",
                s["backend"].as_str().unwrap_or("?"),
                vms.len(),
                every.as_secs_f64()
            ),
            vms,
            pools: view::pool_rows(prev, cur),
            p99: view::has_p99(s),
            error: None,
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn state_style(state: &str) -> Style {
    match state {
        "ready" => Style::default().fg(Color::Green),
        "disconnected" => Style::default().fg(Color::DarkGray),
        "reset" => Style::default().fg(Color::Yellow),
        _ => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

/// Draws `s` on the whole frame.
pub fn render(f: &mut Frame, s: &Screen) {
    let pool_h = s.pools.len() as u16 + 3;
    let [title, vms, pools, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(pool_h),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(s.title.as_str()).style(Style::default().add_modifier(Modifier::BOLD)),
        title,
    );

    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut head = vec![
        "VM",
        "STATE",
        "POOL",
        "PRIO",
        "DEV",
        "MEM USED",
        "MEM QUOTA",
        "CMD/S",
        "DEV TIME",
    ];
    let mut widths = vec![
        Constraint::Length(16),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(11),
        Constraint::Length(11),
        Constraint::Length(10),
        Constraint::Length(9),
    ];
    if s.p99 {
        head.push("P99");
        widths.push(Constraint::Length(10));
    }
    let rows = s.vms.iter().map(|v| {
        let mut cells = vec![
            ratatui::widgets::Cell::from(v.name.clone()),
            ratatui::widgets::Cell::from(v.state.clone()).style(state_style(&v.state)),
            v.pool.clone().into(),
            v.priority.clone().into(),
            v.device.clone().into(),
            view::bytes(v.mem_used).into(),
            view::bytes(v.mem_quota).into(),
            view::opt(v.cmds_per_s, |r| format!("{r:.0}")).into(),
            view::opt(v.share, pct).into(),
        ];
        if s.p99 {
            cells.push(view::opt(v.p99_us, |us| format!("{us:.0} µs")).into());
        }
        Row::new(cells)
    });
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(head).style(bold))
            .block(Block::default().borders(Borders::TOP).title(" VMs ")),
        vms,
    );

    let pool_rows = s.pools.iter().map(|p| {
        Row::new(vec![
            p.name.clone(),
            p.weight.clone(),
            view::bytes(p.mem_used),
            p.mem_quota.map_or_else(|| "none".into(), view::bytes),
            view::opt(p.share, pct),
        ])
    });
    f.render_widget(
        Table::new(
            pool_rows,
            [
                Constraint::Length(16),
                Constraint::Length(8),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(9),
            ],
        )
        .header(Row::new(["POOL", "WEIGHT", "MEM USED", "MEM QUOTA", "DEV TIME"]).style(bold))
        .block(Block::default().borders(Borders::TOP).title(" Pools ")),
        pools,
    );

    let mut foot_text = String::from("q quit  ");
    match &s.error {
        Some(e) => foot_text += &format!("refresh failed: {e}"),
        None if !s.p99 => foot_text += "p99 latency: not in this vgpud's stats (column omitted)",
        None => {}
    }
    let foot_style = if s.error.is_some() {
        Style::default().fg(Color::Red)
    } else {
        Style::default().fg(Color::DarkGray)
    };
    f.render_widget(
        Paragraph::new(Line::from(foot_text)).style(foot_style),
        foot,
    );
}

/// Restores the terminal when dropped: on return, on error and on unwinding.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the live table on the terminal until the operator quits.
pub fn run(client: &Client, every: Duration) -> Result<()> {
    // Fails early, before the terminal is touched, when vgpud cannot be reached.
    let first = client.stats()?;
    // try_init also installs a panic hook that restores the terminal before the message.
    let mut term = ratatui::try_init().context("setting up the terminal")?;
    let _restore = Restore;
    let mut cur = Snapshot {
        at: Instant::now(),
        stats: first,
    };
    let mut screen = Screen::of(None, &cur, every);
    let mut next = Instant::now() + every;
    loop {
        term.draw(|f| render(f, &screen))
            .context("drawing the table")?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait).context("reading the terminal")? {
            if let Event::Key(k) = event::read().context("reading the terminal")? {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if k.kind == KeyEventKind::Press
                    && (ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc))
                {
                    return Ok(());
                }
            }
            // Any other event (a resize) only redraws.
            continue;
        }
        next = Instant::now() + every;
        match client.stats() {
            Ok(stats) => {
                let prev = std::mem::replace(
                    &mut cur,
                    Snapshot {
                        at: Instant::now(),
                        stats,
                    },
                );
                screen = Screen::of(Some(&prev), &cur, every);
            }
            // vgpud restarting: keep the last rows, say why they are stale, keep trying.
            Err(e) => screen.error = Some(format!("{e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use serde_json::json;

    fn drawn(s: &Screen, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(f, s)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            for x in 0..w {
                out += buf[(x, y)].symbol();
            }
            out.push('\n');
        }
        out
    }

    fn snapshot(at: Instant, cmds: u64, p99: bool) -> Snapshot {
        let mut s = json!({
            "backend": "cpu", "device": "cpu0", "devices": ["cpu0"],
            "vms": [
                {"name": "alpha", "status": "ready", "pool_id": 1, "priority": 5, "device": 0,
                 "commands": cmds, "device_ns": cmds * 1000, "mem_used": 3 << 20, "mem_quota": 64 << 20},
                {"name": "beta", "status": "disconnected", "pool_id": 2, "priority": 0,
                 "device": null, "commands": 0, "device_ns": 0, "mem_used": 0, "mem_quota": 64 << 20},
            ],
            "pools": [
                {"id": 1, "name": "gold", "weight": 3, "mem_used": 3 << 20, "mem_quota": null, "device_ns": cmds * 1000},
                {"id": 2, "name": "free", "weight": 1, "mem_used": 0, "mem_quota": 1 << 30, "device_ns": 0},
            ],
        });
        if p99 {
            s["vms"][0][view::P99_FIELD] = json!(250.0);
        }
        Snapshot { at, stats: s }
    }

    #[test]
    fn the_table_shows_every_vm_and_pool() {
        let t0 = Instant::now();
        let a = snapshot(t0, 1000, false);
        let b = snapshot(t0 + Duration::from_secs(1), 1500, false);
        let out = drawn(&Screen::of(Some(&a), &b, Duration::from_secs(1)), 120, 20);
        let line = |needle: &str| {
            out.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in:\n{out}"))
                .to_string()
        };
        let alpha = line("alpha");
        for want in ["ready", "gold", "5", "3.0 MiB", "64.0 MiB", "500", "100.0%"] {
            assert!(alpha.contains(want), "{want:?} not in {alpha:?}\n{out}");
        }
        assert!(line("beta").contains("disconnected"));
        let free = out.lines().find(|l| l.starts_with("free")).expect(&out);
        assert!(free.contains("1.0 GiB"), "{free}");
        assert!(out.contains("VMs 1/2 connected"), "{out}");
        assert!(out.contains("column omitted"), "{out}");
        assert!(!out.contains("P99"), "{out}");
    }

    #[test]
    fn p99_shows_where_the_stats_have_it() {
        let t0 = Instant::now();
        let out = drawn(
            &Screen::of(None, &snapshot(t0, 1, true), Duration::from_secs(1)),
            120,
            20,
        );
        assert!(out.contains("P99"), "{out}");
        assert!(out.contains("250 µs"), "{out}");
        // Before a second snapshot, rates are not known.
        let alpha = out.lines().find(|l| l.contains("alpha")).unwrap();
        assert!(alpha.contains(" - "), "{alpha}");
    }

    #[test]
    fn a_failed_refresh_is_shown() {
        let mut s = Screen::of(
            None,
            &snapshot(Instant::now(), 1, false),
            Duration::from_secs(1),
        );
        s.error = Some("no admin socket at /x".into());
        let out = drawn(&s, 120, 20);
        assert!(
            out.contains("refresh failed: no admin socket at /x"),
            "{out}"
        );
        assert!(out.contains("alpha"), "the last rows stay: {out}");
    }
}
